#!/usr/bin/env bash
# The benchmark: escp against scp, rsync, cat|ssh, tar|ssh and iperf3 over a
# real loopback sshd, plus the one-core crypto table; writes bench/RESULTS.md
# (bench/RESULTS-quick.md with --quick, so a quick look never overwrites the
# full figures).
#
#   npm run bench                  # full run, ~10-20 min on the 2-vCPU VM
#   bash bench/run.sh --quick      # < 2 min, smaller data, one run each
#   bash bench/run.sh --worktree   # benchmark the working tree's dist/escp (rebuilt when stale)
#   bash bench/run.sh --commit REV # benchmark another commit (default HEAD)
#   bash bench/run.sh --reps 5 --only large,latency   # other options: see bench/bench.ts
#
# By default the escp measured is built from the committed HEAD in a private
# directory (git archive), so that the figures belong to a commit and nobody's
# uncommitted edits or concurrent rebuild of dist/escp can change the binary
# halfway through. Data lives in $ESCP_BENCH_DIR (default /var/tmp/escp-bench,
# ~2.5 GiB, kept between runs; the destination is emptied before every copy).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
BUN=$repo/node_modules/.bin/bun
[[ -x $BUN ]] || bash scripts/setup.sh
for t in scp rsync iperf3 /usr/sbin/sshd /usr/bin/time; do
  command -v "$t" >/dev/null || { echo "bench: $t missing, running scripts/setup.sh" >&2; bash scripts/setup.sh; break; }
done

args=()
worktree=
rev=HEAD
quick=()
while (($#)); do
  case $1 in
    --worktree) worktree=1 ;;
    --commit) rev=$2; shift ;;
    --quick) quick=(--quick); args+=("$1") ;;
    *) args+=("$1") ;;
  esac
  shift
done

tmp=$(mktemp -d /tmp/escp-bench.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
if [[ -n $worktree ]]; then
  if [[ ! -x dist/escp ]] || [[ -n $(find src ffi scripts/build.sh scripts/build-native.sh -newer dist/escp -type f 2>/dev/null | head -1) ]]; then
    echo "bench: building dist/escp" >&2
    bash scripts/build.sh >&2
  fi
  export ESCP_BIN=$repo/dist/escp ESCP_LIB=$repo/build/libescp.so
  dirty=$(git status --porcelain -- src ffi | head -1)
  export ESCP_BENCH_SOURCE="working tree at $(git rev-parse --short HEAD)${dirty:+ with uncommitted changes in src/ or ffi/}"
else
  short=$(git rev-parse --short "$rev")
  echo "bench: building escp from $rev ($short) in $tmp/src" >&2
  mkdir "$tmp/src"
  git archive "$rev" | tar -x -C "$tmp/src"
  ln -s "$repo/node_modules" "$tmp/src/node_modules"
  (cd "$tmp/src" && bash scripts/build.sh >&2) || {
    echo "bench: $rev ($short) does not build from a clean checkout (a file it needs is not committed?)." >&2
    echo "bench: use --commit REV for an earlier commit, or --worktree for the working tree's dist/escp." >&2
    exit 1
  }
  export ESCP_BIN=$tmp/src/dist/escp ESCP_LIB=$tmp/src/build/libescp.so
  export ESCP_BENCH_SOURCE="$rev = $short \"$(git log -1 --format=%s "$rev")\", built from a clean git archive"
fi

echo "bench: crypto primitives (one core)" >&2
"$BUN" bench/crypto.ts "${quick[@]}" --json "$tmp/crypto.json" >/dev/null
"$BUN" bench/bench.ts ${args[@]+"${args[@]}"} --crypto-json "$tmp/crypto.json"
