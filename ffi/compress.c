/*
 * compress.c: zstd block compression for the fused loops (reusable contexts) and
 * one-shot helpers for FILES batches.  Decompression is always bounded by the
 * caller's capacity: a frame that would expand beyond it is an error, never an
 * allocation.
 */
#include "internal.h"

#include <errno.h>
#include <zstd.h>
#include <zstd_errors.h>

size_t escp__zbound(size_t len) { return ZSTD_compressBound(len); }

size_t escp__zcompress(ZSTD_CCtx **cctx, int *cur_level, int level, const void *src, size_t len, void *dst,
                       size_t cap) {
  if (!*cctx) {
    *cctx = ZSTD_createCCtx();
    if (!*cctx) return 0;
    *cur_level = 0;
  }
  if (*cur_level != level) {
    ZSTD_CCtx_reset(*cctx, ZSTD_reset_session_and_parameters);
    ZSTD_CCtx_setParameter(*cctx, ZSTD_c_compressionLevel, level);
    /* The receiver knows the block length; the frame need not repeat it, but keeping
     * the content size lets the receiver reject an oversized frame up front. */
    ZSTD_CCtx_setParameter(*cctx, ZSTD_c_contentSizeFlag, 1);
    ZSTD_CCtx_setParameter(*cctx, ZSTD_c_checksumFlag, 0);
    *cur_level = level;
  }
  size_t r = ZSTD_compress2(*cctx, dst, cap, src, len);
  if (ZSTD_isError(r)) return 0;
  return r;
}

static int64_t zdecompress(ZSTD_DCtx **dctx, const void *src, size_t len, void *dst, size_t cap, int single) {
  if (!*dctx) {
    *dctx = ZSTD_createDCtx();
    if (!*dctx) return -ENOMEM;
  }
  unsigned long long fcs = ZSTD_getFrameContentSize(src, len);
  if (fcs == ZSTD_CONTENTSIZE_ERROR || (fcs != ZSTD_CONTENTSIZE_UNKNOWN && fcs > cap)) return ESCP_E_DECOMP;
  /* exactly one frame: the compressed size must be the whole payload */
  if (single) {
    size_t fsz = ZSTD_findFrameCompressedSize(src, len);
    if (ZSTD_isError(fsz) || fsz != len) return ESCP_E_DECOMP;
  }
  size_t r = ZSTD_decompressDCtx(*dctx, dst, cap, src, len);
  if (ZSTD_isError(r)) return ESCP_E_DECOMP;
  return (int64_t)r;
}

int64_t escp__zdecompress(ZSTD_DCtx **dctx, const void *src, size_t len, void *dst, size_t cap) {
  return zdecompress(dctx, src, len, dst, cap, 1);
}

void escp__zfree(ZSTD_CCtx *cctx, ZSTD_DCtx *dctx) {
  if (cctx) ZSTD_freeCCtx(cctx);
  if (dctx) ZSTD_freeDCtx(dctx);
}

ESCP_API int64_t escp_zstd_compress(const void *src, uint64_t len, void *dst, uint64_t dst_cap, int level) {
  if (!src && len) return -EINVAL;
  size_t r = ZSTD_compress(dst, (size_t)dst_cap, src, (size_t)len, level);
  if (ZSTD_isError(r)) {
    if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall)
      return escp__err(-ENOBUFS, "zstd: output buffer of %llu bytes too small", (unsigned long long)dst_cap);
    return escp__err(-EINVAL, "zstd: %s", ZSTD_getErrorName(r));
  }
  return (int64_t)r;
}

ESCP_API int64_t escp_zstd_decompress(const void *src, uint64_t len, void *dst, uint64_t dst_cap) {
  ZSTD_DCtx *d = NULL;
  int64_t r = zdecompress(&d, src, (size_t)len, dst, (size_t)dst_cap, 0);
  if (d) ZSTD_freeDCtx(d);
  if (r < 0) return escp__err((int)r, "zstd: frame invalid or larger than %llu bytes", (unsigned long long)dst_cap);
  return r;
}
