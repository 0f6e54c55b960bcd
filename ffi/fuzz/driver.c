/*
 * A stand-in for libFuzzer's main() where clang's libFuzzer is not installed
 * (gcc builds, e.g. CI): a plain random-mutation fuzzer without coverage
 * feedback, with the libFuzzer flags escp's scripts use, so the same command
 * line works with either build.
 *
 *   fuzz_x [-runs=N] [-max_total_time=S] [-max_len=N] [-seed=N]
 *          [-artifact_prefix=DIR/] [CORPUS_DIR | FILE]...
 *
 * Files named on the command line are run once each (regression mode, as in
 * libFuzzer) and nothing else happens.  Otherwise inputs are mutated from the
 * corpus directories' files (bit flips, byte sets, interesting values,
 * inserts, deletes, duplicated ranges, splices) until -runs or
 * -max_total_time.  A crash (ASan report, abort, segfault) leaves the input
 * in <artifact_prefix>crash-<fnv64> before the process dies.
 */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<sanitizer/common_interface_defs.h>)
#include <sanitizer/common_interface_defs.h>
#define HAVE_SANITIZER 1
#endif
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t *g_cur;
static size_t g_cur_len;
static const char *g_prefix = "";

static uint64_t fnv64(const uint8_t *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

static void save_crash(void) {
  static int saved;
  if (saved || !g_cur) return;
  saved = 1;
  char path[4096];
  snprintf(path, sizeof path, "%scrash-%016llx", g_prefix, (unsigned long long)fnv64(g_cur, g_cur_len));
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    ssize_t w = write(fd, g_cur, g_cur_len);
    (void)w;
    close(fd);
    static const char msg[] = "driver: crashing input saved as ";
    w = write(2, msg, sizeof msg - 1);
    w = write(2, path, strlen(path));
    w = write(2, "\n", 1);
  }
}

static void on_signal(int sig) {
  save_crash();
  signal(sig, SIG_DFL);
  raise(sig);
}

static uint64_t g_rng;
static uint64_t rnd(void) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return g_rng;
}
static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

typedef struct {
  uint8_t *p;
  size_t n;
} input;

static input *g_corpus;
static size_t g_ncorpus, g_capcorpus;

static void add(const uint8_t *p, size_t n) {
  if (g_ncorpus == g_capcorpus) {
    g_capcorpus = g_capcorpus ? g_capcorpus * 2 : 64;
    g_corpus = realloc(g_corpus, g_capcorpus * sizeof *g_corpus);
    if (!g_corpus) abort();
  }
  uint8_t *c = malloc(n ? n : 1);
  if (!c) abort();
  memcpy(c, p, n);
  g_corpus[g_ncorpus++] = (input){c, n};
}

static int read_file(const char *path, uint8_t **out, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  size_t cap = 4096, len = 0;
  uint8_t *b = malloc(cap);
  size_t r;
  while (b && (r = fread(b + len, 1, cap - len, f)) > 0) {
    len += r;
    if (len == cap) b = realloc(b, cap *= 2);
  }
  fclose(f);
  if (!b) return -1;
  *out = b;
  *n = len;
  return 0;
}

static void run_one(const uint8_t *p, size_t n) {
  g_cur = p;
  g_cur_len = n;
  LLVMFuzzerTestOneInput(p, n);
  g_cur = NULL;
}

static size_t mutate(uint8_t *buf, size_t n, size_t max) {
  static const int64_t interesting[] = {0, 1, -1, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000,
                                        0x7fffffff, 0x80000000ll, 0xffffffffll, 16, 32, 4096, 65536};
  int rounds = 1 + (int)below(4);
  for (int k = 0; k < rounds; k++) {
    switch (below(9)) {
    case 0: /* flip a bit */
      if (n) buf[below(n)] ^= (uint8_t)(1u << below(8));
      break;
    case 1: /* set a byte */
      if (n) buf[below(n)] = (uint8_t)rnd();
      break;
    case 2: { /* an interesting value, big-endian, 1/2/4 bytes */
      size_t w = (size_t)1 << below(3);
      if (n >= w) {
        size_t at = below(n - w + 1);
        uint64_t v = (uint64_t)interesting[below(sizeof interesting / sizeof *interesting)];
        for (size_t i = 0; i < w; i++) buf[at + i] = (uint8_t)(v >> (8 * (w - 1 - i)));
      }
      break;
    }
    case 3: { /* insert random bytes */
      size_t m = 1 + below(16);
      if (n + m > max) break;
      size_t at = below(n + 1);
      memmove(buf + at + m, buf + at, n - at);
      for (size_t i = 0; i < m; i++) buf[at + i] = (uint8_t)rnd();
      n += m;
      break;
    }
    case 4: { /* delete a range */
      if (!n) break;
      size_t at = below(n), m = 1 + below(n - at < 32 ? n - at : 32);
      memmove(buf + at, buf + at + m, n - at - m);
      n -= m;
      break;
    }
    case 5: { /* duplicate a range */
      if (!n) break;
      size_t at = below(n), m = 1 + below(n - at < 64 ? n - at : 64);
      if (n + m > max) break;
      memmove(buf + at + m, buf + at, n - at);
      n += m;
      break;
    }
    case 6: { /* splice in part of another corpus input */
      if (!g_ncorpus) break;
      input *o = &g_corpus[below(g_ncorpus)];
      if (!o->n) break;
      size_t from = below(o->n), m = 1 + below(o->n - from);
      size_t at = below(n + 1);
      if (at + m > max) m = max - at;
      if (at + m > n) n = at + m;
      memcpy(buf + at, o->p + from, m);
      break;
    }
    case 7: /* truncate */
      if (n) n = below(n + 1);
      break;
    default: /* add a byte at the end */
      if (n < max) buf[n++] = (uint8_t)rnd();
      break;
    }
  }
  return n;
}

