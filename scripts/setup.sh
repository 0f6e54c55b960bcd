#!/usr/bin/env bash
# Installs everything escp needs to build, test and demo, on Debian 12 as root
# (or with sudo). Idempotent and quick when all is there: it only checks, and
# runs apt-get / npm only for what is missing or out of date. Non-interactive
# (works with CI=true and no stdin). Starts no service: the tests run their
# own sshd on a free port.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ── Debian packages ────────────────────────────────────────────────────────
#   build-essential libssl-dev libipsec-mb-dev libzstd-dev libxxhash-dev: the
#     native library (libipsec-mb-dev: the VAES/AVX-512 AES-GCM, linked in)
#   libgcrypt20: the faster AES-GCM the native library loads when a host has it
#   openssh-server openssh-client: the real ssh transport the tests use
#   rsync iperf3 xxhash: baselines and checks for benchmarks
#   procps iproute2 util-linux time: ps/pgrep, ss, setpriv/taskset, /usr/bin/time
#   strace: a test checks which thread creates the receiver's files
#   e2fsprogs: a test makes a small ext4 filesystem (mkfs.ext4) to fill
#   attr: setfattr/getfattr, for a test that a replaced file keeps its attributes
#   fusefat dosfstools fuse3: a FAT filesystem (FUSE) to copy into, which ignores case
#   exfat-fuse exfatprogs ntfs-3g: FUSE filesystems whose type does not say whether case counts
APT_PACKAGES=(
  build-essential libssl-dev libipsec-mb-dev libzstd-dev libxxhash-dev libgcrypt20 openssl
  openssh-server openssh-client
  rsync iperf3 xxhash
  procps iproute2 util-linux time strace e2fsprogs attr
  fusefat dosfstools fuse3 exfat-fuse exfatprogs ntfs-3g
)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  installed=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${APT_PACKAGES[@]}" 2>/dev/null || true)
  for pkg in "${APT_PACKAGES[@]}"; do
    grep -qE "^ii +${pkg}\$" <<<"$installed" || missing+=("$pkg")
  done
else
  die "dpkg-query not found: this script expects Debian 12 (install ${APT_PACKAGES[*]} yourself)"
fi

if ((${#missing[@]})); then
  SUDO=()
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "missing packages (${missing[*]}) and not root; run as root or install sudo"
    SUDO=(sudo -n)
  fi
  log "installing ${missing[*]}"
  # Installing openssh-server must not start a system sshd (nor anything
  # else): a policy-rc.d that says "no" for the duration, unless one exists.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    trap '"${SUDO[@]}" rm -f "$policy"' EXIT
  fi
  apt_env=(env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a)
  "${SUDO[@]}" "${apt_env[@]}" apt-get update -q -o Acquire::Retries=3 </dev/null
  "${SUDO[@]}" "${apt_env[@]}" apt-get install -y -q --no-install-recommends \
    -o Acquire::Retries=3 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" </dev/null
fi

# ── Node packages (bun itself is an npm devDependency) ─────────────────────
command -v node >/dev/null 2>&1 || die "node not found: install Node.js 20+ and npm first"
command -v npm >/dev/null 2>&1 || die "npm not found: install npm first"

need_npm=""
if [[ ! -x node_modules/.bin/bun ]]; then
  need_npm="node_modules/.bin/bun is missing"
elif [[ -f package-lock.json ]]; then
  if [[ ! -f node_modules/.package-lock.json ]]; then
    need_npm="node_modules/.package-lock.json is missing"
  elif [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
    need_npm="package-lock.json changed since the last install"
  fi
fi

if [[ -n $need_npm ]]; then
  log "npm install: $need_npm"
  npm_flags=(--no-audit --no-fund --no-update-notifier)
  if [[ -f package-lock.json ]]; then
    npm ci "${npm_flags[@]}" </dev/null
  else
    npm install "${npm_flags[@]}" </dev/null
  fi
  # npm may leave the lock file newer than its own record; mark this install current.
  [[ -f node_modules/.package-lock.json ]] && touch node_modules/.package-lock.json
fi

bun_version=$(node_modules/.bin/bun --version 2>/dev/null) ||
  die "node_modules/.bin/bun does not run; remove node_modules and run this script again"
[[ -n $need_npm || ${#missing[@]} -gt 0 ]] && log "ready (bun $bun_version)"
exit 0
