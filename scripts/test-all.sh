#!/usr/bin/env bash
# The README's second command (and CI's): set everything up, then typecheck, lint and every test,
# with the leak check that `npm test` runs after the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
printf '\033[1m==> %s\033[0m\n' "typecheck" >&2
npm run --silent typecheck
printf '\033[1m==> %s\033[0m\n' "lint (eslint, prettier, cycles, boundaries)" >&2
npm run --silent lint
printf '\033[1m==> %s\033[0m\n' "tests" >&2
npm test
