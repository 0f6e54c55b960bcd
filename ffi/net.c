/*
 * net.c: listen on the first free port of a range, accept the streams of a session
 * (preamble + HELLO handshake, strangers dropped), connect, socket tuning, and the
 * control-record layer (escp_send_record / escp_recv_record).
 */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#define HELLO_BODY 20                                               /* sid[16] || u32 stream */
#define HANDSHAKE_IN (ESCP_PREAMBLE_LEN + ESCP_HDR_LEN + HELLO_BODY + ESCP_TAG_LEN) /* 84 */
#define PENDING_MAX 256
#define PENDING_SILENCE_MS 3000

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int64_t now_ms(void) {
  return now_ns() / 1000000;
}

static int set_nonblock(int fd, int on) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -errno;
  int nf = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
  if (nf != fl && fcntl(fd, F_SETFL, nf) < 0) return -errno;
  return 0;
}

const char *escp__type_name(uint32_t type) {
  static const char *names[] = {"?", "HELLO", "FILES", "DATA", "DONE", "RESULT", "RESUME", "ERROR", "END"};
  return type >= 1 && type <= 8 ? names[type] : "unknown";
}

static const char *addr_str(const struct sockaddr_storage *ss, char *buf, size_t cap) {
  char host[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
    port = ntohs(a->sin_port);
    snprintf(buf, cap, "%s:%d", host, port);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
    port = ntohs(a->sin6_port);
    snprintf(buf, cap, "[%s]:%d", host, port);
  } else {
    snprintf(buf, cap, "?");
  }
  return buf;
}

/* ---- conn -------------------------------------------------------------- */

static escp_conn *conn_new(int fd, const uint8_t master[32], const uint8_t sid[16], uint32_t stream,
                           uint32_t nstreams, int role, int *err) {
  escp_conn *c = calloc(1, sizeof *c);
  if (!c) {
    *err = -ENOMEM;
    return NULL;
  }
  c->fd = fd;
  c->stream = stream;
  c->nstreams = nstreams;
  c->role = role;
  uint32_t txdir = role == 0 ? 0 : 1;
  int rc = escp__dir_init(&c->tx, master, sid, stream, txdir, 1);
  if (!rc) rc = escp__dir_init(&c->rx, master, sid, stream, 1 - txdir, 0);
  if (rc) {
    escp__dir_free(&c->tx);
    escp__dir_free(&c->rx);
    free(c);
    *err = rc;
    return NULL;
  }
  return c;
}

ESCP_API int escp_conn_fd(escp_conn *c) { return c ? c->fd : -EBADF; }

ESCP_API void escp_conn_shutdown(escp_conn *c) {
  if (!c) return;
  c->shut = 1;
  shutdown(c->fd, SHUT_RDWR);
}

ESCP_API void escp_conn_free(escp_conn *c) {
  if (!c) return;
  if (c->fd >= 0) close(c->fd);
  escp__dir_free(&c->tx);
  escp__dir_free(&c->rx);
  if (c->tx_ctl) {
    OPENSSL_cleanse(c->tx_ctl, c->tx_ctl_cap);
    free(c->tx_ctl);
  }
  escp__loops_free(c);
  escp__zfree(c->cctx, c->dctx);
  OPENSSL_cleanse(c, sizeof *c);
  free(c);
}

/* ---- raw socket I/O ------------------------------------------------------ */

/* Every stream runs with TCP_NODELAY: a record is one send(), so Nagle has nothing to
 * merge, and it would hold a small record (a DONE, an END after a small file's DATA)
 * until the peer's delayed ACK, 40 ms on Linux. Setting it again flushes MSG_MORE data. */
static void set_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void escp__push(escp_conn *c) {
  set_nodelay(c->fd);
}

/* -l in user space as well as SO_MAX_PACING_RATE: the kernel lets a stream's first
 * window through unpaced (on loopback ten 64 KiB segments: 1 MiB at 250 kB/s arrived in
 * 2.4 s, not 4.2), so each send is followed by a wait until the stream's share of the
 * limit has paid for it.  Waits in slices, so that a cancelled stream stops waiting. */
static int pace(escp_conn *c, size_t len) {
  int64_t now = now_ns(), start = c->tx_pace_ns > now ? c->tx_pace_ns : now;
  c->tx_pace_ns = start + (int64_t)((double)len * 1e9 / (double)c->tx_pace_bps);
  while ((now = now_ns()) < c->tx_pace_ns) {
    if (c->shut) return escp__err(ESCP_E_CANCEL, "stream %u: shut down", c->stream);
    int64_t until = c->tx_pace_ns - now > 100000000 ? now + 100000000 : c->tx_pace_ns;
    struct timespec ts = {(time_t)(until / 1000000000), (long)(until % 1000000000)};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
  }
  return 0;
}

