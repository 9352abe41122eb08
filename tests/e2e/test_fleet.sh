#!/usr/bin/env bash
# A breaker shared by three `resilua serve` processes (A, B, C) through one real
# redis-server, in front of examples/flaky, with shared = { quorum = 2 }:
#   - failing traffic through A alone opens A (its own rule) and neither B nor C: the fleet
#     counts A's failures (B reads them back) but one failing instance is under quorum;
#   - failing traffic through B too opens the fleet, and C with it (C sent nothing);
#   - in half-open, with failing traffic offered through all three, at most `probes`
#     requests reach the upstream across the fleet (counted at flaky's /_stats) before
#     the failed probe re-opens the fleet at the next backoff level;
#   - once the upstream answers again, one probe's success closes all three;
#   - after SCRIPT FLUSH (NOSCRIPT to the next EVALSHA) flushes go on with no Redis error.
# Nothing races a period: negative phases assert what no amount of time changes (one
# failing instance is under quorum), after polling until the counts are in Redis; the
# positive ones poll, bounded.
source "$(dirname "$0")/lib.sh"
set -e
command -v redis-server >/dev/null || { echo "redis-server is required (scripts/setup.sh)"; exit 1; }
command -v curl >/dev/null || { echo "curl is required (scripts/setup.sh installs it)"; exit 1; }
HAMMER="python3 $RSL_SOURCE_DIR/tests/e2e/hammer.py"

RPORT=$(free_port)
start_redis

start flaky "$FLAKY" --listen 127.0.0.1:0 --quiet
UP=$port
P=$TMP/policies
mkdir -p "$P"
cat >"$P/p.lua" <<EOF
local r = require "resilua"
r.breaker "pay" { min_calls = 10, failure_rate = 50, open_for = "2s", probes = 1,
                  backoff = { factor = 2, jitter = 0 },
                  shared = { quorum = 2, flush = "100ms" } }
r.policy "p" {
  deadline = "10s",
  steps = { up = r.http { url = "http://127.0.0.1:$UP/pay?status=\${status}", timeout = "5s",
                          guards = { "pay" } } },
}
EOF
source "$RSL_SOURCE_DIR/tests/e2e/fleet_lib.sh"
start_fleet "$P"
flaky_count() {
  curl -sS --max-time 10 "http://127.0.0.1:$UP/_stats" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["paths"].get("/pay", 0))'
}

t "three instances join the fleet"
for n in 0 1 2; do until_st $n 's.get("mode") == "joined"'; done
ok

t "failing traffic through A alone opens A, not B or C (quorum 2)"
until_st 0 'g["state"] == "open"' "$(url 0 503)"
# B has read A's failures back from Redis: the fleet has them, and one failing instance.
until_st 1 's["calls"] >= 10 and s["failing_instances"] == 1'
for n in 1 2; do
  [ "$(st $n 'g["state"] + " " + s["fleet_state"]')" = "closed closed" ] ||
    fail "instance $n: $(st $n 'g')"
done
ok

t "failing traffic through B too opens the fleet, and C, which sent nothing"
until_st 1 'g["state"] == "open"' "$(url 1 503)"
t0=$(date +%s%N)
# One read judges all three: a later read may come after open_for on a loaded box.
until_st 2 'g["state"] == "open" and s["fleet_state"] == "open" and s["failing_instances"] >= 2'
echo "  C open $(( ($(date +%s%N) - t0) / 1000000 )) ms after B opened (flush 100 ms)"
ok

t "half-open: at most 1 probe reaches the upstream across the fleet"
curl -sS -X POST "http://127.0.0.1:$UP/_reset" >/dev/null
before=$(flaky_count)
# Failing traffic through all three until the fleet has probed once and re-opened at level 1.
until_st 0 'g["backoff_level"] >= 1 and g["state"] == "open"' \
  "$(url 0 503)" "$(url 1 503)" "$(url 2 503)"
probes=$(( $(flaky_count) - before ))
echo "  upstream requests while half-open: $probes (probes = 1)"
[ "$probes" -le 1 ] || fail "$probes requests reached the upstream: $(st 0 'g') $(st 1 'g') $(st 2 'g')"
[ "$probes" -ge 1 ] || fail "no probe reached the upstream"
ok

t "the upstream answers again: one probe closes all three"
until_st 0 'g["state"] == "closed" and s["fleet_state"] == "closed"' \
  "$(url 0 200)" "$(url 1 200)" "$(url 2 200)"
for n in 1 2; do until_st $n 'g["state"] == "closed"'; done
ok

t "after SCRIPT FLUSH the flushes go on: no Redis error, still joined"
evals() { redis-cli -p "$RPORT" info commandstats | sed -n 's/^cmdstat_eval:calls=\([0-9]*\),.*/\1/p' | grep . || echo 0; }
errs=$(st 0 's["redis_errors"]') n0=$(st 0 's["flushes"]') e0=$(evals)
redis-cli -p "$RPORT" script flush >/dev/null
until_st 0 "s['flushes'] >= $n0 + 3 and s['mode'] == 'joined'" "$(url 0 200)"
[ "$(st 0 's["redis_errors"]')" = "$errs" ] || fail "redis errors $errs -> $(st 0 's["redis_errors"]')"
[ "$(evals)" -gt "$e0" ] || fail "no EVAL after the NOSCRIPT: $e0 -> $(evals)"
ok

t "/metrics: the shared breaker's mode"
curl -sS "http://127.0.0.1:${SRV[2]}/metrics" | grep -q 'resilua_shared_mode{guard="pay",mode="joined"} 1' ||
  fail "$(curl -sS "http://127.0.0.1:${SRV[2]}/metrics" | grep shared_mode)"
ok

done_all
