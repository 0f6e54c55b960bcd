#!/usr/bin/env bash
# Builds the fuzz harnesses of ffi/fuzz/ into build/fuzz/: fuzz_records,
# fuzz_handshake, fuzz_zstd, each linked with the library's sources under
# AddressSanitizer and UndefinedBehaviorSanitizer.
#
# Engine: libFuzzer when clang has it (apt-get install clang), else gcc with
# ffi/fuzz/driver.c, a plain random-mutation driver that takes the same flags.
# build/fuzz/engine says which was used.  Rebuilds only when a source changed.
#
# Usage: ffi/fuzz/build.sh [libfuzzer|driver]
set -euo pipefail
cd "$(dirname "$0")/../.."

want="${1:-auto}"
out=build/fuzz
mkdir -p "$out"
multiarch="$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)"
libdir="/usr/lib/${multiarch:-x86_64-linux-gnu}"
libs=("$libdir/libcrypto.a" "$libdir/libIPSec_MB.a" "$libdir/libzstd.a" "$libdir/libxxhash.a")
for l in "${libs[@]}"; do
  [[ -f $l ]] || { echo "fuzz/build: missing $l: apt-get install libssl-dev libzstd-dev libxxhash-dev" >&2; exit 1; }
done

has_libfuzzer() {
  command -v clang >/dev/null 2>&1 || return 1
  local t
  t="$(mktemp -d)"
  printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t*d,size_t n){(void)d;(void)n;return 0;}\n' >"$t/t.c"
  clang -fsanitize=fuzzer,address "$t/t.c" -o "$t/t" >/dev/null 2>&1
  local rc=$?
  rm -rf "$t"
  return $rc
}

engine="$want"
if [[ $engine == auto ]]; then
  if has_libfuzzer; then engine=libfuzzer; else engine=driver; fi
fi
case "$engine" in
  libfuzzer) cc=clang; link_engine=(-fsanitize=fuzzer); obj_engine=(-fsanitize=fuzzer-no-link) ;;
  driver) cc="${CC:-gcc}"; link_engine=(ffi/fuzz/driver.c); obj_engine=() ;;
  *) echo "fuzz/build: engine is libfuzzer or driver, not $engine" >&2; exit 2 ;;
esac

harnesses=(fuzz_records fuzz_handshake fuzz_zstd)
stamp="$(cat ffi/*.c ffi/*.h ffi/fuzz/*.c ffi/fuzz/*.h ffi/fuzz/build.sh | sha256sum | cut -c1-16)-$engine"
if [[ -f $out/stamp && "$(cat "$out/stamp")" == "$stamp" ]]; then
  ok=1
  for h in "${harnesses[@]}"; do [[ -x $out/$h ]] || ok=0; done
  if ((ok)); then echo "fuzz/build: up to date ($engine)"; exit 0; fi
fi

flags=(-std=gnu11 -O1 -g -fno-omit-frame-pointer -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -Iffi
  -fsanitize=address,undefined -fno-sanitize-recover=undefined -Wall -Wno-unused-function -Wno-unknown-pragmas)
objdir="$out/obj-$engine"
mkdir -p "$objdir"
pids=()
# crypto.c builds its AVX2 copy of XXH3 with `#pragma GCC target`, which clang does not
# apply to the inlined header: clang gets -mavx2 for that file (fuzzing hosts have AVX2).
avx2=()
if [[ $cc == clang* ]] && grep -qw avx2 /proc/cpuinfo; then avx2=(-mavx2); fi
for src in ffi/*.c; do
  extra=()
  [[ $src == ffi/crypto.c ]] && extra=("${avx2[@]}")
  "$cc" "${flags[@]}" "${obj_engine[@]}" "${extra[@]}" -c "$src" -o "$objdir/$(basename "$src" .c).o" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
pids=()
for h in "${harnesses[@]}"; do
  "$cc" "${flags[@]}" "${obj_engine[@]}" "ffi/fuzz/$h.c" "${link_engine[@]}" "$objdir"/*.o \
    "${libs[@]}" -lpthread -ldl -lm -o "$out/$h" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
echo "$engine" >"$out/engine"
echo "$stamp" >"$out/stamp"
echo "fuzz/build: built ${harnesses[*]} in $out ($engine)"
