#!/usr/bin/env bash
# Priorities and shedding as an operator sees them through `resilua serve`: a limiter
# that keeps half its burst for priority 0 (the policy's `priority` function reads the
# tier from the query) lets five free calls in, then answers free calls 429 with
# Retry-After, while VIP calls still pass; /state and /metrics show the reserve, what it
# shed and the load signal; bad shedding flags are usage errors.
source "$(dirname "$0")/lib.sh"
set -e
command -v curl >/dev/null || { echo "curl is required (scripts/setup.sh installs it)"; exit 1; }
P=$TMP/policies
mkdir -p "$P"
cat >"$P/p.lua" <<'EOF'
local r = require "resilua"
r.limiter "quota" { rate = 1, per = "1h", burst = 10, reserve = { [0] = 0.5 } }
r.policy "p" {
  priority = function(req) return req.tier == "vip" and 0 or 1 end,
  steps = { s = r.stub { status = 200, body = "ok", guards = { "quota" } } },
}
EOF
start serve "$RESILUA" serve -p "$P" --listen 127.0.0.1:0 --shed-above 0.9 --max-shed 0
SRV=$port

req() {
  code=$(curl -sS --max-time 30 -o "$TMP/out" -D "$TMP/hdr" -w '%{http_code}' \
    "http://127.0.0.1:$SRV$1" 2>"$TMP/curl_err") || fail "curl $1: $(cat "$TMP/curl_err")"
}

t "free calls spend down to the reserve"
for i in 1 2 3 4 5; do
  req "/call/p?tier=free"
  [ "$code" = 200 ] || fail "free call $i: status $code"
done
ok

t "then a free call is shed: 429, Retry-After, the reason"
req "/call/p?tier=free"
[ "$code" = 429 ] || fail "status $code, expected 429"
grep -qi '^retry-after: 1' "$TMP/hdr" || fail "no Retry-After: $(cat "$TMP/hdr")"
grep -qi '^x-resilua-outcome: rejected' "$TMP/hdr" || fail "outcome: $(cat "$TMP/hdr")"
ok

t "VIP calls take the reserve"
for i in 1 2 3 4 5; do
  req "/call/p?tier=vip"
  [ "$code" = 200 ] || fail "VIP call $i: status $code"
done
req "/call/p?tier=vip"
[ "$code" = 503 ] || fail "an empty limiter: status $code, expected 503"
ok

t "/state and /metrics show the reserve and the shed"
req /state
python3 -c 'import json,sys; G=json.load(open(sys.argv[1])); q=G["guards"]["quota"]
assert q["usable"][:2] == [1.0, 0.5], q
assert q["shed"][1] == 1, q
assert "pressure" in G["load"], G' "$TMP/out" || fail "/state: $(cat "$TMP/out")"
req /metrics
grep -q '^resilua_guard_shed_total{guard="quota",priority="1"} 1$' "$TMP/out" || fail "no shed metric"
grep -q '^resilua_pressure ' "$TMP/out" || fail "no resilua_pressure"
grep -q '^resilua_shed_total{reason="deadline"} 0$' "$TMP/out" || fail "no deadline sheds metric"
ok

t "bad shedding flags are usage errors"
run serve -p "$P" --shed-above 1.5
expect_rc 2
expect_err "--shed-above wants a number 0..1"
ok

done_all
