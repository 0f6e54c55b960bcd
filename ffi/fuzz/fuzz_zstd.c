/*
 * Fuzz harness: bounded zstd decompression (ffi/compress.c), the step that
 * turns a few authenticated bytes into a block (DATA) or a file list (FILES).
 *
 *   input = cap u16 (output capacity, 0..65535), then a zstd frame (or anything)
 *
 * Invariants: escp_zstd_decompress never reports more than cap bytes, and
 * never writes past them (ASan, and a canary after the buffer); the block
 * path (one frame, exactly) agrees; whatever compresses decompresses back to
 * the same bytes.
 */
#include "common.h"

#include <zstd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  reader r = {data, size};
  uint32_t cap = rd_u16(&r);
  size_t n;
  const uint8_t *src = rd_bytes(&r, size, &n);
  uint8_t *dst = malloc((size_t)cap + 64);
  if (!dst) abort();
  memset(dst + cap, 0xa5, 64);
  int64_t got = escp_zstd_decompress(src, n, dst, cap);
  FUZZ_CHECK(got <= (int64_t)cap, "%lld bytes out of a %u-byte buffer", (long long)got, cap);
  for (int i = 0; i < 64; i++) FUZZ_CHECK(dst[cap + i] == 0xa5, "wrote past the buffer at +%d", i);

  static ZSTD_DCtx *dctx;
  memset(dst + cap, 0xa5, 64);
  int64_t one = escp__zdecompress(&dctx, src, n, dst, cap);
  FUZZ_CHECK(one <= (int64_t)cap, "block path: %lld bytes out of %u", (long long)one, cap);
  for (int i = 0; i < 64; i++) FUZZ_CHECK(dst[cap + i] == 0xa5, "block path wrote past the buffer at +%d", i);
  if (one >= 0) FUZZ_CHECK(got == one, "one frame gave %lld, the helper %lld", (long long)one, (long long)got);

  /* round trip of the input itself */
  size_t zcap = ZSTD_compressBound(n);
  uint8_t *z = malloc(zcap + 1), *back = malloc(n + 1);
  if (!z || !back) abort();
  int64_t zn = escp_zstd_compress(src, n, z, zcap, 1);
  FUZZ_CHECK(zn > 0, "compress failed: %lld", (long long)zn);
  int64_t bn = escp_zstd_decompress(z, (uint64_t)zn, back, n);
  FUZZ_CHECK(bn == (int64_t)n && (n == 0 || memcmp(back, src, n) == 0), "round trip: %lld of %zu bytes", (long long)bn, n);
  free(z);
  free(back);
  free(dst);
  return 0;
}
