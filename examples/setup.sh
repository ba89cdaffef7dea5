#!/bin/sh
# Prepares this machine for the examples: a local image registry on 127.0.0.1:5000 (Debian's
# `docker-registry`, with its own config and storage, no auth) unless one already answers there.
# Idempotent; `examples/setup.sh stop` stops the registry it started. BERTH_EXAMPLE_REGISTRY picks
# another loopback address (then run with `--registry ADDR --var REGISTRY=ADDR`).
set -eu
ADDR=${BERTH_EXAMPLE_REGISTRY:-127.0.0.1:5000}
# The state lives in a folder of this user's own: a fixed folder in a shared place (it used to be
# /var/tmp/berth-example-registry) could be made first by another local user, who then had this
# script (often run as root) write through a link of theirs, or kill a process of their choosing.
STATE=${BERTH_EXAMPLE_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/berth/example-registry}
PIDFILE=$STATE/registry.pid

answers() { curl -fsS -m 2 "http://$ADDR/v2/" >/dev/null 2>&1; }

# The state folder must be a real folder of this user's, writable by no one else.
mkdir -p "$STATE"
if [ -L "$STATE" ] || [ "$(stat -c %u "$STATE")" != "$(id -u)" ] ||
  [ -n "$(find "$STATE" -maxdepth 0 -perm /022)" ]; then
  echo "setup: $STATE is a link, another user's, or writable by others; remove it (or set BERTH_EXAMPLE_STATE)" >&2
  exit 1
fi
chmod 700 "$STATE"

if [ "${1:-}" = stop ]; then
  # Only a docker-registry process of this state (a pid file can name any process).
  pid=$(cat "$PIDFILE" 2>/dev/null || true)
  if [ -n "$pid" ] && grep -qs "docker-registry" "/proc/$pid/cmdline" &&
    grep -qsF "$STATE/config.yml" "/proc/$pid/cmdline" && kill "$pid" 2>/dev/null; then
    echo "registry stopped"
  fi
  rm -f "$PIDFILE"
  exit 0
fi

# The example's jobs run in berth-local/tools and build FROM berth-local/busybox (no registry pull).
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || true)}
if [ -n "$DOCKER" ]; then
  for img in berth-local/busybox berth-local/tools; do
    "$DOCKER" image inspect "$img" >/dev/null 2>&1 ||
      echo "setup: $img is missing: build the local images with \`berth images build-local\`" >&2
  done
fi

if answers; then
  echo "registry: already answering on $ADDR"
  exit 0
fi
command -v docker-registry >/dev/null || {
  echo "setup: docker-registry is not installed (Debian: apt-get install docker-registry)" >&2
  exit 1
}
mkdir -p "$STATE/data"
cat > "$STATE/config.yml" <<CONF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $STATE/data
  delete:
    enabled: true
http:
  addr: $ADDR
CONF
rm -f "$STATE/registry.log"
nohup docker-registry serve "$STATE/config.yml" >"$STATE/registry.log" 2>&1 &
echo $! > "$PIDFILE"
i=0
until answers; do
  i=$((i + 1))
  if [ $i -gt 50 ]; then
    echo "setup: the registry did not answer on $ADDR; see $STATE/registry.log" >&2
    exit 1
  fi
  sleep 0.2
done
echo "registry: started on $ADDR (pid $(cat "$PIDFILE"), data in $STATE/data)"
