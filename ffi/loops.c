/*
 * loops.c: the fused per-stream loops.  One FFI call moves many blocks:
 *   sender:   pread -> XXH3-128 -> [zstd] -> AES-GCM in place -> send (small records
 *             gathered, one send() for many; see send_sealed)
 *   receiver: recv header -> recv body+tag (a block lands page-aligned; small records
 *             come many to a recv, see more_waiting) -> check seq and
 *             tag -> [bounded zstd] -> XXH3-128 -> pwrite (O_DIRECT when aligned)
 *
 * Buffer layout (both directions), one aligned allocation per conn and direction:
 *
 *   base                      base+ALIGN-32   base+ALIGN              +len   +len+16
 *   |  ...unused...           | hdr(16) | prefix(16) | block ........ | tag |  ...  |
 *
 * so a record is contiguous (one send, no copies) and the block itself is aligned for
 * O_DIRECT pread/pwrite.
 *
 * Disk I/O of blocks over SMALL_IO runs on the stream direction's helper thread
 * (pipeline.c): the sender reads up to ESCP_PIPE_DEPTH blocks ahead while it seals and
 * sends, the receiver writes up to ESCP_PIPE_DEPTH blocks behind while it receives and
 * opens the next records.  Each slot of the ring has its own buffer of the layout above.
 * Smaller blocks are read and written inline: for them a thread hand-off costs more
 * than the I/O it would hide.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <openssl/crypto.h>

#define REC_OVERHEAD (ESCP_HDR_LEN + ESCP_TAG_LEN)
#define ROUND_UP(x) (((x) + (size_t)ESCP_ALIGN - 1) & ~((size_t)ESCP_ALIGN - 1))
#define SMALL_IO (256u * 1024)

static int cancelled(const escp_loop_opts *o) {
  return o->cancel && __atomic_load_n(o->cancel, __ATOMIC_RELAXED) != 0;
}

static int check_opts(escp_conn *c, const escp_loop_opts *o) {
  if (!c || !o) return -EINVAL;
  if (o->block_size == 0 || (o->block_size % ESCP_ALIGN) != 0 || o->block_size > (1u << 30))
    return escp__err(-EINVAL, "stream %u: block size %u is not a multiple of %d (at most 1 GiB)",
                     c ? c->stream : 0, o->block_size, ESCP_ALIGN);
  return 0;
}

/* ---- sender ------------------------------------------------------------ */

/* Frees an array of buffers, wiping them first when they held plaintext. */
static void free_ring(uint8_t **ring, size_t each, int wipe) {
  for (int i = 0; i < ESCP_PIPE_DEPTH; i++) {
    if (ring[i] && wipe) OPENSSL_cleanse(ring[i], each);
    escp__free(ring[i]);
    ring[i] = NULL;
  }
}

static int ensure_tx(escp_conn *c, uint32_t block, int level) {
  size_t each = (size_t)ESCP_ALIGN + block + ESCP_ALIGN;
  if (!c->tx_buf || c->tx_block != block) {
    escp__free(c->tx_buf);
    escp__free(c->tx_zbuf);
    free_ring(c->tx_ring, (size_t)ESCP_ALIGN + c->tx_block + ESCP_ALIGN, 0);
    c->tx_zbuf = NULL;
    c->tx_buf = escp__alloc(each);
    int ok = c->tx_buf != NULL;
    for (int i = 0; ok && i < ESCP_PIPE_DEPTH; i++) ok = (c->tx_ring[i] = escp__alloc(each)) != NULL;
    c->tx_block = ok ? block : 0;
    if (!ok) return escp__err(-ENOMEM, "stream %u: cannot allocate %d send buffers of %u bytes", c->stream,
                              ESCP_PIPE_DEPTH + 1, block);
  }
  int rc = escp__pipe_start(&c->tx_pipe);
  if (rc) return rc;
  if (level != 0 && !c->tx_zbuf) {
    c->tx_zcap = escp__zbound(block);
    c->tx_zbuf = escp__alloc((size_t)ESCP_ALIGN + ROUND_UP(c->tx_zcap) + ESCP_ALIGN);
    if (!c->tx_zbuf) return escp__err(-ENOMEM, "stream %u: cannot allocate a compression buffer", c->stream);
  }
  return 0;
}

/* Reads want bytes at off into buf; with O_DIRECT the length is already rounded up and a
 * partial (unaligned) read means EOF.  Returns bytes read or -errno. */