int escp__send_all(escp_conn *c, const void *buf, size_t len, int more) {
  const uint8_t *p = buf;
  const size_t total = len;
  while (len) {
    ssize_t r = send(c->fd, p, len, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
    if (r < 0) {
      if (errno == EINTR) continue;
      if (c->shut) return escp__err(ESCP_E_CANCEL, "stream %u: shut down", c->stream);
      return escp__errno("stream %u: send", c->stream);
    }
    p += r;
    len -= (size_t)r;
  }
  return c->tx_pace_bps ? pace(c, total) : 0;
}

int escp__recv_all(escp_conn *c, void *buf, size_t len, const char *what) {
  uint8_t *p = buf;
  size_t got = len < c->ahead_len ? len : c->ahead_len;
  if (got) {
    memcpy(p, c->ahead + c->ahead_off, got);
    c->ahead_off += (uint32_t)got;
    c->ahead_len -= (uint32_t)got;
    if (!c->ahead_len) c->ahead_off = 0;
  }
  while (got < len) {
    ssize_t r = recv(c->fd, p + got, len - got, MSG_WAITALL);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (c->shut) return escp__err(ESCP_E_CANCEL, "stream %u: shut down", c->stream);
      return escp__errno("stream %u: receiving %s (record seq %llu)", c->stream, what,
                         (unsigned long long)c->rx.seq);
    }
    if (r == 0) {
      if (c->shut) return escp__err(ESCP_E_CANCEL, "stream %u: shut down", c->stream);
      return escp__err(ESCP_E_TRUNC, "stream %u: connection closed before END (%s of record seq %llu, %zu of %zu bytes)",
                       c->stream, what, (unsigned long long)c->rx.seq, got, len);
    }
    got += (size_t)r;
  }
  return 0;
}

int escp__recv_hdr(escp_conn *c, uint8_t hdr[16], uint32_t cap, uint32_t *type, uint32_t *flags, uint32_t *len) {
  int rc = escp__recv_all(c, hdr, ESCP_HDR_LEN, "header");
  if (rc) return rc;
  uint64_t seq = escp__be64(hdr + 8);
  *type = hdr[0];
  *flags = hdr[1];
  *len = escp__be32(hdr + 4);
  if (seq != c->rx.seq)
    return escp__err(ESCP_E_SEQ, "stream %u: record seq %llu where %llu was expected (dropped, replayed or reordered)",
                     c->stream, (unsigned long long)seq, (unsigned long long)c->rx.seq);
  if (*type < ESCP_REC_HELLO || *type > ESCP_REC_END || hdr[2] || hdr[3] || (*flags & ~ESCP_F_COMPRESSED))
    return escp__err(ESCP_E_PROTO, "stream %u: record seq %llu has a malformed header (type %u flags 0x%x)",
                     c->stream, (unsigned long long)seq, *type, *flags);
  if (*len > cap)
    return escp__err(ESCP_E_PROTO, "stream %u: %s record seq %llu announces %u bytes, over the limit of %u",
                     c->stream, escp__type_name(*type), (unsigned long long)seq, *len, cap);
  return 0;
}

/* ---- records ------------------------------------------------------------- */

ESCP_API int escp_send_record(escp_conn *c, uint32_t type, uint32_t flags, const uint8_t *body, uint32_t len) {
  if (!c) return -EINVAL;
  if (type < ESCP_REC_HELLO || type > ESCP_REC_END || flags > 0xff || (len && !body))
    return escp__err(-EINVAL, "stream %u: send_record(type %u, flags %u)", c->stream, type, flags);
  if (len > (1u << 30)) return escp__err(-EMSGSIZE, "stream %u: record body of %u bytes", c->stream, len);
  size_t need = (size_t)ESCP_HDR_LEN + len + ESCP_TAG_LEN;
  if (need > c->tx_ctl_cap) {
    size_t cap = need < 4096 ? 4096 : need;
    uint8_t *nb = malloc(cap);
    if (!nb) return escp__err(-ENOMEM, "stream %u: out of memory", c->stream);
    if (c->tx_ctl) {
      OPENSSL_cleanse(c->tx_ctl, c->tx_ctl_cap);
      free(c->tx_ctl);
    }
    c->tx_ctl = nb;
    c->tx_ctl_cap = cap;
  }
  uint8_t *p = c->tx_ctl;
  escp__put_hdr(p, type, flags, len, c->tx.seq);
  if (len) memcpy(p + ESCP_HDR_LEN, body, len);
  int rc = escp__seal(&c->tx, p, p + ESCP_HDR_LEN, len, p + ESCP_HDR_LEN + len);
  if (rc) return rc;
  c->tx.seq++; /* a nonce is used once even when the send below fails */
  return escp__send_all(c, p, need, 0);
}

