#!/usr/bin/env bash
# The long fuzz run (test/fuzz.test.ts runs the same harnesses for seconds).
#
# Builds ffi/fuzz/ (libFuzzer if clang has it: `apt-get install clang`; else
# the random-mutation driver), writes the seed corpus, then fuzzes each
# harness in turn for SECONDS (default 300), keeping the corpus it grows in
# build/fuzz/work/<harness>/ across runs. A crash is saved under
# build/fuzz/artifacts/<harness>/; the script ends non-zero and says how to
# make it a regression input (ffi/fuzz/regressions/<harness>/, replayed by
# `npm test`).
#
# Usage: scripts/fuzz.sh [SECONDS] [harness...]
#   env ESCP_FUZZ_ENGINE=libfuzzer|driver, ESCP_FUZZ_JOBS=N (parallel runs per harness)
set -uo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-300}"
shift || true
harnesses=("$@")
((${#harnesses[@]})) || harnesses=(fuzz_records fuzz_handshake fuzz_zstd)
jobs="${ESCP_FUZZ_JOBS:-1}"

bash ffi/fuzz/build.sh "${ESCP_FUZZ_ENGINE:-auto}" || exit 1
engine="$(cat build/fuzz/engine)"
./node_modules/.bin/bun ffi/fuzz/seeds.ts build/fuzz/corpus >/dev/null || exit 1

failed=0
for h in "${harnesses[@]}"; do
  work="build/fuzz/work/$h" art="build/fuzz/artifacts/$h"
  mkdir -p "$work" "$art"
  regress=()
  [[ -d ffi/fuzz/regressions/$h ]] && regress=("ffi/fuzz/regressions/$h")
  echo "== $h: ${seconds}s ($engine, $jobs job(s)); corpus $work"
  extra=()
  if [[ $engine == libfuzzer && $jobs -gt 1 ]]; then extra=(-jobs="$jobs" -workers="$jobs"); fi
  log="$art/log"
  "build/fuzz/$h" -max_total_time="$seconds" -max_len=65536 -timeout=20 -rss_limit_mb=4096 \
    -print_final_stats=1 -artifact_prefix="$art/" "${extra[@]}" "$work" build/fuzz/corpus/"$h" "${regress[@]}" \
    >"$log" 2>&1
  status=$?
  grep -E '^(Done|stat::|driver:)|ERROR|runtime error|invariant|deadly|SUMMARY' "$log" | tail -20
  found=$(find "$art" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | sort)
  if [[ $status -ne 0 || -n $found ]]; then
    failed=1
    echo "!! $h failed (exit $status). Inputs:"
    echo "${found:-  (none saved)}"
    echo "   full output: $log"
    echo "   reproduce: build/fuzz/$h <input>"
    echo "   then keep it: cp <input> ffi/fuzz/regressions/$h/ (npm test replays it) and fix the bug"
  fi
done
exit $failed
