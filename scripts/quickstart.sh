#!/usr/bin/env bash
# The README's first command: from a fresh Debian machine to berth's main job — the example
# pipeline (build → test → push → probe → deploy) run by `berth run`, each job with guarded Docker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
node dist/cli/main.js doctor
sh examples/setup.sh
node dist/cli/main.js run examples/webapp/berth.yml