static int64_t read_block(int fd, uint8_t *buf, size_t want, uint64_t off, int direct, size_t len) {
  size_t got = 0;
  while (got < want) {
    ssize_t r = pread(fd, buf + got, want - got, (off_t)(off + got));
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL && direct) {
        /* the filesystem wants another alignment: read this block buffered */
        char p[64];
        snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
        int b = open(p, O_RDONLY | O_CLOEXEC);
        if (b < 0) return -EINVAL;
        int64_t r2 = read_block(b, buf, len, off, 0, len);
        close(b);
        return r2;
      }
      return -errno;
    }
    if (r == 0) break;
    got += (size_t)r;
    if (direct && (got % ESCP_ALIGN) != 0) break;
  }
  return (int64_t)got;
}

static int64_t job_read(escp_job *j) {
  return read_block(j->fd, j->buf, j->want, j->off, j->direct, j->len);
}

/* Bytes to pread for an item: O_DIRECT reads whole aligned units (a short read is EOF). */
static size_t read_want(const escp_work *it) {
  return it->direct ? ROUND_UP((size_t)it->len) : it->len;
}

static int read_ahead_worthy(const escp_work *it, uint32_t block) {
  return it->len > SMALL_IO && it->len <= block;
}

/* Queues reads of the coming large blocks until the ring is full. */
static void read_ahead(escp_conn *c, const escp_work *items, uint32_t n, uint32_t *next, uint32_t block) {
  escp_pipe *p = &c->tx_pipe;
  for (; *next < n && escp__pipe_pending(p) < ESCP_PIPE_DEPTH; (*next)++) {
    const escp_work *it = &items[*next];
    if (!read_ahead_worthy(it, block)) continue;
    escp_job *j = escp__pipe_next(p);
    j->run = job_read;
    j->fd = it->fd;
    j->direct = it->direct;
    j->buf = c->tx_ring[p->submitted % ESCP_PIPE_DEPTH] + ESCP_ALIGN;
    j->len = it->len;
    j->want = read_want(it);
    j->off = it->offset;
    escp__pipe_submit(p);
  }
}

/* Waits for every queued job: a helper must not touch a buffer after the call returns. */
static void drain(escp_pipe *p) {
  while (escp__pipe_harvest(p, 1)) {
  }
}

/* Sends the records gathered in the stage. */
static int flush_stage(escp_conn *c) {
  uint32_t n = c->tx_staged;
  c->tx_staged = 0;
  return n ? escp__send_all(c, c->tx_stage, n, 1) : 0;
}

/* Sends one sealed record, in order.  A small one is copied to the stage and leaves with
 * the next ones (a send() per record cost more than the record's encryption: 10,000 4 KiB
 * files made 10,000 loopback sends); a larger one goes out from where it lies. */
static int send_sealed(escp_conn *c, const uint8_t *rec, size_t len) {
  int rc;
  if (len > ESCP_STAGE_CAP / 4) {
    rc = flush_stage(c);
    return rc ? rc : escp__send_all(c, rec, len, 1);
  }
  if (c->tx_staged + len > ESCP_STAGE_CAP && (rc = flush_stage(c)) != 0) return rc;
  memcpy(c->tx_stage + c->tx_staged, rec, len);
  c->tx_staged += (uint32_t)len;
  return 0;
}

/* -C on data that does not compress (archives, media, encrypted files): zstd -1 spent
 * +11-30 % CPU per GB on blocks it could not shrink.  Once ZMISS_MAX blocks of a file in
 * a row (on this stream) did not shrink by 1/32, only every ZPROBE-th block of it is
 * offered, and a probe that shrinks brings back compression for every block. */
#define ZMISS_MAX 4
#define ZPROBE 16

/* Whether to offer this block of file_id to zstd; a block not offered is counted. */
static int compress_worth(escp_conn *c, uint64_t file_id, escp_counters *ctr) {
  if (c->z_file != file_id) {
    c->z_file = file_id;
    c->z_misses = 0;
    c->z_skipped = 0;
  }
  if (c->z_misses < ZMISS_MAX) return 1;
  if (++c->z_skipped < ZPROBE) {
    ctr->zstd_skipped++;
    return 0;
  }
  c->z_skipped = 0;
  return 1;
}

