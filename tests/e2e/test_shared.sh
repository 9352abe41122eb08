#!/usr/bin/env bash
# A global limiter shared by three `resilua serve` processes through one real
# redis-server (ephemeral loopback port): hammered through all three for 5 s, the fleet
# admits at most rate x T + burst + instances x lease and at least 90% of rate x T, and
# each instance counts 3 in the fleet; Redis stopped (SIGSTOP) under load: every request
# is answered, none waits on Redis, the guard says "down" in /state and rejoins on SIGCONT;
# Redis killed: the same, and a restarted Redis is joined again.
source "$(dirname "$0")/lib.sh"
set -e
command -v redis-server >/dev/null || { echo "redis-server is required (scripts/setup.sh)"; exit 1; }
command -v curl >/dev/null || { echo "curl is required (scripts/setup.sh installs it)"; exit 1; }
HAMMER="python3 $RSL_SOURCE_DIR/tests/e2e/hammer.py"
P=$TMP/policies
mkdir -p "$P"
cat >"$P/p.lua" <<'EOF'
local r = require "resilua"
r.limiter "partner-api" { rate = 200, per = "1s", burst = 20, scope = "global", lease = 10 }
r.policy "p" { steps = { s = r.stub { status = 200, body = "ok", guards = { "partner-api" } } } }
EOF

RPORT=$(free_port)
start_redis

SRV=()
for i in 1 2 3; do
  start "serve$i" "$RESILUA" serve -p "$P" --listen 127.0.0.1:0 --workers 2 \
    --redis "127.0.0.1:$RPORT" --redis-prefix "e2e$$:"
  SRV+=("$port")
done
URLS=()
for p in "${SRV[@]}"; do URLS+=("http://127.0.0.1:$p/call/p"); done

# field N NAME: the guard's NAME in instance N's /state
field() {
  curl -sS --max-time 10 "http://127.0.0.1:${SRV[$1]}/state" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["guards"]["partner-api"].get(sys.argv[1]))' "$2"
}
# until_mode MODE: requests through every instance until all show MODE (bounded)
until_mode() {
  for _ in $(seq 1 100); do
    $HAMMER 0.05 "${URLS[@]}" >/dev/null
    [ "$(field 0 mode)" = "$1" ] && [ "$(field 1 mode)" = "$1" ] && [ "$(field 2 mode)" = "$1" ] && return 0
  done
  fail "not all $1: $(field 0 mode) $(field 1 mode) $(field 2 mode)"
}

t "three instances join the fleet"
until_mode joined
ok

t "5 s through all three: the fleet admits what Redis grants"
$HAMMER 5 "${URLS[@]}" >"$TMP/h.json"
python3 - "$TMP/h.json" <<'PY' || fail "$(cat "$TMP/h.json")"
import json, sys
h = json.load(open(sys.argv[1]))
t, ok, no = h["seconds"], h["total"].get("200", 0), h["total"].get("503", 0)
bound, floor = 200 * t + 20 + 3 * 10, 0.9 * 200 * t
print("  %.2f s: %d admitted, %d refused; rate x T %.0f, bound %.0f, error %+.1f%%"
      % (t, ok, no, 200 * t, bound, 100.0 * (ok - 200 * t) / (200 * t)))
assert h["errors"] == 0, h
assert no > ok, h                      # it was limiting
assert floor <= ok <= bound, (ok, floor, bound)
assert set(h["total"]) <= {"200", "503"}, h
PY
[ "$(field 0 instances)" = 3 ] || fail "instances: $(field 0 instances)"
ok

t "Redis stopped: every request answered at once, down, then joined again"
kill -STOP "$RPID"
$HAMMER 1.5 "${URLS[@]}" >"$TMP/h.json"
python3 -c 'import json,sys; h=json.load(open(sys.argv[1])); assert h["errors"] == 0 and h["worst_ms"] < 1000, h' \
  "$TMP/h.json" || fail "$(cat "$TMP/h.json")"
[ "$(field 0 mode)" = down ] || fail "mode $(field 0 mode), expected down"
kill -CONT "$RPID"
until_mode joined
ok

t "Redis killed: answered, down; restarted: joined again"
kill -KILL "$RPID"
wait "$RPID" 2>/dev/null || true
$HAMMER 1 "${URLS[@]}" >"$TMP/h.json"
python3 -c 'import json,sys; h=json.load(open(sys.argv[1])); assert h["errors"] == 0 and h["worst_ms"] < 1000 and h["total"].get("200", 0) > 0, h' \
  "$TMP/h.json" || fail "$(cat "$TMP/h.json")"
[ "$(field 1 mode)" = down ] || fail "mode $(field 1 mode), expected down"
start_redis
until_mode joined
curl -sS "http://127.0.0.1:${SRV[0]}/metrics" >"$TMP/m"
grep -q '^resilua_shared_mode{guard="partner-api",mode="joined"} 1$' "$TMP/m" || fail "metrics: $(grep shared "$TMP/m")"
grep -q '^resilua_redis_errors_total{guard="partner-api"} [1-9]' "$TMP/m" || fail "no redis errors counted"
ok

done_all
