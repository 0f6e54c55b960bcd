/*
 * Fuzz harness: the receiving half of a stream (escp_recv_batch on a data
 * stream, escp_recv_record on stream 0), fed by a peer thread through a
 * socketpair.
 *
 * The input is a small program for the peer, so that the fuzzer gets past
 * authentication: the harness seals records with the session's real key
 * (the fuzzer chooses type, flags, body and how to break them) and can also
 * emit raw bytes.
 *
 *   input   = config u8, then ops until the input ends
 *   config  = bit 0: stream 0 (escp_recv_record) instead of a data stream
 *             bits 1-2: block size 4K, 8K, 64K or 1M
 *   op      = u8 code, then operands; code >> 5 is the kind:
 *     0..3  sealed record:  type u8, flags u8, len u16, body[len]
 *           code & 0x10: the body is (id u64, off u64, n u32, fill u8) and becomes
 *                        a DATA body whose block is a zstd frame of n (<= 4 MiB)
 *                        bytes of fill (COMPRESSED set); code & 0x08: without the
 *                        content size in the frame header
 *           code & 0x07: 0 as is, 1 flip header bit (u8 position), 2 flip tag bit
 *                        (u8), 3 skip a seq, 4 replay (the next record reuses the
 *                        seq), 5 sealed with another stream's key, 6 with the other
 *                        direction's key, 7 header len replaced (u32)
 *     4     raw bytes: n u8, bytes[n]
 *     5     END, sealed
 *     6, 7  DATA for a table file: file u8 (mod 4), off u32, len u16, byte u8 (the
 *           block is len copies of byte)
 *
 * Invariants checked (abort = a finding): every block the receiver reports
 * lies inside its file's announced size and names a published file; a body
 * returned by escp_recv_record fits the caller's capacity; and, with ASan,
 * no memory error anywhere on the way.
 */
#include "common.h"

#include <sys/mman.h>
#include <zstd.h>

#define NFILES 4
#define TABCAP 16
static const uint64_t FILE_SIZE[NFILES] = {0, 10, 3 * 4096 + 5, 1 << 20};
static const uint32_t BLOCKS[4] = {4096, 8192, 65536, 1 << 20};

static int g_fds[NFILES];
static ZSTD_CCtx *g_cctx;
static uint8_t *g_zsrc, *g_zdst;
#define ZMAX (4u << 20)

static void init_once(void) {
  static int done;
  if (done) return;
  done = 1;
  for (int i = 0; i < NFILES; i++) {
    g_fds[i] = memfd_create("escp-fuzz", MFD_CLOEXEC);
    if (g_fds[i] < 0) abort();
  }
  g_cctx = ZSTD_createCCtx();
  g_zsrc = malloc(ZMAX);
  g_zdst = malloc(ZSTD_compressBound(ZMAX));
  if (!g_cctx || !g_zsrc || !g_zdst) abort();
}

typedef struct {
  escp_dir keys[3]; /* 0: the right one, 1: another stream, 2: the other direction */
  uint64_t seq;
  uint32_t stream;
  bytes out;
  int stop;
} sender;

/* Appends one sealed record, broken as asked. */
static void seal(sender *s, uint32_t type, uint32_t flags, const uint8_t *body, uint32_t len, int how, reader *r) {
  uint8_t *rec = by_grow(&s->out, ESCP_HDR_LEN + (size_t)len + ESCP_TAG_LEN);
  uint8_t *hdr = rec, *b = rec + ESCP_HDR_LEN, *tag = b + len;
  if (how == 3) s->seq++;
  escp__put_hdr(hdr, type, flags, len, s->seq);
  if (len) memcpy(b, body, len);
  escp_dir *k = how == 5 ? &s->keys[1] : how == 6 ? &s->keys[2] : &s->keys[0];
  uint64_t keep = k->seq;
  if (escp__seal(k, hdr, b, len, tag) != 0) abort();
  k->seq = keep;
  if (how != 4) s->seq++;
  if (how == 1) {
    uint8_t bit = rd_u8(r);
    hdr[(bit >> 3) % ESCP_HDR_LEN] ^= (uint8_t)(1u << (bit & 7));
  } else if (how == 2) {
    uint8_t bit = rd_u8(r);
    tag[(bit >> 3) % ESCP_TAG_LEN] ^= (uint8_t)(1u << (bit & 7));
  } else if (how == 7) {
    escp__put32(hdr + 4, rd_u32(r));
  }
}