static void compress_outcome(escp_conn *c, size_t zs, uint32_t len) {
  if (zs > 0 && zs <= (size_t)(len - len / 32)) c->z_misses = 0;
  else if (c->z_misses < ZMISS_MAX) c->z_misses++;
}

static int send_items(escp_conn *c, const escp_work *items, uint32_t n, escp_done *done,
                      const escp_loop_opts *o, escp_counters *ctr) {
  uint32_t block = o->block_size;
  int level = o->zstd_level;
  uint32_t ahead = 0; /* next item read_ahead looks at */
  int rc;

  for (uint32_t i = 0; i < n; i++) {
    if (cancelled(o)) return escp__err(ESCP_E_CANCEL, "stream %u: cancelled", c->stream);
    read_ahead(c, items, n, &ahead, block);
    const escp_work *it = &items[i];
    escp_done *d = &done[i];
    d->file_id = it->file_id;
    d->offset = it->offset;
    d->len = it->len;
    d->status = 0;
    memset(d->hash, 0, sizeof d->hash);
    if (it->len > block) {
      d->status = escp__err(-EINVAL, "stream %u: file %llu block at %llu: length %u over the block size %u",
                            c->stream, (unsigned long long)it->file_id, (unsigned long long)it->offset, it->len,
                            block);
      continue;
    }
    uint8_t *pay;
    int64_t got;
    if (read_ahead_worthy(it, block)) {
      escp_job *j = escp__pipe_harvest(&c->tx_pipe, 1); /* FIFO: this item's read */
      pay = j->buf;
      got = j->result;
    } else {
      pay = c->tx_buf + ESCP_ALIGN;
      got = read_block(it->fd, pay, read_want(it), it->offset, it->direct, it->len);
    }
    if (got < 0) {
      errno = (int)-got;
      d->status = escp__errno("stream %u: reading file %llu at %llu", c->stream, (unsigned long long)it->file_id,
                              (unsigned long long)it->offset);
      continue;
    }
    if ((uint64_t)got < it->len) {
      d->status = escp__err(ESCP_E_CHANGED, "stream %u: file %llu shrank while read: %lld of %u bytes at offset %llu",
                            c->stream, (unsigned long long)it->file_id, (long long)got, it->len,
                            (unsigned long long)it->offset);
      continue;
    }
    uint32_t len = it->len;
    escp__hash128(pay, len, d->hash);
    ctr->bytes_disk += len;

    uint8_t *body = pay - ESCP_DATA_PREFIX;
    uint32_t plen = len, flags = 0;
    if (level != 0 && len > 64 && compress_worth(c, it->file_id, ctr)) {
      uint8_t *zp = c->tx_zbuf + ESCP_ALIGN;
      size_t zs = escp__zcompress(&c->cctx, &c->cctx_level, level, pay, len, zp, c->tx_zcap);
      compress_outcome(c, zs, len);
      if (zs > 0 && zs < len) {
        body = zp - ESCP_DATA_PREFIX;
        plen = (uint32_t)zs;
        flags = ESCP_F_COMPRESSED;
      }
    }
    uint8_t *hdr = body - ESCP_HDR_LEN;
    uint32_t blen = ESCP_DATA_PREFIX + plen;
    escp__put64(body, it->file_id);
    escp__put64(body + 8, it->offset);
    escp__put_hdr(hdr, ESCP_REC_DATA, flags, blen, c->tx.seq);
    rc = escp__seal(&c->tx, hdr, body, blen, body + blen);
    if (rc) return rc;
    c->tx.seq++;
    /* Within a batch small records share segments; the batch's end is pushed below. */
    rc = send_sealed(c, hdr, (size_t)ESCP_HDR_LEN + blen + ESCP_TAG_LEN);
    if (rc) return rc;
    ctr->bytes_network += (uint64_t)REC_OVERHEAD + blen;
    ctr->bytes_compressed += plen;
    ctr->blocks++;
    ctr->records++;
  }
  return (int)n;
}

ESCP_API int escp_send_batch(escp_conn *c, const escp_work *items, uint32_t n, escp_done *done,
                             const escp_loop_opts *o, escp_counters *ctr) {
  int rc = check_opts(c, o);
  if (rc) return rc;
  if (n && (!items || !done)) return -EINVAL;
  escp_counters dummy;
  rc = ensure_tx(c, o->block_size, o->zstd_level);
  if (rc) return rc;
  rc = send_items(c, items, n, done, o, ctr ? ctr : &dummy);
  drain(&c->tx_pipe); /* reads still queued when the stream failed */
  if (rc >= 0) {
    int f = flush_stage(c);
    if (f) return f;
    escp__push(c); /* the batch's records leave now, not at the next batch */
  }
  c->tx_staged = 0; /* a failed stream sends nothing more */
  return rc;
}