int main(int argc, char **argv) {
  long runs = -1, max_time = 0, max_len = 4096;
  uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
  const char *paths[256];
  int npaths = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strncmp(a, "-runs=", 6)) runs = atol(a + 6);
    else if (!strncmp(a, "-max_total_time=", 16)) max_time = atol(a + 16);
    else if (!strncmp(a, "-max_len=", 9)) max_len = atol(a + 9);
    else if (!strncmp(a, "-seed=", 6)) seed = strtoull(a + 6, NULL, 10);
    else if (!strncmp(a, "-artifact_prefix=", 17)) g_prefix = a + 17;
    else if (a[0] == '-') fprintf(stderr, "driver: ignoring %s\n", a);
    else if (npaths < 256) paths[npaths++] = a;
  }
  g_rng = seed ? seed : 88172645463325252ull;
#ifdef HAVE_SANITIZER
  __sanitizer_set_death_callback(save_crash);
#endif
  signal(SIGSEGV, on_signal);
  signal(SIGABRT, on_signal);
  signal(SIGBUS, on_signal);
  signal(SIGFPE, on_signal);
  signal(SIGPIPE, SIG_IGN);

  int files_only = npaths > 0;
  for (int i = 0; i < npaths; i++) {
    struct stat st;
    if (stat(paths[i], &st) == 0 && S_ISDIR(st.st_mode)) files_only = 0;
  }
  long executed = 0;
  for (int i = 0; i < npaths; i++) {
    struct stat st;
    if (stat(paths[i], &st) != 0) {
      fprintf(stderr, "driver: %s: no such file or directory\n", paths[i]);
      return 1;
    }
    if (S_ISDIR(st.st_mode)) {
      DIR *d = opendir(paths[i]);
      struct dirent *e;
      while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", paths[i], e->d_name);
        uint8_t *b;
        size_t n;
        if (read_file(p, &b, &n) == 0) {
          run_one(b, n);
          executed++;
          add(b, n);
          free(b);
        }
      }
      if (d) closedir(d);
    } else {
      uint8_t *b;
      size_t n;
      if (read_file(paths[i], &b, &n) != 0) return 1;
      fprintf(stderr, "driver: running %s (%zu bytes)\n", paths[i], n);
      run_one(b, n);
      executed++;
      add(b, n);
      free(b);
    }
  }
  if (files_only) {
    fprintf(stderr, "driver: %ld inputs ran without a crash\n", executed);
    return 0;
  }
  if (!g_ncorpus) add((const uint8_t *)"", 0);
  if (runs < 0 && max_time <= 0) runs = 100000;
  uint8_t *buf = malloc((size_t)max_len + 1);
  if (!buf) abort();
  time_t t0 = time(NULL);
  long done = 0;
  for (;;) {
    if (runs >= 0 && done >= runs) break;
    if (max_time > 0 && time(NULL) - t0 >= max_time) break;
    input *src = &g_corpus[below(g_ncorpus)];
    size_t n = src->n < (size_t)max_len ? src->n : (size_t)max_len;
    memcpy(buf, src->p, n);
    n = mutate(buf, n, (size_t)max_len);
    run_one(buf, n);
    done++;
    /* no coverage feedback: keep a few mutants anyway, to wander further */
    if (below(256) == 0 && g_ncorpus < 4096) add(buf, n);
  }
  fprintf(stderr, "driver: %ld runs in %ld s, %zu corpus inputs, no crash (seed %llu)\n", done + executed,
          (long)(time(NULL) - t0), g_ncorpus, (unsigned long long)seed);
  free(buf);
  for (size_t i = 0; i < g_ncorpus; i++) free(g_corpus[i].p);
  free(g_corpus);
  return 0;
}
