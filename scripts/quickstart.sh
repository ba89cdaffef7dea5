#!/usr/bin/env bash
# The README's first command: from a fresh Debian machine to berth's main job — the example
# pipeline (build → test → push → probe → deploy) run by `berth run`, each job with guarded Docker.
# Afterwards it shows the deployed app answering, then removes what the example left (the
# env/production environment, the app's images and the registry it started);
# `npm run quickstart -- --keep` keeps them.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = --keep ] && keep=true
bash scripts/setup.sh
node dist/cli/main.js doctor
started_registry=false
if sh examples/setup.sh | tee /dev/stderr | grep -q 'registry: started'; then started_registry=true; fi
tidy() {
  if [ "$keep" = true ]; then
    echo "kept: the app (container webapp-production) and the registry on 127.0.0.1:5000;" \
      "remove them with: node dist/cli/main.js reap --tenant env/production && sh examples/setup.sh stop"
    return
  fi
  node dist/cli/main.js reap --tenant env/production
  # The app's images (built, pushed and pulled back by the run) go with it.
  /usr/bin/docker images --format '{{.Repository}}:{{.Tag}}' --filter 'reference=127.0.0.1:5000/berth-example/webapp' |
    xargs -r /usr/bin/docker rmi >/dev/null
  if [ "$started_registry" = true ]; then sh examples/setup.sh stop; fi
}
trap tidy EXIT
node dist/cli/main.js run examples/webapp/berth.yml
printf 'the deployed app answers: '
/usr/bin/docker exec webapp-production wget -q -O- http://127.0.0.1:8080/version