ESCP_API int64_t escp_recv_record(escp_conn *c, uint8_t *body_out, uint32_t cap, uint32_t meta_out[2]) {
  if (!c || (cap && !body_out)) return -EINVAL;
  if (c->pend) {
    /* a record recv_batch kept (state 2, or a control record on a data stream) */
    if (c->pend_len > cap)
      return escp__err(ESCP_E_PROTO, "stream %u: %s record seq %llu of %u bytes is over the limit of %u",
                       c->stream, escp__type_name(c->pend_type), (unsigned long long)c->pend_seq, c->pend_len, cap);
    memcpy(body_out, c->rx_buf + ESCP_ALIGN - ESCP_DATA_PREFIX, c->pend_len);
    if (meta_out) {
      meta_out[0] = c->pend_type;
      meta_out[1] = c->pend_flags;
    }
    c->pend = 0;
    return c->pend_len;
  }
  if (c->rx_end && !c->ahead_len) {
    /* Extension: after END, a clean EOF returns 0 with type 0 (no more records). */
    uint8_t b;
    ssize_t r;
    do r = recv(c->fd, &b, 1, MSG_PEEK); while (r < 0 && errno == EINTR);
    if (r == 0) {
      if (meta_out) meta_out[0] = meta_out[1] = 0;
      return 0;
    }
  }
  uint8_t hdr[ESCP_HDR_LEN], tag[ESCP_TAG_LEN];
  uint32_t type, flags, len;
  int rc = escp__recv_hdr(c, hdr, cap, &type, &flags, &len);
  if (rc) return rc;
  if (len) {
    rc = escp__recv_all(c, body_out, len, "body");
    if (rc) return rc;
  }
  rc = escp__recv_all(c, tag, ESCP_TAG_LEN, "tag");
  if (rc) return rc;
  rc = escp__open(&c->rx, hdr, body_out, len, tag);
  if (rc)
    return escp__err(rc, "stream %u: record seq %llu failed authentication (altered, spliced or wrong key)",
                     c->stream, (unsigned long long)c->rx.seq);
  c->rx.seq++;
  if (type == ESCP_REC_END) c->rx_end = 1;
  if (meta_out) {
    meta_out[0] = type;
    meta_out[1] = flags;
  }
  return len;
}

/* ---- listen -------------------------------------------------------------- */

ESCP_API int escp_listen(const char *bind_addr, int port_lo, int port_hi, int32_t *port_out) {
  /* 0-0: any free port the kernel picks (where no firewall decides which may be used) */
  int any = port_lo == 0 && port_hi == 0;
  if (!any && (port_lo <= 0 || port_hi < port_lo || port_hi > 65535))
    return escp__err(-EINVAL, "port range %d-%d is invalid", port_lo, port_hi);
  /* no address: "::" (dual stack), or "0.0.0.0" where IPv6 is off */
  if (!bind_addr || !*bind_addr) {
    int fd = escp_listen("::", port_lo, port_hi, port_out);
    if (fd != -EAFNOSUPPORT && fd != -EADDRNOTAVAIL && fd != -EPROTONOSUPPORT) return fd;
    return escp_listen("0.0.0.0", port_lo, port_hi, port_out);
  }
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int g = getaddrinfo(bind_addr, "0", &hints, &res);
  if (g != 0)
    return escp__err(-EADDRNOTAVAIL, "listen: cannot resolve %s: %s", bind_addr ? bind_addr : "(any)",
                     gai_strerror(g));
  int last = -EADDRINUSE;
  for (int port = port_lo; port <= port_hi; port++) {
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
      int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
      if (fd < 0) {
        last = -errno;
        if (!ai->ai_next) {
          freeaddrinfo(res);
          return escp__err(last, "listen on %s: %s", bind_addr, escp_strerror(last));
        }
        continue;
      }
      int one = 1, zero = 0;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
      struct sockaddr_storage ss;
      memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
      if (ai->ai_family == AF_INET) ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
      else if (ai->ai_family == AF_INET6) ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
      if (bind(fd, (struct sockaddr *)&ss, ai->ai_addrlen) == 0 && listen(fd, 512) == 0) {
        freeaddrinfo(res);
        if (any) {
          socklen_t sl = sizeof ss;
          getsockname(fd, (struct sockaddr *)&ss, &sl);
          port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                : ((struct sockaddr_in *)&ss)->sin_port);
        }
        if (port_out) *port_out = port;
        return fd;
      }
      int e = errno;
      close(fd);
      if (e != EADDRINUSE && e != EACCES) {
        freeaddrinfo(res);
        errno = e;
        return escp__errno("listen on %s port %d", bind_addr ? bind_addr : "(any)", port);
      }
      last = -e;
      /* EADDRINUSE on this port: try the next port, not the next address */
      break;
    }
  }
  freeaddrinfo(res);
  if (last == -EADDRINUSE)
    return escp__err(-EADDRINUSE, "every port of %d-%d on %s is taken", port_lo, port_hi,
                     bind_addr ? bind_addr : "(any)");
  return escp__err(last, "listen on %s ports %d-%d: %s", bind_addr ? bind_addr : "(any)", port_lo, port_hi,
                   escp_strerror(last));
}

/* ---- accept ----------------------------------------------------------- */

typedef struct {
  int fd;
  int64_t t0;
  uint32_t got;
  uint8_t buf[HANDSHAKE_IN];
  char peer[64];
} pending;

