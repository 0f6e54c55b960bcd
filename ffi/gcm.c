/*
 * gcm.c: AES-128-GCM for the records, from the fastest sound implementation this
 * host has.  Three are on offer:
 *   - OpenSSL's libcrypto, linked statically (always there);
 *   - intel-ipsec-mb's VAES/AVX-512 code, linked statically, on CPUs that have
 *     VAES, VPCLMULQDQ and AVX-512 (Ice Lake and later, Zen 4 and later): the
 *     sibling of the ISA-L crypto EScp uses, 12 GB/s a core here;
 *   - the system's libgcrypt (libgcrypt.so.20, which every Debian and Ubuntu
 *     system carries as a dependency of libsystemd0), loaded with dlopen so the
 *     library still needs only glibc and nothing LGPL is linked into it; its
 *     VAES/AVX2 code is the fastest where there is no AVX-512.
 * OpenSSL 3.0 has neither kind of VAES code.  The choice is measured, once per
 * process: each seals the same 128 KiB six times, in thread CPU time, and the
 * fastest serves every stream.  ESCP_GCM=openssl|libgcrypt|ipsec-mb forces one.
 *
 * All are the same cipher: ends that chose differently interoperate.
 */
#include "internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <intel-ipsec-mb.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

/* ---- libgcrypt, by dlopen (its ABI: gcrypt.h of 1.9/1.10) ---------------- */

typedef struct gcry_cipher_handle *gcry_hd;
enum { GCRY_CIPHER_AES128 = 7, GCRY_CIPHER_MODE_GCM = 9 };
enum { GCRYCTL_DISABLE_SECMEM = 37, GCRYCTL_INITIALIZATION_FINISHED = 38, GCRYCTL_INITIALIZATION_FINISHED_P = 40 };

static struct {
  const char *(*check_version)(const char *req);
  unsigned (*control)(int cmd, ...);
  unsigned (*open)(gcry_hd *h, int algo, int mode, unsigned flags);
  void (*close)(gcry_hd h);
  unsigned (*setkey)(gcry_hd h, const void *key, size_t len);
  unsigned (*setiv)(gcry_hd h, const void *iv, size_t len);
  unsigned (*authenticate)(gcry_hd h, const void *aad, size_t len);
  unsigned (*encrypt)(gcry_hd h, void *out, size_t outlen, const void *in, size_t inlen);
  unsigned (*decrypt)(gcry_hd h, void *out, size_t outlen, const void *in, size_t inlen);
  unsigned (*gettag)(gcry_hd h, void *tag, size_t len);
  unsigned (*checktag)(gcry_hd h, const void *tag, size_t len);
  const char *version;
} G;

/* 1.9 brought the VAES/VPCLMUL code; older ones are not worth measuring. */
static int gcrypt_try_load(void) {
  void *h = dlopen("libgcrypt.so.20", RTLD_NOW | RTLD_LOCAL);
  if (!h) return 0;
#define SYM(f, name) (*(void **)&G.f = dlsym(h, name))
  if (!SYM(check_version, "gcry_check_version") || !SYM(control, "gcry_control") ||
      !SYM(open, "gcry_cipher_open") || !SYM(close, "gcry_cipher_close") || !SYM(setkey, "gcry_cipher_setkey") ||
      !SYM(setiv, "gcry_cipher_setiv") || !SYM(authenticate, "gcry_cipher_authenticate") ||
      !SYM(encrypt, "gcry_cipher_encrypt") || !SYM(decrypt, "gcry_cipher_decrypt") ||
      !SYM(gettag, "gcry_cipher_gettag") || !SYM(checktag, "gcry_cipher_checktag")) {
    dlclose(h);
    return 0;
  }
#undef SYM
  G.version = G.check_version("1.9.0");
  if (!G.version) {
    dlclose(h);
    return 0;
  }
  /* Initialise it as an application would, unless someone in the process already has. */
  if (!G.control(GCRYCTL_INITIALIZATION_FINISHED_P)) {
    G.control(GCRYCTL_DISABLE_SECMEM, 0);
    G.control(GCRYCTL_INITIALIZATION_FINISHED, 0);
  }
  return 1; /* never dlclose'd: handles may live until exit */
}

static int g_gcrypt_ok;
static pthread_once_t g_gcrypt_once = PTHREAD_ONCE_INIT;
static void gcrypt_load_once(void) { g_gcrypt_ok = gcrypt_try_load(); }

/* Once a process: G's pointers are read by every stream while another thread may ask. */
static int gcrypt_load(void) {
  pthread_once(&g_gcrypt_once, gcrypt_load_once);
  return g_gcrypt_ok;
}

