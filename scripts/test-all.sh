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
printf '\033[1m==> %s\033[0m\n' "bench --quick (each scenario once against every contender: checks the bench still runs; no timings judged)" >&2
quick_out=$(mktemp -d)
trap 'rm -rf "$quick_out"' EXIT
node dist/cli/main.js bench --quick --out "$quick_out"
