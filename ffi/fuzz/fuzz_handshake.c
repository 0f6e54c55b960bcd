/*
 * Fuzz harness: both halves of the stream handshake (ffi/net.c) over real
 * loopback TCP.
 *
 *   input = config u8, then the rest
 *   config bit 0 = 0: the listener.  escp_accept_streams takes the session's
 *       streams while strangers knock first.  The rest is a list of strangers,
 *       each = flags u8, n u8, bytes[n]: connect, send the bytes, then close
 *       (flags bit 0) or stay open (at most 8 stay open, 256 in all); flags bit 1 prefixes the bytes with the
 *       session's own preamble for stream (flags >> 2) & 1, so the fuzzer gets
 *       to the HELLO check.  After them the real connector (a thread calling
 *       escp_connect) connects every stream.
 *       Invariant: the real connector always gets in, every stream once, and
 *       the listener hands out exactly its streams in order.
 *   config bit 0 = 1: the connector.  escp_connect talks to a fake listener
 *       that reads the preamble and HELLO and answers with: if config bit 1, a
 *       correct HELLO with the rest xor-ed into it (so single-bit changes are
 *       cheap to find), else the rest as is; then it closes.
 *       Invariant: a conn is returned only for the exact correct answer.
 *   config bits 2-3 (listener): streams in the session, 1 to 4.
 */
#include "common.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#define HELLO_BODY 20
#define HELLO_REC (ESCP_HDR_LEN + HELLO_BODY + ESCP_TAG_LEN)
#define MAX_STRANGERS 8

/* Every input opens a few connections, and each leaves a TIME_WAIT behind: SO_REUSEADDR
 * lets port 0 pick a port that only TIME_WAIT entries still hold, else a long run
 * exhausts the ephemeral range.  (Connects on loopback reuse TIME_WAIT ports by default,
 * net.ipv4.tcp_tw_reuse = 2.) */
static int listen_any(int *port) {
  int fd = -1;
  for (int tries = 0; fd < 0; tries++) {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) abort();
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 512) == 0) { /* escp_listen's backlog */
      socklen_t sl = sizeof a;
      getsockname(fd, (struct sockaddr *)&a, &sl);
      *port = ntohs(a.sin_port);
      return fd;
    }
    FUZZ_CHECK(tries < 100, "no port to listen on: %s (the host, not escp)", strerror(errno));
    close(fd);
    fd = -1;
    usleep(10000);
  }
  return fd;
}

static int connect_to(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) abort();
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((uint16_t)port);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void preamble(uint8_t p[ESCP_PREAMBLE_LEN], uint32_t stream, uint32_t nstreams) {
  memcpy(p, "ESCP", 4);
  p[4] = 0;
  p[5] = ESCP_PROTO_VERSION;
  p[6] = p[7] = 0;
  escp__put32(p + 8, stream);
  escp__put32(p + 12, nstreams);
  memcpy(p + 16, FUZZ_SID, 16);
}

/* The listener's correct HELLO for stream 0. */
static void listener_hello(uint8_t rec[HELLO_REC]) {
  escp_dir d;
  if (escp__dir_init(&d, FUZZ_MASTER, FUZZ_SID, 0, 1, 1) != 0) abort();
  escp__put_hdr(rec, ESCP_REC_HELLO, 0, HELLO_BODY, 0);
  memcpy(rec + ESCP_HDR_LEN, FUZZ_SID, 16);
  escp__put32(rec + ESCP_HDR_LEN + 16, 0);
  if (escp__seal(&d, rec, rec + ESCP_HDR_LEN, HELLO_BODY, rec + ESCP_HDR_LEN + HELLO_BODY) != 0) abort();
  escp__dir_free(&d);
}

typedef struct {
  int port;
  uint32_t nstreams;
  escp_conn *conns[4];
  pthread_t th;
} connector;

static void *connector_main(void *arg) {
  connector *k = arg;
  for (uint32_t s = 0; s < k->nstreams; s++) {
    int32_t err = 0;
    k->conns[s] = escp_connect("127.0.0.1", k->port, FUZZ_MASTER, FUZZ_SID, s, k->nstreams, 5000, &err);
  }
  return NULL;
}