/* The peer's byte string, from the ops. */
static void build(sender *s, reader *r) {
  uint8_t tmp[65536 + 32];
  while (rd_left(r) && !s->stop) {
    uint8_t code = rd_u8(r);
    switch (code >> 5) {
    case 0: case 1: case 2: case 3: {
      uint32_t type = rd_u8(r), flags = rd_u8(r), len = rd_u16(r);
      size_t got;
      const uint8_t *body = rd_bytes(r, len, &got);
      if (code & 0x10) {
        /* a compressed DATA block of n bytes of fill */
        uint8_t hdr[21] = {0};
        memcpy(hdr, body, got < sizeof hdr ? got : sizeof hdr);
        uint32_t n = escp__be32(hdr + 16) % (ZMAX + 1);
        memset(g_zsrc, hdr[20], n);
        ZSTD_CCtx_reset(g_cctx, ZSTD_reset_session_and_parameters);
        ZSTD_CCtx_setParameter(g_cctx, ZSTD_c_compressionLevel, 1);
        ZSTD_CCtx_setParameter(g_cctx, ZSTD_c_contentSizeFlag, (code & 0x08) ? 0 : 1);
        size_t z;
        if (code & 0x08) {
          ZSTD_outBuffer ob = {g_zdst, ZSTD_compressBound(ZMAX), 0};
          ZSTD_inBuffer ib = {g_zsrc, n, 0};
          z = ZSTD_compressStream2(g_cctx, &ob, &ib, ZSTD_e_end);
          z = ZSTD_isError(z) ? 0 : ob.pos;
        } else {
          z = ZSTD_compress2(g_cctx, g_zdst, ZSTD_compressBound(ZMAX), g_zsrc, n);
          if (ZSTD_isError(z)) z = 0;
        }
        if (z > sizeof tmp - 16) z = 0;
        memcpy(tmp, hdr, 16);
        memcpy(tmp + 16, g_zdst, z);
        seal(s, ESCP_REC_DATA, flags | ESCP_F_COMPRESSED, tmp, (uint32_t)(16 + z), code & 7, r);
      } else {
        seal(s, type, flags, body, (uint32_t)got, code & 7, r);
      }
      break;
    }
    case 4: {
      size_t got;
      const uint8_t *raw = rd_bytes(r, rd_u8(r), &got);
      by_put(&s->out, raw, got);
      break;
    }
    case 5:
      seal(s, ESCP_REC_END, 0, NULL, 0, 0, r);
      break;
    default: {
      uint64_t id = rd_u8(r) % NFILES;
      uint64_t off = rd_u32(r);
      uint32_t len = rd_u16(r);
      uint8_t fill = rd_u8(r);
      if (len > sizeof tmp - 16) len = sizeof tmp - 16;
      escp__put64(tmp, id);
      escp__put64(tmp + 8, off);
      memset(tmp + 16, fill, len);
      seal(s, ESCP_REC_DATA, 0, tmp, 16 + len, 0, r);
      break;
    }
    }
  }
}

