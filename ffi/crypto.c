/*
 * crypto.c: records (AES-128-GCM from gcm.c, one key schedule per direction set once,
 * only the IV changed per record), HKDF-SHA256 (EVP_KDF), XXH3-128 digests
 * (libxxhash), and the library's error reporting.
 */
#include "internal.h"
#include <sys/prctl.h>
#include <sys/resource.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <xxhash.h>

/* ---- errors ------------------------------------------------------------ */

static __thread char g_detail[512];
static __thread char g_strerr[128];

int escp__err(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_detail, sizeof g_detail, fmt, ap);
  va_end(ap);
  return code;
}

int escp__errno(const char *fmt, ...) {
  int e = errno ? errno : EIO;
  char what[384];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  char eb[128];
  const char *s = strerror_r(e, eb, sizeof eb);
  snprintf(g_detail, sizeof g_detail, "%s: %s", what, s);
  return -e;
}

ESCP_API const char *escp_strerror(int code) {
  switch (code) {
  case ESCP_E_AUTH: return "record failed authentication (altered, spliced or wrong key)";
  case ESCP_E_SEQ: return "record out of sequence (dropped, replayed or reordered)";
  case ESCP_E_TRUNC: return "stream ended before its END record (truncated)";
  case ESCP_E_PROTO: return "protocol violation (malformed record, length over the limit or bad preamble)";
  case ESCP_E_NEEDFILE: return "data for a file that is not open yet";
  case ESCP_E_DECOMP: return "compressed block is invalid or larger than the block size";
  case ESCP_E_TIMEOUT: return "timed out";
  case ESCP_E_CHANGED: return "source file changed while it was read (shorter than announced)";
  case ESCP_E_RANGE: return "data outside the announced file size";
  case ESCP_E_CANCEL: return "cancelled";
  case ESCP_E_VERSION: return "peer speaks another protocol version";
  case ESCP_E_BUSY: return "another escp is copying to this file now (its temporary file is locked)";
  case ESCP_E_NOTOURS: return "its temporary file is another user's, or has other links, and cannot be removed: not resumed";
  case ESCP_E_KEPT: return "its temporary name is taken by another user's file, or by one made during this copy, which stays";
  case ESCP_E_INPLACE_BUSY: return "write-locked by another process, most likely an escp copying into it now: left as it is";
  case ESCP_E_PART_GONE: return "its temporary file was removed during the copy";
  case ESCP_E_PART_REPLACED: return "its temporary file was replaced by another file during the copy";
  case ESCP_E_DIR_GONE: return "its directory was removed during the copy";
  case ESCP_E_TARGET_GONE: return "it was removed or replaced during the copy";
  default: break;
  }
  if (code >= 0) return "success";
  if (code > -10000) {
    const char *s = strerror_r(-code, g_strerr, sizeof g_strerr);
    if (s != g_strerr) snprintf(g_strerr, sizeof g_strerr, "%s", s);
    return g_strerr;
  }
  snprintf(g_strerr, sizeof g_strerr, "unknown escp error %d", code);
  return g_strerr;
}

ESCP_API int escp_last_error(char *buf, int cap) {
  int n = (int)strlen(g_detail);
  if (buf && cap > 0) {
    int k = n < cap - 1 ? n : cap - 1;
    memcpy(buf, g_detail, (size_t)k);
    buf[k] = 0;
  }
  return n;
}

/* ---- OpenSSL setup ----------------------------------------------------- */

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static EVP_KDF *g_hkdf;
static int g_init_rc;

static void crypto_init_once(void) {
  /* No config file (a system openssl.cnf could pull in shared-library providers that
   * clash with the static libcrypto) and no atexit cleanup (worker threads may still be
   * inside a call while the process exits). */
  if (!OPENSSL_init_crypto(OPENSSL_INIT_NO_LOAD_CONFIG | OPENSSL_INIT_NO_ATEXIT, NULL)) {
    g_init_rc = escp__err(-EIO, "OpenSSL initialisation failed");
    return;
  }
  g_hkdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
  if (!g_hkdf) g_init_rc = escp__err(-EIO, "OpenSSL lacks HKDF");
}

int escp__crypto_init(void) {
  pthread_once(&g_once, crypto_init_once);
  return g_init_rc;
}

/* ---- HKDF -------------------------------------------------------------- */

