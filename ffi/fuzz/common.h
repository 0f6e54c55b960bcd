/*
 * Shared by the fuzz harnesses in ffi/fuzz/: a byte reader over the fuzzer's
 * input, the fixed session keys, and a thread that plays the peer by writing
 * a byte string into its end of a socket and then closing it.
 *
 * The harnesses include ../internal.h and are linked with the library's
 * sources (not the .so), so they can build a conn around a socketpair and
 * seal records exactly as a peer would.
 */
#ifndef ESCP_FUZZ_COMMON_H
#define ESCP_FUZZ_COMMON_H
#include "../internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* Fixed keys: a fuzzer can reach everything past authentication only if the
 * harness seals for it (it cannot learn a GCM key). */
static const uint8_t FUZZ_MASTER[32] = {
    0x6b, 0x1e, 0x4f, 0x33, 0x90, 0x07, 0xa2, 0x5c, 0x11, 0xde, 0x8a, 0x42, 0x7e, 0x29, 0xb4, 0x03,
    0x5a, 0xc6, 0x18, 0xf1, 0x62, 0x9d, 0x0b, 0x77, 0xe3, 0x3c, 0x85, 0x2f, 0xd0, 0x46, 0x99, 0x14};
static const uint8_t FUZZ_SID[16] = {0x53, 0x49, 0x44, 0x21, 0x00, 0x01, 0x02, 0x03,
                                     0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b};

typedef struct {
  const uint8_t *p;
  size_t n;
} reader;

static inline size_t rd_left(const reader *r) { return r->n; }
static inline uint8_t rd_u8(reader *r) {
  if (!r->n) return 0;
  r->n--;
  return *r->p++;
}
static inline uint32_t rd_u16(reader *r) { return (uint32_t)rd_u8(r) << 8 | rd_u8(r); }
static inline uint32_t rd_u32(reader *r) { return rd_u16(r) << 16 | rd_u16(r); }
static inline uint64_t rd_u64(reader *r) { return (uint64_t)rd_u32(r) << 32 | rd_u32(r); }
/* Up to want bytes (fewer at the end of the input). */
static inline const uint8_t *rd_bytes(reader *r, size_t want, size_t *got) {
  *got = want < r->n ? want : r->n;
  const uint8_t *p = r->p;
  r->p += *got;
  r->n -= *got;
  return p;
}

/* A growable byte string: what the peer will send. */
typedef struct {
  uint8_t *p;
  size_t n, cap;
} bytes;

static inline uint8_t *by_grow(bytes *b, size_t more) {
  if (b->n + more > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + more) cap *= 2;
    uint8_t *np = realloc(b->p, cap);
    if (!np) abort();
    b->p = np;
    b->cap = cap;
  }
  uint8_t *at = b->p + b->n;
  b->n += more;
  return at;
}
static inline void by_put(bytes *b, const void *src, size_t len) {
  if (len) memcpy(by_grow(b, len), src, len);
}

/* The peer: writes everything to fd, then closes its sending half. */
typedef struct {
  int fd;
  const uint8_t *p;
  size_t n;
  pthread_t th;
} peer;

static void *peer_main(void *arg) {
  peer *w = arg;
  size_t off = 0;
  while (off < w->n) {
    ssize_t r = send(w->fd, w->p + off, w->n - off, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      break; /* the receiver gave up: EPIPE */
    }
    off += (size_t)r;
  }
  shutdown(w->fd, SHUT_WR);
  return NULL;
}

static inline void peer_start(peer *w, int fd, const uint8_t *p, size_t n) {
  w->fd = fd;
  w->p = p;
  w->n = n;
  if (pthread_create(&w->th, NULL, peer_main, w) != 0) abort();
}

#define FUZZ_CHECK(cond, ...)                                                                 \
  do {                                                                                        \
    if (!(cond)) {                                                                            \
      fprintf(stderr, "fuzz invariant failed: %s: ", #cond);                                  \
      fprintf(stderr, __VA_ARGS__);                                                           \
      fprintf(stderr, "\n");                                                                  \
      abort();                                                                                \
    }                                                                                         \
  } while (0)

#endif