/* ---- intel-ipsec-mb, VAES/AVX-512 only ------------------------------------ */

/* Exported by libIPSec_MB 1.3 but not declared in its header.  Called directly rather
 * than through an IMB_MGR, whose table would link in every algorithm for every CPU
 * generation (12 MB): these pull in one 0.45 MB object.  Each call stores 0 in the
 * library's global imb_errno (set otherwise only for NULL arguments, which
 * gcm_seal_with and gcm_open_with refuse first), so the streams' threads racing on
 * that store all write the same value. */
void aes_gcm_precomp_128_vaes_avx512(struct gcm_key_data *key_data);
void aes_gcm_enc_128_vaes_avx512(const struct gcm_key_data *key_data, struct gcm_context_data *ctx, uint8_t *out,
                                 const uint8_t *in, uint64_t len, const uint8_t *iv, const uint8_t *aad,
                                 uint64_t aad_len, uint8_t *tag, uint64_t tag_len);
void aes_gcm_dec_128_vaes_avx512(const struct gcm_key_data *key_data, struct gcm_context_data *ctx, uint8_t *out,
                                 const uint8_t *in, uint64_t len, const uint8_t *iv, const uint8_t *aad,
                                 uint64_t aad_len, uint8_t *tag, uint64_t tag_len);

/* What intel-ipsec-mb itself asks of a CPU before it uses its VAES/AVX-512 code
 * (IMB_CPUFLAGS_AVX512_T2); GCC's checks include the OS saving the AVX-512 state. */
static int imb_cpu_ok(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512ifma") &&
         __builtin_cpu_supports("vaes") && __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("gfni") &&
         __builtin_cpu_supports("sha") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("bmi2");
}

/* ---- the three backends behind one interface ----------------------------- */

enum backend { B_OPENSSL, B_IMB, B_GCRYPT, B_COUNT };
static const char *const BACKEND_ENV[B_COUNT] = {"openssl", "ipsec-mb", "libgcrypt"};

struct escp_gcm {
  enum backend b;
  EVP_CIPHER_CTX *evp;
  gcry_hd hd;
  struct gcm_key_data *imb_key; /* 64-byte aligned: the AVX-512 code loads it whole */
  struct gcm_context_data imb_ctx;
};

static EVP_CIPHER *g_evp_gcm;
static enum backend g_use;
static int g_usable;
static char g_backend[96];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static int evp_seal(EVP_CIPHER_CTX *x, const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len, uint8_t *buf,
                    uint32_t len, uint8_t tag[16]) {
  int outl = 0;
  uint8_t fin[16];
  if (len > INT32_MAX || aad_len > INT32_MAX) return -EINVAL;
  if (EVP_CipherInit_ex(x, NULL, NULL, NULL, nonce, -1) != 1) return -EIO;
  if (aad_len && EVP_CipherUpdate(x, NULL, &outl, aad, (int)aad_len) != 1) return -EIO;
  if (len && EVP_CipherUpdate(x, buf, &outl, buf, (int)len) != 1) return -EIO;
  if (EVP_CipherFinal_ex(x, fin, &outl) != 1) return -EIO;
  if (EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_GET_TAG, 16, tag) != 1) return -EIO;
  return 0;
}

static int evp_open(EVP_CIPHER_CTX *x, const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len, uint8_t *buf,
                    uint32_t len, const uint8_t tag[16]) {
  int outl = 0;
  uint8_t fin[16];
  if (len > INT32_MAX || aad_len > INT32_MAX) return -EINVAL;
  if (EVP_CipherInit_ex(x, NULL, NULL, NULL, nonce, -1) != 1) return -EIO;
  if (EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, 16, (void *)tag) != 1) return -EIO;
  if (aad_len && EVP_CipherUpdate(x, NULL, &outl, aad, (int)aad_len) != 1) return -EIO;
  if (len && EVP_CipherUpdate(x, buf, &outl, buf, (int)len) != 1) return -EIO;
  return EVP_CipherFinal_ex(x, fin, &outl) == 1 ? 0 : ESCP_E_AUTH;
}

