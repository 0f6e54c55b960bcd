/*
 * Private declarations shared by the escp native library's source files.
 * Nothing here is exported: the library is built with -fvisibility=hidden and
 * only the functions marked ESCP_API (the escp_* API of escp.h) are visible.
 */
#ifndef ESCP_INTERNAL_H
#define ESCP_INTERNAL_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include "escp.h"

#define ESCP_API __attribute__((visibility("default")))

/* gcm.c: one direction's AES-128-GCM key schedule, from the backend chosen for this host. */
typedef struct escp_gcm escp_gcm;
escp_gcm *escp__gcm_new(const uint8_t key[16], int encrypt);
void escp__gcm_free(escp_gcm *g);
int escp__gcm_seal(escp_gcm *g, const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len, uint8_t *buf,
                   uint32_t len, uint8_t tag[16]);
/* ESCP_E_AUTH (buf wiped) when the tag does not verify. */
int escp__gcm_open(escp_gcm *g, const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len, uint8_t *buf,
                   uint32_t len, const uint8_t tag[16]);
typedef struct ZSTD_CCtx_s ZSTD_CCtx;
typedef struct ZSTD_DCtx_s ZSTD_DCtx;

/* One direction's AEAD state: the key is set once, only the IV changes per record. */
typedef struct {
  escp_gcm *gcm;
  uint32_t prefix;  /* stream * 2 + dir: the nonce's first 4 bytes */
  uint64_t seq;     /* next seq to send / expected next seq to receive */
} escp_dir;

/* ---- pipeline.c: a stream direction's disk I/O on a helper thread ---- */
#define ESCP_PIPE_DEPTH 4 /* blocks read ahead or written behind per stream direction */
#define ESCP_AHEAD_CAP (64u * 1024) /* received bytes held past the current record */
#define ESCP_STAGE_CAP (64u * 1024) /* small sealed records gathered into one send */

typedef struct escp_job {
  int64_t (*run)(struct escp_job *j); /* on the helper; NULL = nothing to do */
  int fd, direct;
  uint8_t *buf;     /* the block, ESCP_ALIGN-aligned */
  size_t want, len; /* bytes to transfer (rounded up for O_DIRECT reads), bytes that count */
  uint64_t off;
  int64_t result;   /* run's return value */
  escp_done done;   /* what the owner reports for this block */
} escp_job;

typedef struct {
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t work, done;
  int started, stop, waiting;
  uint64_t submitted, completed, harvested;
  escp_job jobs[ESCP_PIPE_DEPTH];
} escp_pipe;

int escp__pipe_start(escp_pipe *p);                /* once; 0 or a code */
escp_job *escp__pipe_next(escp_pipe *p);           /* the job to fill next (needs pending < depth) */
uint32_t escp__pipe_pending(const escp_pipe *p);   /* submitted, not yet harvested */
void escp__pipe_submit(escp_pipe *p);
escp_job *escp__pipe_harvest(escp_pipe *p, int wait); /* oldest finished job, or NULL */
void escp__pipe_stop(escp_pipe *p);                /* runs what is queued, then joins */

/*
 * A connection for one stream.  The send half (tx*) belongs to the one thread that
 * sends on the conn and the receive half (rx*) to the one thread that receives: the
 * two never touch each other's fields, so stream 0 can send and receive from two
 * threads at once.
 */
struct escp_conn {
  int fd;
  uint32_t stream;
  uint32_t nstreams;
  int role; /* 0 = connector, 1 = listener */
  volatile int shut; /* escp_conn_shutdown was called */

  /* ---- send half ---- */
  escp_dir tx;
  uint64_t tx_pace_bps;   /* -l's share for this stream (escp_conn_tune); 0 = no limit */
  int64_t tx_pace_ns;     /* CLOCK_MONOTONIC time the bytes sent so far have paid for */
  uint8_t *tx_ctl;        /* scratch for escp_send_record (malloc) */
  size_t tx_ctl_cap;
  uint8_t *tx_buf;        /* aligned: ESCP_ALIGN + block + ESCP_ALIGN (blocks read inline) */
  /* Sealed small records of the current batch not sent yet (loops.c send_sealed); empty
   * between calls, so escp_send_record never overtakes them. */
  uint8_t tx_stage[ESCP_STAGE_CAP];
  uint32_t tx_staged;
  uint8_t *tx_ring[ESCP_PIPE_DEPTH]; /* likewise, for blocks read ahead by tx_pipe */
  escp_pipe tx_pipe;
  uint32_t tx_block;
  uint8_t *tx_zbuf;       /* aligned: ESCP_ALIGN + ZSTD_compressBound(block) + ESCP_ALIGN */
  size_t tx_zcap;         /* ZSTD_compressBound(block) */
  ZSTD_CCtx *cctx;
  int cctx_level;
  uint64_t z_file;        /* the file the next three describe (loops.c compress_worth) */
  uint32_t z_misses;      /* its blocks in a row that zstd did not shrink, up to ZMISS_MAX */
  uint32_t z_skipped;     /* blocks sent as they are since the last probe */

