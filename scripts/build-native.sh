#!/usr/bin/env bash
# Builds build/libescp.so: the native half of escp (ffi/*.c).
#
# libcrypto, intel-ipsec-mb, libzstd and libxxhash are linked statically and
# hidden (--exclude-libs,ALL + a version script), so the library needs only glibc
# and exports nothing but escp_*.  Needs: build-essential libssl-dev
# libipsec-mb-dev libzstd-dev libxxhash-dev (Debian 12).
#
# Usage: scripts/build-native.sh [output.so]     (env: CC, CFLAGS_EXTRA, KEEP_SYMBOLS)
#
# KEEP_SYMBOLS=1 leaves the symbol table in (for perf; bench/profile.ts).
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-build/libescp.so}"
cc="${CC:-gcc}"
multiarch="$($cc -print-multiarch 2>/dev/null || true)"
libdir="/usr/lib/${multiarch:-x86_64-linux-gnu}"

missing=()
for a in libcrypto.a libIPSec_MB.a libzstd.a libxxhash.a; do
  [[ -f "$libdir/$a" ]] || missing+=("$a")
done
for h in openssl/evp.h intel-ipsec-mb.h zstd.h xxhash.h; do
  [[ -f "/usr/include/$h" ]] || missing+=("$h")
done
if ((${#missing[@]})); then
  echo "build-native: missing ${missing[*]}: apt-get install build-essential libssl-dev libipsec-mb-dev libzstd-dev libxxhash-dev" >&2
  exit 1
fi

mkdir -p "$(dirname "$out")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/exports.map" <<'EOF'
{
  global: escp_*;
  local: *;
};
EOF

# shellcheck disable=SC2086
$cc -std=gnu11 -O2 -fPIC -shared -g0 \
  -Wall -Wextra -Werror=implicit-function-declaration \
  -fvisibility=hidden -ffunction-sections -fdata-sections \
  -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 \
  ${CFLAGS_EXTRA:-} \
  -Iffi \
  ffi/*.c \
  -o "$tmp/libescp.so" \
  "$libdir/libcrypto.a" "$libdir/libIPSec_MB.a" "$libdir/libzstd.a" "$libdir/libxxhash.a" \
  -Wl,--exclude-libs,ALL -Wl,--version-script="$tmp/exports.map" \
  -Wl,--gc-sections -Wl,--no-undefined -Wl,-z,relro,-z,now -Wl,-z,noexecstack \
  -Wl,-Bsymbolic \
  -lpthread -ldl -lm

[[ -n "${KEEP_SYMBOLS:-}" ]] || strip --strip-unneeded "$tmp/libescp.so"
mv -f "$tmp/libescp.so" "$out"

# Only glibc may remain among the dependencies.
bad="$(ldd "$out" | grep -vE 'linux-vdso|ld-linux|libc\.so|libm\.so|libpthread\.so|libdl\.so|librt\.so' || true)"
if [[ -n "$bad" ]]; then
  echo "build-native: $out depends on more than glibc:" >&2
  echo "$bad" >&2
  exit 1
fi
leaked="$(nm -D --defined-only "$out" | awk '{print $3}' | grep -v '^escp_' || true)"
if [[ -n "$leaked" ]]; then
  echo "build-native: $out exports non-escp symbols:" >&2
  echo "$leaked" | head -20 >&2
  exit 1
fi
echo "built $out ($(stat -c %s "$out") bytes, $(nm -D --defined-only "$out" | wc -l) exports)"