static void publish(escp_fdslot *tab, uint64_t id) {
  escp_fdslot *s = &tab[id & (TABCAP - 1)];
  s->size = FILE_SIZE[id];
  s->fd = g_fds[id];
  s->direct = 0;
  __atomic_store_n(&s->id_plus1, id + 1, __ATOMIC_RELEASE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  init_once();
  if (escp__crypto_init() != 0) abort();
  reader r = {data, size};
  uint8_t config = rd_u8(&r);
  int control = config & 1;
  uint32_t block = BLOCKS[(config >> 1) & 3];
  uint32_t stream = control ? 0 : 1;

  sender s;
  memset(&s, 0, sizeof s);
  s.stream = stream;
  s.seq = 1; /* after the HELLO */
  if (escp__dir_init(&s.keys[0], FUZZ_MASTER, FUZZ_SID, stream, 0, 1) ||
      escp__dir_init(&s.keys[1], FUZZ_MASTER, FUZZ_SID, stream + 1, 0, 1) ||
      escp__dir_init(&s.keys[2], FUZZ_MASTER, FUZZ_SID, stream, 1, 1))
    abort();
  build(&s, &r);

  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) abort();
  escp_conn *c = calloc(1, sizeof *c);
  if (!c) abort();
  c->fd = sv[0];
  c->stream = stream;
  c->nstreams = 2;
  c->role = 1;
  if (escp__dir_init(&c->rx, FUZZ_MASTER, FUZZ_SID, stream, 0, 0) != 0) abort();
  c->rx.seq = 1;
  peer w;
  peer_start(&w, sv[1], s.out.p, s.out.n);

  static uint8_t body[ESCP_MAX_CTRL_BODY];
  uint32_t meta[2];
  if (control) {
    uint32_t cap = ESCP_MAX_CTRL_BODY;
    for (int i = 0; i < 4096; i++) {
      int64_t n = escp_recv_record(c, body, cap, meta);
      if (n < 0) break;
      FUZZ_CHECK((uint64_t)n <= cap, "record body %lld over the capacity %u", (long long)n, cap);
      if (meta[0] == 0) break; /* clean EOF after END */
      FUZZ_CHECK(meta[0] >= ESCP_REC_HELLO && meta[0] <= ESCP_REC_END, "record type %u", meta[0]);
    }
  } else {
    escp_fdslot tab[TABCAP];
    memset(tab, 0, sizeof tab);
    int published[NFILES] = {1, 1, 1, 0}; /* file 3 is announced late: the "need" path */
    for (uint64_t i = 0; i < NFILES; i++)
      if (published[i]) publish(tab, i);
    volatile int32_t cancel = 0;
    escp_loop_opts o = {block, 0, &cancel};
    escp_counters ctr;
    memset(&ctr, 0, sizeof ctr);
    escp_done done[8];
    for (int i = 0; i < 4096; i++) {
      int32_t state = 0;
      uint64_t need = 0;
      int n = escp_recv_batch(c, tab, TABCAP, done, 8, &o, &ctr, &state, &need);
      if (n < 0) {
        /* a control record on a data stream stays readable (e.g. an ERROR's message) */
        if (n == ESCP_E_PROTO && c->pend) {
          int64_t m = escp_recv_record(c, body, ESCP_MAX_CTRL_BODY, meta);
          FUZZ_CHECK(m <= (int64_t)ESCP_MAX_CTRL_BODY, "kept record of %lld bytes", (long long)m);
        }
        break;
      }
      FUZZ_CHECK(n <= 8, "%d entries for 8", n);
      for (int k = 0; k < n; k++) {
        const escp_done *d = &done[k];
        FUZZ_CHECK(d->file_id < NFILES && published[d->file_id], "block for file %llu", (unsigned long long)d->file_id);
        FUZZ_CHECK(d->len <= block, "block of %u bytes over the block size %u", d->len, block);
        FUZZ_CHECK(d->offset <= FILE_SIZE[d->file_id] && d->len <= FILE_SIZE[d->file_id] - d->offset,
                   "block [%llu, +%u) outside file %llu of %llu bytes", (unsigned long long)d->offset, d->len,
                   (unsigned long long)d->file_id, (unsigned long long)FILE_SIZE[d->file_id]);
      }
      if (state == 1) {
        int64_t m = escp_recv_record(c, body, ESCP_MAX_CTRL_BODY, meta);
        (void)m;
        break;
      }
      if (state == 2) {
        if (need < NFILES && !published[need]) {
          published[need] = 1;
          publish(tab, need);
        } else {
          break; /* the main thread would call this a protocol violation */
        }
      }
    }
  }
  escp_conn_free(c); /* closes sv[0]: a peer still sending gets EPIPE */
  pthread_join(w.th, NULL);
  close(sv[1]);
  for (int i = 0; i < 3; i++) escp__dir_free(&s.keys[i]);
  free(s.out.p);
  return 0;
}
