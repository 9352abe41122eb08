#!/usr/bin/env bash
# Admin overrides as an operator drives them: `resilua serve` in front of examples/flaky,
# POST /guards/NAME/force_open|disable|reset|auto.  A forced-open breaker sends the
# traffic to the fallback and /state says why; the override survives POST /reload with
# new thresholds; disable lets a failing upstream through without tripping; auto hands a
# forced breaker back through its open period; reset closes it; a limiter can be forced
# open too; wrong methods, names and actions get clear answers.
source "$(dirname "$0")/lib.sh"
set -e
command -v curl >/dev/null || { echo "curl is required (scripts/setup.sh installs it)"; exit 1; }
P=$TMP/policies
mkdir -p "$P"


start flaky "$FLAKY" --listen 127.0.0.1:0 --quiet
UP=$port

# write_policy FAILURE_RATE
write_policy() {
  cat >"$P/p.lua" <<EOF
local r = require "resilua"
r.breaker "up" { min_calls = 5, failure_rate = $1, open_for = "30s",
                 count = { "5xx", "timeout", "connect" } }
r.limiter "up-rps" { rate = 1000000, per = "1s", burst = 1000000 }
r.policy "p" {
  steps = {
    primary = r.http { url = "http://127.0.0.1:$UP/item", timeout = "5s",
                       guards = { "up-rps", "up" } },
    stub = r.stub { status = 200, body = "stub" },
  },
  chain = { "primary", "stub" },
}
EOF
}
write_policy 50
start serve "$RESILUA" serve -p "$P" --listen 127.0.0.1:0 --workers 2
SRV=$port

# req METHOD PATH: $code, $TMP/out (body), $TMP/hdr (headers)
req() {
  code=$(curl -sS --max-time 30 -o "$TMP/out" -D "$TMP/hdr" -w '%{http_code}' -X "$1" \
    "http://127.0.0.1:$SRV$2" 2>"$TMP/curl_err") || fail "curl $1 $2: $(cat "$TMP/curl_err")"
}
expect_code() {
  [ "$code" = "$1" ] || fail "status $code, expected $1: $(cat "$TMP/out")"
}
# served_by EXPECTED: one call, answered from EXPECTED
served_by() {
  req GET /call/p
  expect_code 200
  grep -qi "^x-resilua-served-by: $1" "$TMP/hdr" || fail "not served by $1: $(cat "$TMP/hdr")"
}
# state_is PYEXPR: true of G, the guards of /state
state_is() {
  req GET /state
  expect_code 200
  python3 -c 'import json,sys; G=json.load(open(sys.argv[1]))["guards"]; sys.exit(0 if ('"$1"') else 1)' \
    "$TMP/out" || fail "/state: not $1: $(cat "$TMP/out")"
}

t "healthy: the primary serves"
served_by primary
ok

t "force_open: the answer is the guard's state; traffic goes to the fallback with the reason"
req POST /guards/up/force_open
expect_code 200
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["guard"]=="up" and d["action"]=="force_open" and d["state"]["state"]=="forced_open" and d["state"]["override"]=="force_open", d' \
  "$TMP/out" || fail "answer: $(cat "$TMP/out")"
served_by stub
grep -qi '^x-resilua-path: primary=rejected,stub=ok' "$TMP/hdr" || fail "path: $(cat "$TMP/hdr")"
state_is 'G["up"]["override"] == "force_open" and G["up"]["state"] == "forced_open"'
# The log is written by a thread of its own: wait for the line (bounded).
for _ in $(seq 1 100); do
  grep -q 'breaker \\"up\\": admin override force_open' "$TMP/serve.err" && break
  sleep 0.1
done
grep -q 'breaker \\"up\\": admin override force_open' "$TMP/serve.err" || fail "not logged: $(cat "$TMP/serve.err")"
ok

t "the override survives a reload with new thresholds"
write_policy 40
req POST /reload
expect_code 200
state_is '"override" in G["up"] and G["up"]["state"] == "forced_open"'
served_by stub
ok

t "auto: the breaker's own rules again, starting with its open period"
req POST /guards/up/auto
expect_code 200
state_is '"override" not in G["up"] and G["up"]["state"] == "open" and G["up"]["open_remaining_ms"] > 0'
served_by stub
ok

t "reset: closed at once, the primary serves"
req POST /guards/up/reset
expect_code 200
state_is 'G["up"]["state"] == "closed" and G["up"]["backoff_level"] == 0'
served_by primary
ok

t "disable: a failing upstream is let through and trips nothing"
curl -sS --max-time 30 -o /dev/null -X POST "http://127.0.0.1:$UP/_control?fail=100"
req POST /guards/up/disable
expect_code 200
for _ in $(seq 1 20); do
  req GET /call/p
  grep -qi '^x-resilua-path: primary=5xx,stub=ok' "$TMP/hdr" || fail "path: $(cat "$TMP/hdr")"
done
state_is 'G["up"]["state"] == "disabled" and G["up"]["override"] == "disable"'
curl -sS --max-time 30 -o /dev/null -X POST "http://127.0.0.1:$UP/_control?fail=0"
req POST /guards/up/auto
state_is 'G["up"]["state"] == "closed"'
served_by primary
ok

t "a limiter forced open, then back"
req POST /guards/up-rps/force_open
expect_code 200
served_by stub
state_is 'G["up-rps"]["override"] == "force_open"'
req POST /guards/up-rps/auto
expect_code 200
served_by primary
state_is '"override" not in G["up-rps"]'
ok

t "wrong method, unknown guard, unknown action"
req GET /guards/up/reset
expect_code 405
grep -qi '^allow: POST' "$TMP/hdr" || fail "no Allow: $(cat "$TMP/hdr")"
req POST /guards/nope/reset
expect_code 404
grep -q 'no guard named' "$TMP/out" || fail "body: $(cat "$TMP/out")"
req POST /guards/up/explode
expect_code 404
grep -q 'force_open|disable|reset|auto' "$TMP/out" || fail "body: $(cat "$TMP/out")"
req POST /guards/up
expect_code 404
served_by primary
ok

done_all