static escp_gcm *gcm_new_with(enum backend b, const uint8_t key[16], int encrypt) {
  escp_gcm *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  g->b = b;
  if (b == B_GCRYPT) {
    if (G.open(&g->hd, GCRY_CIPHER_AES128, GCRY_CIPHER_MODE_GCM, 0) == 0 && G.setkey(g->hd, key, 16) == 0) return g;
  } else if (b == B_IMB) {
    g->imb_key = aligned_alloc(64, (sizeof *g->imb_key + 63) & ~(size_t)63);
    if (g->imb_key) {
      aes_keyexp_128_enc_avx512(key, g->imb_key->expanded_keys);
      aes_gcm_precomp_128_vaes_avx512(g->imb_key);
      return g;
    }
  } else {
    g->evp = EVP_CIPHER_CTX_new();
    if (g->evp && EVP_CipherInit_ex(g->evp, g_evp_gcm, NULL, key, NULL, encrypt) == 1) return g;
  }
  escp__gcm_free(g);
  return NULL;
}

static int gcm_seal_with(escp_gcm *g, const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len, uint8_t *buf,
                         uint32_t len, uint8_t tag[16]) {
  switch (g->b) {
  case B_OPENSSL:
    return evp_seal(g->evp, nonce, aad, aad_len, buf, len, tag);
  case B_IMB:
    /* It returns without a word on a NULL pointer: refuse those here instead. */
    if ((len && !buf) || (aad_len && !aad)) return -EINVAL;
    aes_gcm_enc_128_vaes_avx512(g->imb_key, &g->imb_ctx, buf, buf, len, nonce, aad, aad_len, tag, 16);
    return 0;
  default:
    if (G.setiv(g->hd, nonce, 12) || (aad_len && G.authenticate(g->hd, aad, aad_len)) ||
        G.encrypt(g->hd, buf, len, NULL, 0) || G.gettag(g->hd, tag, 16))
      return -EIO;
    return 0;
  }
}

static int gcm_open_with(escp_gcm *g, const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len, uint8_t *buf,
                         uint32_t len, const uint8_t tag[16]) {
  switch (g->b) {
  case B_OPENSSL:
    return evp_open(g->evp, nonce, aad, aad_len, buf, len, tag);
  case B_IMB: {
    uint8_t want[16];
    if ((len && !buf) || (aad_len && !aad)) return -EINVAL;
    /* The complement of the tag received: a call that computed nothing never matches. */
    for (int i = 0; i < 16; i++) want[i] = (uint8_t)~tag[i];
    aes_gcm_dec_128_vaes_avx512(g->imb_key, &g->imb_ctx, buf, buf, len, nonce, aad, aad_len, want, 16);
    return CRYPTO_memcmp(want, tag, 16) == 0 ? 0 : ESCP_E_AUTH;
  }
  default:
    if (G.setiv(g->hd, nonce, 12) || (aad_len && G.authenticate(g->hd, aad, aad_len)) ||
        G.decrypt(g->hd, buf, len, NULL, 0))
      return -EIO;
    return G.checktag(g->hd, tag, 16) == 0 ? 0 : ESCP_E_AUTH;
  }
}

/* Thread CPU seconds one seal of `len` bytes takes: CPU time, not wall time, because
 * the choice is made while the stream workers boot on the same cores, and a
 * preemption must not count against whichever backend it happened to hit. */
