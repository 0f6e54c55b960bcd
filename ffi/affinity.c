/*
 * affinity.c: CPU and NUMA placement of the calling thread.  Masks are hex strings,
 * bit i = CPU (or node) i: "0xf", "ff00", "0x1,00000000" (commas and '_' ignored).
 * set_mempolicy goes through the raw syscall so that no libnuma is needed.
 */
#include "internal.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_BITS 8192
#ifndef MPOL_BIND
#define MPOL_BIND 2
#endif

/* Parses hex into words (bit i of the mask -> words[i/64] bit i%64).  Returns the number
 * of significant bits (0 for an all-zero mask), or -EINVAL. */
static int parse_mask(const char *s, uint64_t *words, int nwords) {
  memset(words, 0, sizeof(uint64_t) * (size_t)nwords);
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s += 2;
  size_t n = strlen(s);
  int bit = 0, top = 0, digits = 0;
  for (size_t i = n; i-- > 0;) {
    char ch = s[i];
    int v;
    if (ch >= '0' && ch <= '9') v = ch - '0';
    else if (ch >= 'a' && ch <= 'f') v = ch - 'a' + 10;
    else if (ch >= 'A' && ch <= 'F') v = ch - 'A' + 10;
    else if (ch == ',' || ch == '_') continue;
    else return -EINVAL;
    digits++;
    for (int k = 0; k < 4; k++, bit++) {
      if (!(v >> k & 1)) continue;
      if (bit >= nwords * 64) return -EINVAL;
      words[bit / 64] |= 1ull << (bit % 64);
      top = bit + 1;
    }
  }
  return digits ? top : -EINVAL;
}

ESCP_API int escp_set_cpumask(const char *hexmask) {
  if (!hexmask || !*hexmask) return 0;
  uint64_t words[MAX_BITS / 64];
  int top = parse_mask(hexmask, words, MAX_BITS / 64);
  if (top < 0) return escp__err(-EINVAL, "cpumask \"%s\" is not a hex mask", hexmask);
  if (top == 0) return escp__err(-EINVAL, "cpumask \"%s\" selects no CPU", hexmask);
  cpu_set_t *set = CPU_ALLOC(MAX_BITS);
  if (!set) return -ENOMEM;
  size_t sz = CPU_ALLOC_SIZE(MAX_BITS);
  CPU_ZERO_S(sz, set);
  for (int i = 0; i < top; i++)
    if (words[i / 64] >> (i % 64) & 1) CPU_SET_S((size_t)i, sz, set);
  int rc = sched_setaffinity(0, sz, set) == 0 ? 0 : escp__errno("cpumask %s", hexmask);
  CPU_FREE(set);
  return rc;
}

ESCP_API int escp_set_nodemask(const char *hexmask) {
  if (!hexmask || !*hexmask) return 0;
  uint64_t words[1024 / 64];
  int top = parse_mask(hexmask, words, 1024 / 64);
  if (top < 0) return escp__err(-EINVAL, "nodemask \"%s\" is not a hex mask", hexmask);
  if (top == 0) return escp__err(-EINVAL, "nodemask \"%s\" selects no NUMA node", hexmask);
  /* maxnode counts bits; the kernel ignores the last one (as libnuma, pass bits + 1) */
  long r = syscall(SYS_set_mempolicy, MPOL_BIND, words, (unsigned long)(1024 + 1));
  return r == 0 ? 0 : escp__errno("nodemask %s", hexmask);
}
