#!/usr/bin/env bash
# Builds the native library, then the single executable dist/escp with the
# library and the stream worker embedded (bun build --compile).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-native.sh
mkdir -p dist
./node_modules/.bin/bun build --compile --minify-syntax \
  src/main.ts src/streams/worker.ts src/plan/walker.ts --outfile dist/escp >build/bun-build.log 2>&1 \
  || { cat build/bun-build.log; exit 1; }
echo "built dist/escp ($(du -h dist/escp | cut -f1))"