  /* ---- receive half ---- */
  escp_dir rx;
  int rx_end;             /* END received */
  /* Records land in rx_ring[rx_pipe.submitted % depth] (aligned: ESCP_ALIGN + rx_cap +
   * ESCP_ALIGN), which rx_buf points at; the other slots hold blocks being written behind. */
  uint8_t *rx_buf;
  uint8_t *rx_ring[ESCP_PIPE_DEPTH];
  uint8_t *rx_zring[ESCP_PIPE_DEPTH]; /* decompressed blocks, aligned, rx_block rounded up */
  escp_pipe rx_pipe;
  uint32_t rx_block;
  uint32_t rx_cap;        /* largest body a slot holds (tag excluded) */
  ZSTD_DCtx *dctx;
  /* A verified, decrypted record kept for the next call (recv_batch state 2, or a
   * control record met by recv_batch that escp_recv_record hands out). */
  int pend;
  uint8_t pend_type, pend_flags;
  uint32_t pend_len;      /* body length; the body is at rx_buf + ESCP_ALIGN - ESCP_DATA_PREFIX */
  uint64_t pend_seq;
  /* Bytes of the next records, read by recv_batch while it looked for more (loops.c
   * more_waiting): after a small record as many as the socket holds, so a run of small
   * files costs one recv per ESCP_AHEAD_CAP bytes instead of two per record; after a
   * large one only the next header, so a block still lands in place without a copy.
   * escp__recv_all takes these bytes first.  Ciphertext only. */
  uint8_t ahead[ESCP_AHEAD_CAP];
  uint32_t ahead_off, ahead_len;
};

/* ---- errors (crypto.c owns the thread-local detail) ---- */
int escp__err(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Sets the detail to "<what>: <strerror(errno)>" and returns -errno. */
int escp__errno(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- crypto.c ---- */
int escp__crypto_init(void);
/* Creates a direction with key derived for (stream, dir).  Returns 0 or a code. */
int escp__dir_init(escp_dir *d, const uint8_t master[32], const uint8_t sid[16], uint32_t stream,
                   uint32_t dir, int encrypt);
void escp__dir_free(escp_dir *d);
void escp__put_hdr(uint8_t hdr[16], uint32_t type, uint32_t flags, uint32_t len, uint64_t seq);
/* Seals body in place with AAD = hdr (already filled with seq = d->seq); tag out. */
int escp__seal(escp_dir *d, const uint8_t hdr[16], uint8_t *body, uint32_t len, uint8_t tag[16]);
/* Opens body in place; 0 or ESCP_E_AUTH (body then wiped).  Uses seq from the header. */
int escp__open(escp_dir *d, const uint8_t hdr[16], uint8_t *body, uint32_t len, const uint8_t tag[16]);
void escp__hash128(const void *buf, size_t len, uint8_t out[16]);

static inline uint32_t escp__be32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t escp__be64(const uint8_t *p) {
  return ((uint64_t)escp__be32(p) << 32) | escp__be32(p + 4);
}
static inline void escp__put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void escp__put64(uint8_t *p, uint64_t v) {
  escp__put32(p, (uint32_t)(v >> 32)); escp__put32(p + 4, (uint32_t)v);
}

/* ---- net.c ---- */
/* Writes all of buf (MSG_NOSIGNAL, EINTR, partial sends).  0 or -errno. */
/* more: further records follow at once (MSG_MORE), so small ones share segments; the
 * caller ends such a run with a send without it, or escp__push. */
int escp__send_all(escp_conn *c, const void *buf, size_t len, int more);
/* Sends what MSG_MORE held back. */
void escp__push(escp_conn *c);
/* Reads exactly len bytes.  Returns 0, ESCP_E_TRUNC on EOF (detail names the stream and
 * `what`), ESCP_E_CANCEL after escp_conn_shutdown, or -errno. */
int escp__recv_all(escp_conn *c, void *buf, size_t len, const char *what);
/* Reads and checks one record header (seq == expected, known type, rsv 0, len <= cap).
 * Returns 0 and fills type/flags/len/seq, or a code. */
int escp__recv_hdr(escp_conn *c, uint8_t hdr[16], uint32_t cap, uint32_t *type, uint32_t *flags,
                   uint32_t *len);
const char *escp__type_name(uint32_t type);

/* ---- compress.c ---- */
size_t escp__zbound(size_t len);
/* Compresses into dst (cap); returns compressed size, or 0 when it did not fit or failed. */
size_t escp__zcompress(ZSTD_CCtx **cctx, int *cur_level, int level, const void *src, size_t len,
                       void *dst, size_t cap);
/* Decompresses a single frame into dst (cap); returns size or ESCP_E_DECOMP. */
int64_t escp__zdecompress(ZSTD_DCtx **dctx, const void *src, size_t len, void *dst, size_t cap);
void escp__zfree(ZSTD_CCtx *cctx, ZSTD_DCtx *dctx);

/* ---- loops.c ---- */
void escp__loops_free(escp_conn *c); /* stops the helpers, frees the loop buffers */

/* ---- io.c ---- */
void *escp__alloc(size_t size); /* aligned, not zeroed; NULL on failure */
void escp__free(void *p);

#endif
