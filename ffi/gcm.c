/*
 * gcm.c: AES-128-GCM for the records, from the fastest sound implementation this
 * host has.  Two are on offer:
 *   - OpenSSL's libcrypto, linked statically (always there);
 *   - the system's libgcrypt (libgcrypt.so.20, which every Debian and Ubuntu
 *     system carries as a dependency of libsystemd0), loaded with dlopen so the
 *     library still needs only glibc and nothing LGPL is linked into it.
 * On this project's CPUs (AVX2 + VAES, no AVX-512) libgcrypt 1.10's VAES code is
 * 25-40 % faster than OpenSSL 3.0's AES-NI kernel (bench/crypto.ts); on AVX-512
 * hosts OpenSSL has its own VAES path.  So the choice is measured, once per
 * process: each seals the same 128 KiB six times, in thread CPU time, and the
 * faster one serves every stream.  ESCP_GCM=openssl or ESCP_GCM=libgcrypt forces one.
 *
 * Both are the same cipher: ends that chose differently interoperate.
 */
#include "internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
static int gcrypt_load(void) {
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

/* ---- the two backends behind one interface ------------------------------ */

struct escp_gcm {
  int gcrypt;
  EVP_CIPHER_CTX *evp;
  gcry_hd hd;
};

static EVP_CIPHER *g_evp_gcm;
static int g_use_gcrypt;
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

static escp_gcm *gcm_new_with(int gcrypt, const uint8_t key[16], int encrypt) {
  escp_gcm *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  g->gcrypt = gcrypt;
  if (gcrypt) {
    if (G.open(&g->hd, GCRY_CIPHER_AES128, GCRY_CIPHER_MODE_GCM, 0) == 0 && G.setkey(g->hd, key, 16) == 0) return g;
  } else {
    g->evp = EVP_CIPHER_CTX_new();
    if (g->evp && EVP_CipherInit_ex(g->evp, g_evp_gcm, NULL, key, NULL, encrypt) == 1) return g;
  }
  escp__gcm_free(g);
  return NULL;
}

static int gcm_seal_with(escp_gcm *g, const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len, uint8_t *buf,
                         uint32_t len, uint8_t tag[16]) {
  if (!g->gcrypt) return evp_seal(g->evp, nonce, aad, aad_len, buf, len, tag);
  if (G.setiv(g->hd, nonce, 12) || (aad_len && G.authenticate(g->hd, aad, aad_len)) ||
      G.encrypt(g->hd, buf, len, NULL, 0) || G.gettag(g->hd, tag, 16))
    return -EIO;
  return 0;
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

/* True when libgcrypt seals faster than OpenSSL here: the best of several rounds
 * each, the two interleaved so that a slow moment (frequency, a noisy neighbour)
 * falls on both. */
static int gcrypt_is_faster(void) {
  static const uint8_t key[16];
  const uint32_t len = 128 << 10;
  uint8_t *buf = malloc(len);
  escp_gcm *o = gcm_new_with(0, key, 1), *g = gcm_new_with(1, key, 1);
  double best_o = 1e9, best_g = 1e9;
  if (buf && o && g) {
    memset(buf, 0, len); /* first-touch page faults are nobody's cost */
    for (int i = 0; i < 6; i++) {
      double to = seal_cpu_seconds(o, buf, len), tg = seal_cpu_seconds(g, buf, len);
      if (to < best_o) best_o = to;
      if (tg < best_g) best_g = tg;
    }
  }
  escp__gcm_free(o);
  escp__gcm_free(g);
  if (buf) OPENSSL_cleanse(buf, len);
  free(buf);
  return best_g < best_o;
}

static void choose_once(void) {
  if (escp__crypto_init()) return;
  g_evp_gcm = EVP_CIPHER_fetch(NULL, "AES-128-GCM", NULL);
  const char *force = getenv("ESCP_GCM");
  int want_gcrypt = !force || strcmp(force, "openssl") != 0;
  int have_gcrypt = want_gcrypt && gcrypt_load();
  if (have_gcrypt && g_evp_gcm && !(force && strcmp(force, "libgcrypt") == 0)) have_gcrypt = gcrypt_is_faster();
  g_use_gcrypt = have_gcrypt;
  if (g_use_gcrypt) snprintf(g_backend, sizeof g_backend, "libgcrypt %s", G.version);
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

escp_gcm *escp__gcm_new(const uint8_t key[16], int encrypt) {
  pthread_once(&g_once, choose_once);
  if (!g_use_gcrypt && !g_evp_gcm) return NULL;
  return gcm_new_with(g_use_gcrypt, key, encrypt);
}

void escp__gcm_free(escp_gcm *g) {
  if (!g) return;
  if (g->evp) EVP_CIPHER_CTX_free(g->evp); /* both cleanse their key schedules */
  if (g->hd) G.close(g->hd);
  free(g);
}

int escp__gcm_seal(escp_gcm *g, const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len, uint8_t *buf,
                   uint32_t len, uint8_t tag[16]) {
  return gcm_seal_with(g, nonce, aad, aad_len, buf, len, tag);
}

int escp__gcm_open(escp_gcm *g, const uint8_t nonce[12], const uint8_t *aad, uint32_t aad_len, uint8_t *buf,
                   uint32_t len, const uint8_t tag[16]) {
  int rc;
  if (!g->gcrypt) {
    rc = evp_open(g->evp, nonce, aad, aad_len, buf, len, tag);
  } else if (G.setiv(g->hd, nonce, 12) || (aad_len && G.authenticate(g->hd, aad, aad_len)) ||
             G.decrypt(g->hd, buf, len, NULL, 0)) {
    rc = -EIO;
  } else {
    rc = G.checktag(g->hd, tag, 16) == 0 ? 0 : ESCP_E_AUTH;
  }
  if (rc == ESCP_E_AUTH) OPENSSL_cleanse(buf, len); /* nobody gets to read an unauthenticated body */
  return rc;
}