/* ---- receiver ---------------------------------------------------------- */

/* The receive buffers, wiped (they held plaintext). */
static void free_rx(escp_conn *c) {
  free_ring(c->rx_ring, (size_t)ESCP_ALIGN + c->rx_cap + ESCP_ALIGN, 1);
  free_ring(c->rx_zring, ROUND_UP((size_t)c->rx_block), 1);
  c->rx_buf = NULL;
  c->rx_block = c->rx_cap = 0;
}

static int ensure_rx(escp_conn *c, uint32_t block) {
  if (c->rx_ring[0] && c->rx_block == block) return 0;
  if (c->pend && c->rx_ring[0]) {
    /* keep the pending record: only grow */
    if (block <= c->rx_block) return 0;
    return escp__err(-EINVAL, "stream %u: block size changed while a record is pending", c->stream);
  }
  uint32_t cap = ESCP_DATA_PREFIX + block;
  if (cap < ESCP_MAX_CTRL_BODY) cap = ESCP_MAX_CTRL_BODY;
  cap = (uint32_t)ROUND_UP(cap);
  free_rx(c);
  int ok = 1;
  for (int i = 0; ok && i < ESCP_PIPE_DEPTH; i++)
    ok = (c->rx_ring[i] = escp__alloc((size_t)ESCP_ALIGN + cap + ESCP_ALIGN)) != NULL;
  if (!ok) {
    free_rx(c);
    return escp__err(-ENOMEM, "stream %u: cannot allocate %d receive buffers of %u bytes", c->stream,
                     ESCP_PIPE_DEPTH, cap);
  }
  c->rx_block = block;
  c->rx_cap = cap;
  c->rx_buf = c->rx_ring[c->rx_pipe.submitted % ESCP_PIPE_DEPTH];
  return escp__pipe_start(&c->rx_pipe);
}

void escp__loops_free(escp_conn *c) {
  escp__pipe_stop(&c->tx_pipe);
  escp__pipe_stop(&c->rx_pipe);
  escp__free(c->tx_buf);
  escp__free(c->tx_zbuf);
  free_ring(c->tx_ring, (size_t)ESCP_ALIGN + c->tx_block + ESCP_ALIGN, 0);
  free_rx(c);
}