static int send_hello(escp_conn *c, const uint8_t sid[16]) {
  uint8_t body[HELLO_BODY];
  memcpy(body, sid, 16);
  escp__put32(body + 16, c->stream);
  return escp_send_record(c, ESCP_REC_HELLO, 0, body, HELLO_BODY);
}

/* Checks the preamble bytes collected so far.  Returns 0 if acceptable so far, else a
 * reason (static string). */
static const char *check_preamble(const uint8_t *p, const uint8_t sid[16], uint32_t nstreams,
                                  escp_conn **taken) {
  if (memcmp(p, "ESCP", 4) != 0) return "bad magic";
  if (((uint32_t)p[4] << 8 | p[5]) != ESCP_PROTO_VERSION) return "other protocol version";
  if (p[6] || p[7]) return "reserved bytes set";
  uint32_t s = escp__be32(p + 8), n = escp__be32(p + 12);
  if (n != nstreams) return "wrong stream count";
  if (s >= nstreams) return "stream index out of range";
  if (memcmp(p + 16, sid, 16) != 0) return "wrong session id";
  if (taken[s]) return "stream already connected";
  return NULL;
}

/* Completes a pending handshake whose 84 bytes are in.  Returns the conn, or NULL with
 * *why set. */
static escp_conn *finish_handshake(pending *pd, const uint8_t master[32], const uint8_t sid[16],
                                   uint32_t nstreams, escp_conn **taken, const char **why, int *fatal) {
  const uint8_t *h = pd->buf + ESCP_PREAMBLE_LEN;
  uint32_t stream = escp__be32(pd->buf + 8);
  *why = check_preamble(pd->buf, sid, nstreams, taken);
  if (*why) return NULL;
  if (h[0] != ESCP_REC_HELLO || h[1] || h[2] || h[3] || escp__be32(h + 4) != HELLO_BODY || escp__be64(h + 8) != 0) {
    *why = "first record is not a HELLO with seq 0";
    return NULL;
  }
  int err = 0;
  escp_conn *c = conn_new(pd->fd, master, sid, stream, nstreams, 1, &err);
  if (!c) {
    *why = "out of memory";
    *fatal = err;
    return NULL;
  }
  uint8_t body[HELLO_BODY];
  memcpy(body, h + ESCP_HDR_LEN, HELLO_BODY);
  if (escp__open(&c->rx, h, body, HELLO_BODY, h + ESCP_HDR_LEN + HELLO_BODY) != 0) {
    *why = "HELLO failed authentication (wrong key)";
  } else if (memcmp(body, sid, 16) != 0 || escp__be32(body + 16) != stream) {
    *why = "HELLO names another session or stream";
  } else {
    c->rx.seq = 1;
    if (set_nonblock(pd->fd, 0) != 0 || send_hello(c, sid) != 0) {
      *why = "could not answer HELLO";
    } else {
      set_nodelay(pd->fd);
      return c;
    }
  }
  c->fd = -1; /* the caller closes the socket */
  escp_conn_free(c);
  return NULL;
}

