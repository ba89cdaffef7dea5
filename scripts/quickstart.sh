#!/usr/bin/env bash
# The README's first command: from a fresh Debian machine to berth's main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
node dist/cli/main.js doctor