static int pwrite_all(int fd, const uint8_t *buf, size_t len, uint64_t off) {
  size_t done = 0;
  while (done < len) {
    ssize_t r = pwrite(fd, buf + done, len - done, (off_t)(off + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) return -EIO;
    done += (size_t)r;
  }
  return 0;
}

/* Writes one block; an O_DIRECT fd gets only aligned writes, the rest goes through a
 * buffered reopen of the same file (closed right away: fd numbers may be reused by the
 * main thread as soon as a file is done). */
static int write_block(int fd, int direct, const uint8_t *buf, size_t len, uint64_t off) {
  if (len == 0) return 0;
  if (!direct || ((off % ESCP_ALIGN) == 0 && (len % ESCP_ALIGN) == 0)) {
    int rc = pwrite_all(fd, buf, len, off);
    if (rc != -EINVAL || !direct) return rc;
    /* the filesystem wants a larger alignment than ESCP_ALIGN: fall through */
  }
  char p[64];
  snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
  int b = open(p, O_WRONLY | O_CLOEXEC);
  if (b < 0) return -errno;
  int rc = pwrite_all(b, buf, len, off);
  close(b);
  return rc;
}

static int64_t job_write(escp_job *j) {
  return write_block(j->fd, j->direct, j->buf, j->len, j->off);
}

/* Reports a block whose write has finished (inline or on the helper). */
static void block_written(escp_conn *c, escp_done *d, escp_counters *ctr) {
  if (d->status) {
    errno = -d->status;
    escp__errno("stream %u: writing file %llu at %llu", c->stream, (unsigned long long)d->file_id,
                (unsigned long long)d->offset);
  } else {
    ctr->bytes_disk += d->len;
  }
}

/* Appends a harvested write-behind job to done[]. */
static uint32_t report_write(escp_conn *c, escp_job *j, escp_done *done, uint32_t n, escp_counters *ctr) {
  j->done.status = (int32_t)j->result;
  block_written(c, &j->done, ctr);
  done[n] = j->done;
  return n + 1;
}

/* Moves finished write-behind jobs into done[]; with wait, all of them. */
static uint32_t harvest_writes(escp_conn *c, escp_done *done, uint32_t n, int wait, escp_counters *ctr) {
  for (escp_job *j; (j = escp__pipe_harvest(&c->rx_pipe, wait)) != NULL;) n = report_write(c, j, done, n, ctr);
  return n;
}

/* Records up to this size are followed by a read of as much as the socket holds. */
#define AHEAD_SMALL (16u * 1024)

/* True when a read on the stream would not block (data or EOF is waiting).  What it reads
 * it keeps in c->ahead, where escp__recv_all starts: after a record of body_len bytes up
 * to AHEAD_SMALL, as much as fits (the next small records, one recv for many); after a
 * larger one only the rest of the next header, so the next block is received in place. */
static int more_waiting(escp_conn *c, uint32_t body_len) {
  if (c->ahead_len >= ESCP_HDR_LEN) return 1;
  if (c->ahead_off) {
    memmove(c->ahead, c->ahead + c->ahead_off, c->ahead_len);
    c->ahead_off = 0;
  }
  size_t want = (body_len <= AHEAD_SMALL ? ESCP_AHEAD_CAP : ESCP_HDR_LEN) - c->ahead_len;
  ssize_t r = recv(c->fd, c->ahead + c->ahead_len, want, MSG_DONTWAIT);
  if (r > 0) {
    c->ahead_len += (uint32_t)r;
    return 1;
  }
  return r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
}

/* Files this large are preallocated when a worker creates them (slot_fd). */
#define PREALLOC_MIN (1u << 20)

/* Another stream is creating slot s's file: sleep until it has (a futex on s->fd, not a
 * spin: the create includes reserving the whole file, 50 ms for 2 GiB on ext4 and 0.5 s
 * on tmpfs, and on a busy host the spinning streams took the CPU the creator needed).
 * The creator wakes sleepers only when one marked the slot ESCP_FD_AWAITED, so a file
 * nobody waits for costs no extra system call.  The sleep is bounded, so that a wake-up
 * lost would cost a delay, never a hung stream. */
static void await_create(escp_fdslot *s, int32_t seen) {
  if (seen == ESCP_FD_CREATING &&
      !__atomic_compare_exchange_n(&s->fd, &seen, ESCP_FD_AWAITED, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
    return; /* it changed meanwhile: look again */
  const struct timespec bound = {0, 50 * 1000 * 1000};
  syscall(SYS_futex, &s->fd, FUTEX_WAIT_PRIVATE, ESCP_FD_AWAITED, &bound, NULL, 0);
}

/* The fd to write a block of slot s to, creating the file if this is its first block
 * (see escp_fdslot); -errno when that failed.  Several streams may hold blocks of one
 * file: the one that wins the slot creates it, the others wait for it (await_create). */
static int slot_fd(escp_fdslot *s, int *direct) {
  for (;;) {
    int32_t fd = __atomic_load_n(&s->fd, __ATOMIC_ACQUIRE);
    if (fd == ESCP_FD_CREATE &&
        __atomic_compare_exchange_n(&s->fd, &fd, ESCP_FD_CREATING, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
      int32_t is_direct = 0;
      const int want_direct = s->direct & ESCP_SLOT_DIRECT;
      int unnamed = (s->direct & ESCP_SLOT_UNNAMED) != 0;
      int nfd = unnamed ? escp_create_unnamed(s->dirfd, want_direct, (uint32_t)s->mode, &is_direct) : -EOPNOTSUPP;
      if (nfd == -EOPNOTSUPP) {
        unnamed = 0;
        nfd = escp_create_part(s->dirfd, s->name, want_direct, (uint32_t)s->mode, &is_direct);
      }
      /* Reserve the whole file now: a full disk fails here, before the transfer, and the
       * streams' O_DIRECT writes then land inside the file instead of each extending it,
       * which ext4 serialises on the inode lock (half the machine idle in a 2 GiB copy). */
      if (nfd >= 0 && s->size >= PREALLOC_MIN) {
        int r = escp_reserve(nfd, (int64_t)s->size);
        if (r == -ENOSPC || r == -EDQUOT || r == -EFBIG) {
          close(nfd);
          if (!unnamed) unlinkat(s->dirfd, s->name, 0);
          nfd = r;
        }
      }
      s->direct = is_direct | (unnamed ? ESCP_SLOT_UNNAMED : 0);
      if (__atomic_exchange_n(&s->fd, nfd, __ATOMIC_ACQ_REL) == ESCP_FD_AWAITED)
        syscall(SYS_futex, &s->fd, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
      *direct = is_direct;
      return nfd;
    }
    if (fd == ESCP_FD_CLAIMED) return -ECANCELED;
    if (fd == ESCP_FD_CREATING || fd == ESCP_FD_AWAITED) {
      await_create(s, fd);
      continue;
    }
    if (fd != ESCP_FD_CREATE) {
      *direct = s->direct & ESCP_SLOT_DIRECT;
      return fd;
    }
  }
}

ESCP_API int escp_recv_batch(escp_conn *c, escp_fdslot *tab, uint32_t cap, escp_done *done, uint32_t max_done,
                             const escp_loop_opts *o, escp_counters *ctr, int32_t *state, uint64_t *need_id) {
  int32_t st_dummy;
  uint64_t id_dummy;
  if (!state) state = &st_dummy;
  if (!need_id) need_id = &id_dummy;
  *state = 0;
  int rc = check_opts(c, o);
  if (rc) return rc;
  if (!tab || cap == 0 || (cap & (cap - 1)) != 0)
    return escp__err(-EINVAL, "stream %u: file table capacity %u is not a power of two", c->stream, cap);
  if (max_done && !done) return -EINVAL;
  escp_counters dummy;
  if (!ctr) ctr = &dummy;
  uint32_t block = o->block_size;
  rc = ensure_rx(c, block);
  if (rc) return rc;
  if (c->rx_end && !c->pend) {
    *state = 1;
    return 0;
  }

  escp_pipe *p = &c->rx_pipe;
  uint32_t n = 0;
  /* Writes still in flight must fit in done[] when the call ends. */
  while (n + escp__pipe_pending(p) < max_done) {
    /* This record's slot: free it first if a write from it is still queued. */
    if (escp__pipe_pending(p) == ESCP_PIPE_DEPTH) n = report_write(c, escp__pipe_harvest(p, 1), done, n, ctr);
    c->rx_buf = c->rx_ring[p->submitted % ESCP_PIPE_DEPTH];
    uint8_t *hdr = c->rx_buf + ESCP_ALIGN - ESCP_DATA_PREFIX - ESCP_HDR_LEN;
    uint8_t *body = c->rx_buf + ESCP_ALIGN - ESCP_DATA_PREFIX;
    uint32_t type, flags, blen;
    uint64_t seq;
    if (c->pend) {
      type = c->pend_type;
      flags = c->pend_flags;
      blen = c->pend_len;
      seq = c->pend_seq;
      if (type == ESCP_REC_DATA && blen > ESCP_DATA_PREFIX + block) {
        rc = escp__err(ESCP_E_PROTO, "stream %u: pending DATA record seq %llu is larger than the block size %u",
                       c->stream, (unsigned long long)seq, block);
        break;
      }
    } else {
      if (cancelled(o)) {
        rc = escp__err(ESCP_E_CANCEL, "stream %u: cancelled", c->stream);
        break;
      }
      rc = escp__recv_hdr(c, hdr, c->rx_cap, &type, &flags, &blen);
      if (rc) break;
      seq = c->rx.seq;
      if (type == ESCP_REC_DATA ? (blen < ESCP_DATA_PREFIX || blen > ESCP_DATA_PREFIX + block)
                                : blen > ESCP_MAX_CTRL_BODY) {
        rc = escp__err(ESCP_E_PROTO, "stream %u: %s record seq %llu announces %u bytes, over the limit of %u",
                       c->stream, escp__type_name(type), (unsigned long long)seq, blen,
                       type == ESCP_REC_DATA ? ESCP_DATA_PREFIX + block : ESCP_MAX_CTRL_BODY);
        break;
      }
      rc = escp__recv_all(c, body, (size_t)blen + ESCP_TAG_LEN, "body");
      if (rc) break;
      rc = escp__open(&c->rx, hdr, body, blen, body + blen);
      if (rc) {
        rc = escp__err(rc, "stream %u: record seq %llu failed authentication (altered, spliced or wrong key)",
                       c->stream, (unsigned long long)seq);
        break;
      }
      c->rx.seq++;
      ctr->records++;
      ctr->bytes_network += (uint64_t)REC_OVERHEAD + blen;
    }
    c->pend = 0;
    if (type == ESCP_REC_END) {
      c->rx_end = 1;
      *state = 1;
      break;
    }
    if (type != ESCP_REC_DATA) {
      /* kept for escp_recv_record (e.g. an ERROR record's message) */
      c->pend = 1;
      c->pend_type = (uint8_t)type;
      c->pend_flags = (uint8_t)flags;
      c->pend_len = blen;
      c->pend_seq = seq;
      rc = escp__err(ESCP_E_PROTO, "stream %u: unexpected %s record (seq %llu) on a data stream; "
                     "escp_recv_record returns it", c->stream, escp__type_name(type), (unsigned long long)seq);
      break;
    }
    uint64_t file_id = escp__be64(body), off = escp__be64(body + 8);
    escp_fdslot *s = &tab[file_id & (cap - 1)];
    if (__atomic_load_n(&s->id_plus1, __ATOMIC_ACQUIRE) != file_id + 1 || file_id == UINT64_MAX) {
      c->pend = 1;
      c->pend_type = (uint8_t)type;
      c->pend_flags = (uint8_t)flags;
      c->pend_len = blen;
      c->pend_seq = seq;
      *state = 2;
      *need_id = file_id;
      break;
    }
    uint64_t size = s->size;
    int direct = 0;
    int fd = slot_fd(s, &direct);
    const uint8_t *plain = body + ESCP_DATA_PREFIX;
    uint32_t plen = blen - ESCP_DATA_PREFIX;
    uint64_t len = plen;
    if (flags & ESCP_F_COMPRESSED) {
      uint8_t **zbuf = &c->rx_zring[p->submitted % ESCP_PIPE_DEPTH];
      if (!*zbuf) {
        *zbuf = escp__alloc(ROUND_UP((size_t)c->rx_block)); /* rx_block >= block */
        if (!*zbuf) {
          rc = escp__err(-ENOMEM, "stream %u: cannot allocate a decompression buffer", c->stream);
          break;
        }
      }
      int64_t r = escp__zdecompress(&c->dctx, plain, plen, *zbuf, block);
      if (r < 0) {
        rc = escp__err(r == -ENOMEM ? -ENOMEM : ESCP_E_DECOMP,
                       "stream %u: record seq %llu (file %llu offset %llu): compressed block is invalid or "
                       "larger than the block size %u", c->stream, (unsigned long long)seq,
                       (unsigned long long)file_id, (unsigned long long)off, block);
        break;
      }
      plain = *zbuf;
      len = (uint64_t)r;
    }
    if (off > size || len > size - off) {
      rc = escp__err(ESCP_E_RANGE, "stream %u: record seq %llu writes [%llu, %llu) of file %llu, which has %llu bytes",
                     c->stream, (unsigned long long)seq, (unsigned long long)off,
                     (unsigned long long)(off + len), (unsigned long long)file_id, (unsigned long long)size);
      break;
    }
    escp_job *j = escp__pipe_next(p);
    escp_done *d = &j->done;
    d->file_id = file_id;
    d->offset = off;
    d->len = (uint32_t)len;
    d->status = 0;
    escp__hash128(plain, (size_t)len, d->hash);
    ctr->bytes_compressed += plen;
    ctr->blocks++;
    if (fd < 0) {
      /* the file could not be created: every block of it says why, none is written */
      d->status = fd;
      block_written(c, d, ctr);
      done[n++] = *d;
    } else if (len > SMALL_IO) {
      j->run = job_write;
      j->fd = fd;
      j->direct = direct;
      j->buf = (uint8_t *)plain;
      j->len = j->want = (size_t)len;
      j->off = off;
      escp__pipe_submit(p);
    } else {
      d->status = write_block(fd, direct, plain, (size_t)len, off);
      block_written(c, d, ctr);
      done[n++] = *d;
    }
    n = harvest_writes(c, done, n, 0, ctr);
    /* Hand back what is written as soon as the socket has nothing more for us
       right now: the main thread settles a file when its last block lands. */
    if (!more_waiting(c, blen)) break;
  }
  /* Every queued write finishes before we return: the main thread may close a file's
     fd once its blocks are reported, and reports must not wait for the next record. */
  n = harvest_writes(c, done, n, 1, ctr);
  return rc ? rc : (int)n;
}