ESCP_API int escp_accept_streams(int lfd, const uint8_t master[32], const uint8_t sid[16], uint32_t nstreams,
                                 escp_conn **out, int timeout_ms, int32_t *dropped, int watch_fd) {
  if (!out || nstreams == 0 || nstreams > 65536) return escp__err(-EINVAL, "accept: %u streams", nstreams);
  int rc = escp__crypto_init();
  if (rc) return rc;
  for (uint32_t i = 0; i < nstreams; i++) out[i] = NULL;
  int lfl = fcntl(lfd, F_GETFL);
  if (lfl < 0) return escp__errno("accept: listening fd %d", lfd);
  if (!(lfl & O_NONBLOCK)) fcntl(lfd, F_SETFL, lfl | O_NONBLOCK);

  pending *pd = calloc(PENDING_MAX, sizeof *pd);
  struct pollfd *pfd = calloc(PENDING_MAX + 2, sizeof *pfd); /* listener, pending, watch_fd */
  if (!pd || !pfd) {
    free(pd);
    free(pfd);
    if (!(lfl & O_NONBLOCK)) fcntl(lfd, F_SETFL, lfl);
    return escp__err(-ENOMEM, "accept: out of memory");
  }
  int np = 0;
  uint32_t nacc = 0;
  int32_t ndrop = 0;
  int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : INT64_MAX;
  rc = 0;

#define DROP(i, reason)                                                                       \
  do {                                                                                        \
    escp__err(0, "accept: dropped connection from %s: %s", pd[i].peer, reason);              \
    close(pd[i].fd);                                                                          \
    ndrop++;                                                                                  \
    pd[i] = pd[--np];                                                                         \
  } while (0)

  while (nacc < nstreams) {
    int64_t now = now_ms();
    /* silence limit: the whole 84-byte handshake within 3 s of the accept */
    for (int i = 0; i < np;) {
      if (now - pd[i].t0 >= PENDING_SILENCE_MS) DROP(i, "no handshake within 3 s");
      else i++;
    }
    if (now >= deadline) {
      rc = escp__err(ESCP_E_TIMEOUT, "accept: %u of %u streams connected before the %d ms timeout", nacc,
                     nstreams, timeout_ms);
      break;
    }
    int64_t wait = deadline - now;
    for (int i = 0; i < np; i++) {
      int64_t left = pd[i].t0 + PENDING_SILENCE_MS - now;
      if (left < wait) wait = left;
    }
    if (wait < 0) wait = 0;
    if (wait > 1000) wait = 1000;
    pfd[0].fd = lfd;
    pfd[0].events = POLLIN;
    pfd[0].revents = 0;
    for (int i = 0; i < np; i++) {
      pfd[i + 1].fd = pd[i].fd;
      pfd[i + 1].events = POLLIN;
      pfd[i + 1].revents = 0;
    }
    /* Only its end is watched (a pipe's POLLHUP, a socket's POLLRDHUP): data on it is
     * the caller's to read later. */
    pfd[np + 1].fd = watch_fd;
    pfd[np + 1].events = POLLRDHUP;
    pfd[np + 1].revents = 0;
    int pr = poll(pfd, (nfds_t)np + 2, (int)wait);
    if (pr < 0) {
      if (errno == EINTR) continue;
      rc = escp__errno("accept: poll");
      break;
    }
    if (pr == 0) continue;
    if (pfd[np + 1].revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) {
      rc = escp__err(ESCP_E_CANCEL, "accept: %u of %u streams connected when the control connection closed", nacc,
                     nstreams);
      break;
    }
    /* pending sockets first (indexes shift as they leave; walk from the top) */
    int nbefore = np;
    for (int i = nbefore - 1; i >= 0 && rc == 0; i--) {
      if (!pfd[i + 1].revents) continue;
      pending *p = &pd[i];
      for (;;) {
        uint32_t want = p->got < ESCP_PREAMBLE_LEN ? ESCP_PREAMBLE_LEN - p->got : HANDSHAKE_IN - p->got;
        ssize_t r = recv(p->fd, p->buf + p->got, want, 0);
        if (r < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK) break;
          DROP(i, "receive error");
          goto next_pending;
        }
        if (r == 0) {
          DROP(i, "closed during the handshake");
          goto next_pending;
        }
        p->got += (uint32_t)r;
        if (p->got == ESCP_PREAMBLE_LEN) {
          const char *why = check_preamble(p->buf, sid, nstreams, out);
          if (why) {
            DROP(i, why);
            goto next_pending;
          }
        }
        if (p->got == HANDSHAKE_IN) {
          const char *why = NULL;
          int fatal = 0;
          escp_conn *c = finish_handshake(p, master, sid, nstreams, out, &why, &fatal);
          if (c) {
            out[c->stream] = c;
            nacc++;
            pd[i] = pd[--np]; /* the conn owns the fd now */
          } else {
            DROP(i, why);
            if (fatal) rc = fatal;
          }
          goto next_pending;
        }
      }
    next_pending:;
    }
    if (rc) break;
    if (pfd[0].revents & POLLIN) {
      for (int k = 0; k < 64; k++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED) break;
          if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* out of descriptors: shed the oldest pending connection and go on */
            if (np > 0) {
              int o = 0;
              for (int j = 1; j < np; j++)
                if (pd[j].t0 < pd[o].t0) o = j;
              DROP(o, "evicted (out of file descriptors)");
            }
            break;
          }
          rc = escp__errno("accept");
          break;
        }
        if (np == PENDING_MAX) {
          int o = 0;
          for (int j = 1; j < np; j++)
            if (pd[j].t0 < pd[o].t0) o = j;
          DROP(o, "evicted (too many pending connections)");
        }
        memset(&pd[np], 0, sizeof pd[np]);
        pd[np].fd = fd;
        pd[np].t0 = now_ms();
        addr_str(&ss, pd[np].peer, sizeof pd[np].peer);
        np++;
      }
    }
    if (rc) break;
  }
#undef DROP
  for (int i = 0; i < np; i++) {
    close(pd[i].fd);
    ndrop++;
  }
  if (rc) {
    for (uint32_t i = 0; i < nstreams; i++) {
      escp_conn_free(out[i]);
      out[i] = NULL;
    }
  }
  if (!(lfl & O_NONBLOCK)) fcntl(lfd, F_SETFL, lfl);
  free(pd);
  free(pfd);
  if (dropped) *dropped = ndrop;
  return rc;
}

/* ---- connect ------------------------------------------------------------- */

/* The connects below hold the caller's thread for up to their timeout, and a runtime
 * that handles SIGINT and SIGTERM on its event loop (Bun) cannot act on them meanwhile:
 * Ctrl-C waited out a 10 s handshake.  escp_watch_interrupts puts a handler in front of
 * the one there (which it then calls, so the runtime still sees the signal) until it is
 * called with 0, which puts the runtime's back; meanwhile the waits look at what it
 * noted every POLL_SLICE_MS, whichever thread took the signal, and give up with
 * ESCP_E_CANCEL. */