static void fuzz_listener(reader *r, uint32_t nstreams) {
  int port;
  int lfd = listen_any(&port);
  int strangers[MAX_STRANGERS];
  int ns = 0;
  int total = 0; /* more than the backlog would only measure TCP's SYN retries */
  while (rd_left(r) && ns < MAX_STRANGERS && total++ < 256) {
    uint8_t flags = rd_u8(r);
    size_t got;
    const uint8_t *b = rd_bytes(r, rd_u8(r), &got);
    int fd = connect_to(port);
    if (fd < 0) break;
    if (flags & 2) {
      uint8_t p[ESCP_PREAMBLE_LEN];
      preamble(p, (flags >> 2) & 1, nstreams);
      send(fd, p, sizeof p, MSG_NOSIGNAL);
    }
    if (got) send(fd, b, got, MSG_NOSIGNAL);
    if (flags & 1) {
      close(fd);
    } else {
      strangers[ns++] = fd;
    }
  }
  connector k;
  memset(&k, 0, sizeof k);
  k.port = port;
  k.nstreams = nstreams;
  if (pthread_create(&k.th, NULL, connector_main, &k) != 0) abort();
  escp_conn *out[4] = {0};
  int32_t dropped = 0;
  int rc = escp_accept_streams(lfd, FUZZ_MASTER, FUZZ_SID, nstreams, out, 5000, &dropped, -1);
  pthread_join(k.th, NULL);
  char why[512];
  escp_last_error(why, sizeof why);
  FUZZ_CHECK(rc == 0, "a stranger kept the real connector out: %d %s", rc, why);
  for (uint32_t s = 0; s < nstreams; s++) {
    FUZZ_CHECK(out[s] && out[s]->stream == s, "stream %u not accepted in its place", s);
    FUZZ_CHECK(k.conns[s] != NULL, "connector's stream %u failed", s);
    escp_conn_free(out[s]);
    escp_conn_free(k.conns[s]);
  }
  for (int i = 0; i < ns; i++) close(strangers[i]);
  close(lfd);
}

typedef struct {
  int lfd;
  const uint8_t *answer;
  size_t n;
  pthread_t th;
} fake_listener;

static void *fake_listener_main(void *arg) {
  fake_listener *f = arg;
  int fd = accept(f->lfd, NULL, NULL);
  if (fd < 0) return NULL;
  uint8_t in[ESCP_PREAMBLE_LEN + HELLO_REC];
  size_t got = 0;
  while (got < sizeof in) {
    ssize_t r = recv(fd, in + got, sizeof in - got, 0);
    if (r <= 0) break;
    got += (size_t)r;
  }
  size_t off = 0;
  while (off < f->n) {
    ssize_t r = send(fd, f->answer + off, f->n - off, MSG_NOSIGNAL);
    if (r <= 0) break;
    off += (size_t)r;
  }
  close(fd);
  return NULL;
}

static void fuzz_connector(reader *r, int xor_into_valid) {
  uint8_t answer[4096];
  size_t n;
  uint8_t valid[HELLO_REC];
  listener_hello(valid);
  const uint8_t *rest = rd_bytes(r, sizeof answer, &n);
  int exact = 0;
  if (xor_into_valid) {
    memcpy(answer, valid, HELLO_REC);
    int changed = 0;
    for (size_t i = 0; i < n && i < HELLO_REC; i++) {
      answer[i] ^= rest[i];
      changed |= rest[i];
    }
    size_t tail = n > HELLO_REC ? n - HELLO_REC : 0;
    memcpy(answer + HELLO_REC, rest + HELLO_REC, tail);
    n = HELLO_REC + tail;
    exact = !changed;
  } else {
    memcpy(answer, rest, n);
    exact = n >= HELLO_REC && memcmp(answer, valid, HELLO_REC) == 0;
  }
  int port;
  fake_listener f = {listen_any(&port), answer, n, 0};
  if (pthread_create(&f.th, NULL, fake_listener_main, &f) != 0) abort();
  int32_t err = 0;
  escp_conn *c = escp_connect("127.0.0.1", port, FUZZ_MASTER, FUZZ_SID, 0, 1, 5000, &err);
  pthread_join(f.th, NULL);
  FUZZ_CHECK(!c || exact, "escp_connect accepted a listener HELLO that is not the right one");
  FUZZ_CHECK(c || !exact, "escp_connect refused the right HELLO: %d", err);
  escp_conn_free(c);
  close(f.lfd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  reader r = {data, size};
  uint8_t config = rd_u8(&r);
  if (config & 1) fuzz_connector(&r, config & 2);
  else fuzz_listener(&r, 1 + ((config >> 2) & 3));
  return 0;
}
