#!/usr/bin/env bash
# `berth engine up` for scripts that run before or without the npm build: the TypeScript in
# src/engine/bootstrap.ts is the one implementation; this only picks how to run it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -f "$root/dist/cli/main.js" ]; then
  exec node "$root/dist/cli/main.js" engine up "$@"
fi
exec node --import tsx "$root/src/cli/main.ts" engine up "$@"