static volatile sig_atomic_t interrupted;
static struct sigaction chained[2]; /* SIGINT's and SIGTERM's handlers before ours */
#define POLL_SLICE_MS 100

static void note_interrupt(int sig, siginfo_t *si, void *ctx) {
  interrupted = 1;
  const struct sigaction *old = &chained[sig == SIGTERM];
  if (old->sa_flags & SA_SIGINFO) {
    if (old->sa_sigaction) old->sa_sigaction(sig, si, ctx);
  } else if (old->sa_handler == SIG_DFL) {
    sigaction(sig, old, NULL); /* as if we had not been there: the default ends the process */
    raise(sig);
  } else if (old->sa_handler != SIG_IGN) {
    old->sa_handler(sig);
  }
}

ESCP_API void escp_watch_interrupts(int on) {
  static int installed;
  const int sigs[2] = {SIGINT, SIGTERM};
  interrupted = 0;
  if (on == installed) return;
  installed = on;
  for (int i = 0; i < 2; i++) {
    if (!on) {
      sigaction(sigs[i], &chained[i], NULL);
      continue;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = note_interrupt;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(sigs[i], &sa, &chained[i]);
  }
}

static int wait_fd(int fd, short ev, int64_t deadline) {
  for (;;) {
    if (interrupted) return ESCP_E_CANCEL;
    int64_t left = deadline - now_ms();
    if (left <= 0) return ESCP_E_TIMEOUT;
    struct pollfd p = {.fd = fd, .events = ev};
    int r = poll(&p, 1, left > POLL_SLICE_MS ? POLL_SLICE_MS : (int)left);
    if (r > 0) return 0;
    if (r < 0 && errno != EINTR) return -errno;
  }
}

/* Reads exactly len bytes before the deadline (fd non-blocking). */
static int read_deadline(int fd, uint8_t *buf, size_t len, int64_t deadline) {
  size_t got = 0;
  while (got < len) {
    ssize_t r = recv(fd, buf + got, len - got, 0);
    if (r > 0) {
      got += (size_t)r;
      continue;
    }
    if (r == 0) return ESCP_E_TRUNC;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
    int w = wait_fd(fd, POLLIN, deadline);
    if (w) return w;
  }
  return 0;
}

/* Sends the preamble and our HELLO (seq 0) in one write. */
static int send_client_hello(escp_conn *c, const uint8_t sid[16], uint32_t stream, uint32_t nstreams,
                             int64_t deadline) {
  uint8_t hs[HANDSHAKE_IN];
  memcpy(hs, "ESCP", 4);
  hs[4] = (uint8_t)(ESCP_PROTO_VERSION >> 8);
  hs[5] = (uint8_t)ESCP_PROTO_VERSION;
  hs[6] = hs[7] = 0;
  escp__put32(hs + 8, stream);
  escp__put32(hs + 12, nstreams);
  memcpy(hs + 16, sid, 16);
  uint8_t *h = hs + ESCP_PREAMBLE_LEN, *body = h + ESCP_HDR_LEN;
  escp__put_hdr(h, ESCP_REC_HELLO, 0, HELLO_BODY, 0);
  memcpy(body, sid, 16);
  escp__put32(body + 16, stream);
  int rc = escp__seal(&c->tx, h, body, HELLO_BODY, body + HELLO_BODY);
  c->tx.seq = 1;
  size_t off = 0;
  while (rc == 0 && off < sizeof hs) {
    ssize_t r = send(c->fd, hs + off, sizeof hs - off, MSG_NOSIGNAL);
    if (r > 0) off += (size_t)r;
    else if (r < 0 && errno == EINTR) continue;
    else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) rc = wait_fd(c->fd, POLLOUT, deadline);
    else rc = -errno;
  }
  return rc;
}

/* Reads and checks the listener's HELLO; the connection is ready (blocking) after it. */
static int read_server_hello(escp_conn *c, const uint8_t sid[16], uint32_t stream, const char *host, int port,
                            int64_t deadline) {
  uint8_t in[ESCP_HDR_LEN + HELLO_BODY + ESCP_TAG_LEN];
  int rc = read_deadline(c->fd, in, sizeof in, deadline);
  if (rc == ESCP_E_TRUNC || rc == -ECONNRESET)
    return escp__err(ESCP_E_PROTO, "stream %u: %s port %d closed the connection during the handshake "
                     "(wrong session key, session id or protocol version?)", stream, host, port);
  if (rc) return escp__err(rc, "stream %u: handshake with %s port %d: %s", stream, host, port, escp_strerror(rc));
  if (in[0] != ESCP_REC_HELLO || in[1] || in[2] || in[3] || escp__be32(in + 4) != HELLO_BODY ||
      escp__be64(in + 8) != 0)
    return escp__err(ESCP_E_PROTO, "stream %u: %s port %d did not answer with a HELLO", stream, host, port);
  if (escp__open(&c->rx, in, in + ESCP_HDR_LEN, HELLO_BODY, in + ESCP_HDR_LEN + HELLO_BODY) != 0)
    return escp__err(ESCP_E_AUTH, "stream %u: the listener's HELLO (seq 0) failed authentication "
                     "(altered, spliced or wrong key)", stream);
  if (memcmp(in + ESCP_HDR_LEN, sid, 16) != 0 || escp__be32(in + ESCP_HDR_LEN + 16) != stream)
    return escp__err(ESCP_E_PROTO, "stream %u: the listener's HELLO names another session or stream", stream);
  c->rx.seq = 1;
  set_nonblock(c->fd, 0);
  return 0;
}