ESCP_API int escp_hkdf_sha256(const uint8_t *ikm, uint32_t ikm_len, const uint8_t *salt, uint32_t salt_len,
                              const uint8_t *info, uint32_t info_len, uint8_t *out, uint32_t out_len) {
  int rc = escp__crypto_init();
  if (rc) return rc;
  if (!out || out_len == 0 || out_len > 255u * 32u) return escp__err(-EINVAL, "hkdf: output length %u", out_len);
  static const uint8_t empty[1] = {0};
  EVP_KDF_CTX *k = EVP_KDF_CTX_new(g_hkdf);
  if (!k) return escp__err(-ENOMEM, "hkdf: out of memory");
  OSSL_PARAM params[5], *p = params;
  *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
  *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)(ikm_len ? ikm : empty), ikm_len);
  if (salt_len) *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, salt_len);
  if (info_len) *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, info_len);
  *p = OSSL_PARAM_construct_end();
  int ok = EVP_KDF_derive(k, out, out_len, params);
  EVP_KDF_CTX_free(k);
  if (ok != 1) return escp__err(-EINVAL, "hkdf: derivation failed");
  return 0;
}

ESCP_API int escp_derive_key(const uint8_t master[32], const uint8_t sid[16], uint32_t stream, uint32_t dir,
                             uint8_t key_out[16]) {
  uint8_t info[15];
  memcpy(info, "escp/1 key", 10);
  escp__put32(info + 10, stream);
  info[14] = (uint8_t)dir;
  return escp_hkdf_sha256(master, 32, sid, 16, info, sizeof info, key_out, 16);
}

/* ---- AES-128-GCM ------------------------------------------------------- */

ESCP_API int escp_gcm_seal(const uint8_t key[16], const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len,
                           uint8_t *buf, uint32_t len, uint8_t tag[16]) {
  escp_gcm *x = escp__gcm_new(key, 1);
  if (!x) return escp__err(-EIO, "gcm: cannot set up AES-128-GCM");
  int rc = escp__gcm_seal(x, nonce, aad, aad_len, buf, len, tag);
  escp__gcm_free(x);
  return rc ? escp__err(rc, "gcm: seal failed") : 0;
}

ESCP_API int escp_gcm_open(const uint8_t key[16], const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len,
                           uint8_t *buf, uint32_t len, const uint8_t tag[16]) {
  escp_gcm *x = escp__gcm_new(key, 0);
  if (!x) return escp__err(-EIO, "gcm: cannot set up AES-128-GCM");
  int rc = escp__gcm_open(x, nonce, aad, aad_len, buf, len, tag);
  escp__gcm_free(x);
  if (rc == ESCP_E_AUTH) return escp__err(rc, "gcm: tag did not verify");
  return rc ? escp__err(rc, "gcm: open failed") : 0;
}

int escp__dir_init(escp_dir *d, const uint8_t master[32], const uint8_t sid[16], uint32_t stream, uint32_t dir,
                   int encrypt) {
  uint8_t key[16];
  int rc = escp_derive_key(master, sid, stream, dir, key);
  if (rc) return rc;
  d->gcm = escp__gcm_new(key, encrypt);
  OPENSSL_cleanse(key, sizeof key);
  if (!d->gcm) return escp__err(-ENOMEM, "stream %u: cannot set up AES-128-GCM", stream);
  d->prefix = stream * 2 + dir;
  d->seq = 0;
  return 0;
}

void escp__dir_free(escp_dir *d) {
  escp__gcm_free(d->gcm); /* cleanses the key schedule */
  d->gcm = NULL;
}

void escp__put_hdr(uint8_t hdr[16], uint32_t type, uint32_t flags, uint32_t len, uint64_t seq) {
  hdr[0] = (uint8_t)type;
  hdr[1] = (uint8_t)flags;
  hdr[2] = hdr[3] = 0;
  escp__put32(hdr + 4, len);
  escp__put64(hdr + 8, seq);
}

static void make_nonce(uint8_t nonce[12], uint32_t prefix, uint64_t seq) {
  escp__put32(nonce, prefix);
  escp__put64(nonce + 4, seq);
}

int escp__seal(escp_dir *d, const uint8_t hdr[16], uint8_t *body, uint32_t len, uint8_t tag[16]) {
  uint8_t nonce[12];
  make_nonce(nonce, d->prefix, escp__be64(hdr + 8));
  int rc = escp__gcm_seal(d->gcm, nonce, hdr, ESCP_HDR_LEN, body, len, tag);
  return rc ? escp__err(rc, "AES-GCM seal failed") : 0;
}

