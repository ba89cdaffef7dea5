#!/usr/bin/env bash
# Shared setup for the README's two commands and CI: npm dependencies, the build, a Docker engine
# (installed and started on Debian when none answers) and the berth-local images.
#   scripts/setup.sh [--test]   --test also installs what the test suite drives (compose, registry, …)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

packages=(docker.io iptables busybox-static debootstrap docker-registry curl git gcc libc6-dev)
if [ "${1:-}" = "--test" ]; then
  packages+=(docker-compose haproxy postgresql chromium)
fi

if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

say "installing npm dependencies"
npm ci --no-audit --no-fund
say "building"
npm run --silent build
say "making sure a Docker engine answers"
node dist/cli/main.js engine up
say "building the berth-local images (reused when unchanged)"
node dist/cli/main.js images build-local