/* A non-blocking socket whose connect to addr has started: fd or -errno. */
static int dial_start(const struct sockaddr *addr, socklen_t len) {
  int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (connect(fd, addr, len) != 0 && errno != EINPROGRESS) {
    int rc = -errno;
    close(fd);
    return rc;
  }
  return fd;
}

/* Waits for dial_start's TCP handshake: 0, or -errno / ESCP_E_TIMEOUT (fd left to the caller). */
static int dial_finish(int fd, int64_t deadline) {
  int rc = wait_fd(fd, POLLOUT, deadline);
  if (rc == 0) {
    int so = 0;
    socklen_t sl = sizeof so;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &sl);
    rc = -so;
  }
  if (rc == 0) set_nodelay(fd);
  return rc;
}

/* A connection to addr whose TCP handshake has completed: fd or -errno. */
static int dial(const struct sockaddr *addr, socklen_t len, int64_t deadline) {
  int fd = dial_start(addr, len);
  if (fd < 0) return fd;
  int rc = dial_finish(fd, deadline);
  if (rc) {
    close(fd);
    return rc;
  }
  return fd;
}

ESCP_API escp_conn *escp_connect(const char *host, int port, const uint8_t master[32], const uint8_t sid[16],
                                 uint32_t stream, uint32_t nstreams, int timeout_ms, int32_t *err) {
  int32_t dummy;
  if (!err) err = &dummy;
  *err = 0;
  if (!host || port <= 0 || port > 65535 || stream >= nstreams) {
    *err = escp__err(-EINVAL, "connect: bad arguments (port %d, stream %u of %u)", port, stream, nstreams);
    return NULL;
  }
  int rc = escp__crypto_init();
  if (rc) {
    *err = rc;
    return NULL;
  }
  int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 30000);
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  /* no AI_ADDRCONFIG: it hides "localhost" where only the loopback interface is up */
  int g = getaddrinfo(host, ps, &hints, &res);
  if (g != 0) {
    *err = escp__err(-EHOSTUNREACH, "connect: cannot resolve %s: %s", host, gai_strerror(g));
    return NULL;
  }
  int fd = -1;
  rc = -ECONNREFUSED;
  for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
    fd = dial(ai->ai_addr, ai->ai_addrlen, deadline);
    if (fd < 0) rc = fd;
    if (rc == ESCP_E_TIMEOUT) break;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    *err = escp__err(rc, "stream %u: connect to %s port %d: %s", stream, host, port, escp_strerror(rc));
    return NULL;
  }
  escp_conn *c = conn_new(fd, master, sid, stream, nstreams, 0, &rc);
  if (!c) {
    close(fd);
    *err = rc;
    return NULL;
  }
  rc = send_client_hello(c, sid, stream, nstreams, deadline);
  if (!rc) rc = read_server_hello(c, sid, stream, host, port, deadline);
  else rc = escp__err(rc, "stream %u: handshake with %s port %d: %s", stream, host, port, escp_strerror(rc));
  if (rc) {
    *err = rc;
    escp_conn_free(c);
    return NULL;
  }
  return c;
}