int escp__open(escp_dir *d, const uint8_t hdr[16], uint8_t *body, uint32_t len, const uint8_t tag[16]) {
  uint8_t nonce[12];
  make_nonce(nonce, d->prefix, escp__be64(hdr + 8));
  return escp__gcm_open(d->gcm, nonce, hdr, ESCP_HDR_LEN, body, len, tag);
}

/* ---- XXH3-128 ---------------------------------------------------------- */
/* libxxhash.a is built for SSE2; on CPUs with AVX2 an inlined AVX2 build of the same
 * code (end of this file) is 2-3x faster.  Both give identical digests. */

static void xxh128_avx2(const void *buf, size_t len, uint8_t out[16]);
static void *xst_new_avx2(void);
static void xst_update_avx2(void *st, const void *buf, size_t len);
static void xst_final_avx2(void *st, uint8_t out[16]);

static int g_avx2 = -1;
static int use_avx2(void) {
  int v = __atomic_load_n(&g_avx2, __ATOMIC_RELAXED);
  if (v < 0) {
    __builtin_cpu_init();
    v = __builtin_cpu_supports("avx2") ? 1 : 0;
    if (getenv("ESCP_NO_AVX2")) v = 0;
    __atomic_store_n(&g_avx2, v, __ATOMIC_RELAXED);
  }
  return v;
}

void escp__hash128(const void *buf, size_t len, uint8_t out[16]) {
  if (use_avx2()) {
    xxh128_avx2(buf, len, out);
    return;
  }
  XXH128_hash_t h = XXH3_128bits(buf, len);
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h); /* big-endian: high64 then low64 */
  memcpy(out, c.digest, 16);
}

ESCP_API void escp_xxh128(const void *buf, uint64_t len, uint8_t out[16]) {
  escp__hash128(buf, (size_t)len, out);
}

ESCP_API void *escp_digest_new(void) {
  if (use_avx2()) return xst_new_avx2();
  XXH3_state_t *s = XXH3_createState();
  if (s) XXH3_128bits_reset(s);
  return s;
}

ESCP_API void escp_digest_update(void *state, const void *buf, uint64_t len) {
  if (!state || !len) return;
  if (use_avx2()) xst_update_avx2(state, buf, (size_t)len);
  else XXH3_128bits_update((XXH3_state_t *)state, buf, (size_t)len);
}

ESCP_API void escp_digest_final(void *state, uint8_t out[16]) {
  if (!state) {
    memset(out, 0, 16);
    return;
  }
  if (use_avx2()) {
    xst_final_avx2(state, out);
    return;
  }
  XXH128_hash_t h = XXH3_128bits_digest((XXH3_state_t *)state);
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  memcpy(out, c.digest, 16);
  XXH3_freeState((XXH3_state_t *)state);
}

/* ---- AVX2 build of XXH3 (static, renamed XXH_INLINE_*; keep this last) --- */
#pragma GCC push_options
#pragma GCC target("avx2")
#define XXH_INLINE_ALL
#define XXH_VECTOR 2 /* XXH_AVX2 */
#include <xxhash.h>

static void xxh128_avx2(const void *buf, size_t len, uint8_t out[16]) {
  XXH128_hash_t h = XXH3_128bits(buf, len);
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  memcpy(out, c.digest, 16);
}

static void *xst_new_avx2(void) {
  XXH3_state_t *s = XXH3_createState();
  if (s) XXH3_128bits_reset(s);
  return s;
}

static void xst_update_avx2(void *st, const void *buf, size_t len) {
  XXH3_128bits_update((XXH3_state_t *)st, buf, len);
}

static void xst_final_avx2(void *st, uint8_t out[16]) {
  XXH128_hash_t h = XXH3_128bits_digest((XXH3_state_t *)st);
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  memcpy(out, c.digest, 16);
  XXH3_freeState((XXH3_state_t *)st);
}
#pragma GCC pop_options

/* Session keys live in this process's memory: keep them out of core dumps and
 * away from other processes of the same user (ptrace, /proc/PID/mem), as
 * ssh-agent does. */
ESCP_API int escp_protect_secrets(void) {
  struct rlimit none = {0, 0};
  if (setrlimit(RLIMIT_CORE, &none) != 0) return escp__errno("setrlimit(RLIMIT_CORE)");
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return escp__errno("prctl(PR_SET_DUMPABLE)");
  return 0;
}
