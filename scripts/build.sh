#!/usr/bin/env bash
# Builds the native library, then the single executable dist/escp with the
# library and the stream worker embedded (bun build --compile).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-native.sh
mkdir -p dist
# The build id keys the bootstrap cache on remote hosts: a digest of what the
# executable is made of (this script's flags included), so the same sources give the
# same id (and executable).
build_id=$( (cat build/libescp.so package.json scripts/build.sh; find src -type f -name '*.ts' | LC_ALL=C sort | xargs cat) | sha256sum | cut -c1-12)
echo "$build_id" >build/build-id
# --bytecode: JavaScriptCore bytecode compiled ahead, so neither end nor any worker parses
# the bundle at start (escp --version 70 -> 20 ms; a 1-byte copy 0.64 -> 0.54 s here).
# --external for ssh2's optional add-ons (it falls back to node:crypto when they fail to
# load): embedded, Bun writes them to $TMPDIR as .bun-*.node at every start of the
# built-in ssh client and leaves them there.
# --no-compile-autoload-*: the executable reads no bunfig.toml, .env, tsconfig.json or
# package.json from the directory it runs in; by default it did, so a bunfig.toml's
# `preload` in a directory someone else can write (cd /tmp; escp ...) ran their code as
# the user running escp, and a .env set its environment (ESCP_REMOTE, ...).
# --compile-exec-argv: with no argument baked in, Bun 1.4 refuses to start an executable
# whose working directory was deleted ("The current working directory was deleted"),
# where scp copies absolute paths from there; with one it starts. --no-deprecation is the
# one chosen because it changes nothing escp does (no Node deprecation warnings to users).
./node_modules/.bin/bun build --compile --bytecode --minify-syntax --define "ESCP_BUILD=\"$build_id\"" \
  --compile-exec-argv=--no-deprecation \
  --no-compile-autoload-dotenv --no-compile-autoload-bunfig \
  --no-compile-autoload-tsconfig --no-compile-autoload-package-json \
  --external cpu-features --external '*.node' \
  src/main.ts src/streams/worker.ts src/plan/walker.ts src/session/builtin-ssh.ts src/cli/prompts.ts --outfile dist/escp >build/bun-build.log 2>&1 \
  || { cat build/bun-build.log; exit 1; }
echo "built dist/escp ($(du -h dist/escp | cut -f1))"