ESCP_API int escp_connect_streams(const char *host, int port, const uint8_t master[32], const uint8_t sid[16],
                                  uint32_t from, uint32_t nstreams, int timeout_ms, uint64_t *out) {
  if (!out || nstreams == 0 || nstreams > 65536 || from > nstreams || (from > 0 && !out[0]))
    return escp__err(-EINVAL, "connect: streams %u to %u", from, nstreams);
  int *fds = calloc(nstreams, sizeof *fds);
  if (!fds) return escp__err(-ENOMEM, "connect: %u streams", nstreams);
  for (uint32_t s = from; s < nstreams; s++) out[s] = 0;
  if (from == 0) {
    int32_t err = 0;
    escp_conn *c0 = escp_connect(host, port, master, sid, 0, nstreams, timeout_ms, &err);
    if (!c0) {
      free(fds);
      return err;
    }
    out[0] = (uint64_t)(uintptr_t)c0;
    from = 1;
  }
  escp_conn *c0 = (escp_conn *)(uintptr_t)out[0];
  int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 30000);
  struct sockaddr_storage peer;
  socklen_t plen = sizeof peer;
  int rc = getpeername(c0->fd, (struct sockaddr *)&peer, &plen) == 0 ? 0 : -errno;
  /* Every other stream goes to the address stream 0 reached, all at once: the TCP
   * handshakes overlap, then the HELLOs, so a session costs 4 round trips, not 2 per stream. */
  for (uint32_t s = from; s < nstreams; s++) {
    fds[s] = -1;
    if (rc) continue;
    int fd = dial_start((struct sockaddr *)&peer, plen);
    if (fd < 0) rc = escp__err(fd, "stream %u: connect to %s port %d: %s", s, host, port, escp_strerror(fd));
    else fds[s] = fd;
  }
  for (uint32_t s = from; s < nstreams && !rc; s++) {
    int w = dial_finish(fds[s], deadline);
    if (w) {
      rc = escp__err(w, "stream %u: connect to %s port %d: %s", s, host, port, escp_strerror(w));
      break;
    }
    escp_conn *c = conn_new(fds[s], master, sid, s, nstreams, 0, &rc);
    if (!c) break;
    fds[s] = -1; /* owned by c now */
    out[s] = (uint64_t)(uintptr_t)c;
    rc = send_client_hello(c, sid, s, nstreams, deadline);
    if (rc) rc = escp__err(rc, "stream %u: handshake with %s port %d: %s", s, host, port, escp_strerror(rc));
  }
  for (uint32_t s = from; s < nstreams && !rc; s++)
    rc = read_server_hello((escp_conn *)(uintptr_t)out[s], sid, s, host, port, deadline);
  for (uint32_t s = from; s < nstreams; s++)
    if (fds[s] >= 0) close(fds[s]);
  free(fds);
  if (!rc) return 0;
  for (uint32_t s = 0; s < nstreams; s++) {
    if (out[s]) escp_conn_free((escp_conn *)(uintptr_t)out[s]);
    out[s] = 0;
  }
  return rc;
}

/* ---- tuning ------------------------------------------------------------ */

static long read_sysctl(const char *path) {
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  long v = -1;
  if (fscanf(f, "%ld", &v) != 1) v = -1;
  fclose(f);
  return v;
}

/* Sets a socket buffer: SO_*BUFFORCE when privileged; otherwise SO_*BUF only when the
 * request fits under the sysctl maximum, because an explicit size switches off the
 * kernel's autotuning, which usually grows further than a capped explicit size. */
static void set_buf(int fd, int forceopt, int opt, const char *maxpath, int32_t want) {
  if (want <= 0) return;
  if (setsockopt(fd, SOL_SOCKET, forceopt, &want, sizeof want) == 0) return;
  long mx = read_sysctl(maxpath);
  if (mx >= 0 && want > mx) return;
  setsockopt(fd, SOL_SOCKET, opt, &want, sizeof want);
}

ESCP_API int escp_conn_tune(escp_conn *c, int32_t sndbuf, int32_t rcvbuf, uint64_t pacing_bps, int32_t keepalive_s,
                            int32_t granted[2]) {
  if (!c) return -EINVAL;
  int fd = c->fd, rc = 0;
  set_buf(fd, SO_SNDBUFFORCE, SO_SNDBUF, "/proc/sys/net/core/wmem_max", sndbuf);
  set_buf(fd, SO_RCVBUFFORCE, SO_RCVBUF, "/proc/sys/net/core/rmem_max", rcvbuf);
  c->tx_pace_bps = pacing_bps;
  if (pacing_bps) {
    uint64_t v64 = pacing_bps;
    if (setsockopt(fd, SOL_SOCKET, SO_MAX_PACING_RATE, &v64, sizeof v64) != 0) {
      uint32_t v32 = pacing_bps > 0xfffffffeull ? 0xfffffffeu : (uint32_t)pacing_bps;
      if (setsockopt(fd, SOL_SOCKET, SO_MAX_PACING_RATE, &v32, sizeof v32) != 0)
        rc = escp__errno("stream %u: SO_MAX_PACING_RATE", c->stream);
    }
  }
  if (keepalive_s > 0) {
    int one = 1;
    int idle = keepalive_s / 2 > 0 ? keepalive_s / 2 : 1;
    int cnt = 3;
    int intvl = (keepalive_s - idle) / cnt > 0 ? (keepalive_s - idle) / cnt : 1;
    /* Unacknowledged data (or a window closed by a slow reader: a receiving disk that
     * stalls) for three intervals, as everywhere else, before the stream is given up. */
    unsigned int uto = (unsigned int)keepalive_s * 3000u;
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt) != 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &uto, sizeof uto) != 0)
      rc = escp__errno("stream %u: keepalive", c->stream);
  }
  if (granted) {
    int v = 0;
    socklen_t sl = sizeof v;
    granted[0] = getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, &sl) == 0 ? v : -1;
    sl = sizeof v;
    granted[1] = getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, &sl) == 0 ? v : -1;
  }
  return rc;
}