static double seal_cpu_seconds(escp_gcm *g, uint8_t *buf, uint32_t len) {
  static const uint8_t nonce[12], aad[16];
  uint8_t tag[16];
  struct timespec a, b;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
  int rc = gcm_seal_with(g, nonce, aad, sizeof aad, buf, len, tag);
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
  return rc ? 1e9 : (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
}

/* The backend among `usable` (a bit each) that seals fastest here: the best of
 * several rounds each, interleaved so that a slow moment (frequency, a noisy
 * neighbour) falls on all of them. */
static enum backend fastest(int usable) {
  static const uint8_t key[16];
  const uint32_t len = 128 << 10;
  uint8_t *buf = malloc(len);
  escp_gcm *g[B_COUNT] = {0};
  double best[B_COUNT];
  enum backend pick = B_OPENSSL;
  for (int b = 0; b < B_COUNT; b++) {
    best[b] = 1e9;
    if (usable & (1 << b)) g[b] = gcm_new_with((enum backend)b, key, 1);
  }
  if (buf) {
    memset(buf, 0, len); /* first-touch page faults are nobody's cost */
    for (int i = 0; i < 6; i++)
      for (int b = 0; b < B_COUNT; b++) {
        double t = g[b] ? seal_cpu_seconds(g[b], buf, len) : 1e9;
        if (t < best[b]) best[b] = t;
      }
  }
  for (int b = 0; b < B_COUNT; b++) {
    if (g[b] && best[b] < best[pick]) pick = (enum backend)b;
    escp__gcm_free(g[b]);
  }
  if (buf) OPENSSL_cleanse(buf, len);
  free(buf);
  return pick;
}

/* The backends this host can run, a bit each; libgcrypt only when asked to look for it
 * (loading it is the test). Needs g_evp_gcm fetched. */
static int usable_backends(int with_gcrypt) {
  return (g_evp_gcm ? 1 << B_OPENSSL : 0) | (imb_cpu_ok() ? 1 << B_IMB : 0) |
         (with_gcrypt && gcrypt_load() ? 1 << B_GCRYPT : 0);
}

static void choose_once(void) {
  if (escp__crypto_init()) return;
  g_evp_gcm = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
  const char *force = getenv("ESCP_GCM");
  int forced = -1;
  for (int b = 0; b < B_COUNT; b++)
    if (force && strcmp(force, BACKEND_ENV[b]) == 0) forced = b;
  /* Loaded only when it may be used: forcing another keeps the process free of it. */
  int usable = usable_backends(forced < 0 || forced == B_GCRYPT);
  g_usable = usable != 0;
  if (forced >= 0 && (usable & (1 << forced))) g_use = (enum backend)forced;
  else if (usable & (usable - 1)) g_use = fastest(usable);
  else if (usable) g_use = (enum backend)__builtin_ctz((unsigned)usable);
  if (g_use == B_GCRYPT) snprintf(g_backend, sizeof g_backend, "libgcrypt %s", G.version);
  else if (g_use == B_IMB) snprintf(g_backend, sizeof g_backend, "ipsec-mb %s", IMB_VERSION_STR);
  else snprintf(g_backend, sizeof g_backend, "OpenSSL %s", OpenSSL_version(OPENSSL_VERSION_STRING));
}

static void *choose_in_background(void *unused) {
  (void)unused;
  pthread_once(&g_once, choose_once);
  return NULL;
}

/* The choice costs a few ms (OpenSSL's and libgcrypt's start-up, then the timing),
 * which the server would otherwise spend between saying `ready` and accepting the
 * streams. Started here, it runs on another core meanwhile; whoever needs it first
 * waits for it (pthread_once), or makes it, if the thread could not be started. */
ESCP_API void escp_gcm_prepare(void) {
  pthread_attr_t a;
  pthread_t t;
  if (pthread_attr_init(&a) != 0) return;
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  pthread_create(&t, &a, choose_in_background, NULL);
  pthread_attr_destroy(&a);
}

ESCP_API const char *escp_gcm_backend(void) {
  pthread_once(&g_once, choose_once);
  return g_backend;
}

static char g_offered[64];
static pthread_once_t g_offered_once = PTHREAD_ONCE_INIT;

static void list_offered(void) {
  pthread_once(&g_once, choose_once); /* g_evp_gcm */
  int usable = usable_backends(1);
  for (int b = 0; b < B_COUNT; b++)
    if (usable & (1 << b)) snprintf(g_offered + strlen(g_offered), sizeof g_offered - strlen(g_offered), "%s%s",
                            g_offered[0] ? " " : "", BACKEND_ENV[b]);
}

ESCP_API const char *escp_gcm_offered(void) {
  pthread_once(&g_offered_once, list_offered);
  return g_offered;
}

escp_gcm *escp__gcm_new(const uint8_t key[16], int encrypt) {
  pthread_once(&g_once, choose_once);
  if (!g_usable) return NULL;
  return gcm_new_with(g_use, key, encrypt);
}

void escp__gcm_free(escp_gcm *g) {
  if (!g) return;
  if (g->evp) EVP_CIPHER_CTX_free(g->evp); /* both cleanse their key schedules */
  if (g->hd) G.close(g->hd);
  if (g->imb_key) OPENSSL_cleanse(g->imb_key, sizeof *g->imb_key);
  free(g->imb_key);
  OPENSSL_cleanse(&g->imb_ctx, sizeof g->imb_ctx);
  free(g);
}

int escp__gcm_seal(escp_gcm *g, const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len, uint8_t *buf,
                   uint32_t len, uint8_t tag[16]) {
  return gcm_seal_with(g, nonce, aad, aad_len, buf, len, tag);
}

int escp__gcm_open(escp_gcm *g, const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len, uint8_t *buf,
                   uint32_t len, const uint8_t tag[16]) {
  int rc = gcm_open_with(g, nonce, aad, aad_len, buf, len, tag);
  if (rc == ESCP_E_AUTH) OPENSSL_cleanse(buf, len); /* nobody gets to read an unauthenticated body */
  return rc;
}
