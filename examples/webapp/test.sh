#!/bin/sh
# The app's unit tests, run inside the built image.
set -eu
fail() { echo "FAIL: $*"; exit 1; }
[ -f /www/index.html ] || fail "index.html missing"
grep -q 'Hello from the berth example app' /www/index.html || fail "index.html has no greeting"
[ "$(cat /www/health)" = ok ] || fail "health file is not ok"
[ -s /www/version ] || fail "version is empty"
httpd -f -p 127.0.0.1:18080 -h /www &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
i=0
until wget -q -O- http://127.0.0.1:18080/health >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -lt 50 ] || fail "httpd did not start"; sleep 0.1
done
[ "$(wget -q -O- http://127.0.0.1:18080/health)" = ok ] || fail "GET /health"
wget -q -O- http://127.0.0.1:18080/ | grep -q Hello || fail "GET /"
echo "PASS: 6 checks"
