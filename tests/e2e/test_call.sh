#!/usr/bin/env bash
# `resilua call` on policies written to a temp dir: exit codes 0/1/2, one JSON line per
# call with DESIGN.md's fields, a breaker tripping and recovering over -n/--interval, the
# chain taken when route() raises, loops or returns garbage, a missing ${attr}, a 4xx
# returned as is, attributes and body reaching the policy, per-line flushing, SIGINT.
source "$(dirname "$0")/lib.sh"

P=$TMP/policies
policy "$P" basic.lua <<'LUA'
local r = require "resilua"

-- echoes what the request carried
r.policy "echo" {
  steps = {
    primary = r.lua(function(req)
      return { status = 200, body = "name=" .. tostring(req.name) .. " body=" .. tostring(req.body) }
    end),
  },
  chain = { "primary" },
}

-- fails when asked to; the stub answers 503 (outcome 5xx)
r.policy "fails" {
  steps = {
    primary = r.lua(function(req)
      if req.fail == "1" then return nil, "5xx" end
      return { status = 200, body = "fine" }
    end),
    stub = r.stub { status = 503, body = "try again later" },
  },
  chain = { "primary", "stub" },
}

-- a business error from the primary: never masked by the fallback
r.policy "notfound" {
  steps = {
    primary = r.lua(function(req) return { status = 404, body = "no such user" } end),
    stub = r.stub { status = 200, body = "stub" },
  },
  chain = { "primary", "stub" },
}

-- a step that raises: outcome error with the message, then the fallback
r.policy "raises" {
  steps = {
    primary = r.lua(function(req) error("boom in primary") end),
    stub = r.stub { status = 200, body = "stub" },
  },
  chain = { "primary", "stub" },
}

-- a cache keyed by an attribute the request may lack
r.policy "keyed" {
  steps = {
    cache = r.local_cache { key = "user:${id}", ttl = "1m" },
  },
  chain = { "cache" },
}
LUA

policy "$P" routes.lua <<'LUA'
local r = require "resilua"

local function steps()
  return {
    a = r.stub { status = 200, body = "a" },
    b = r.stub { status = 200, body = "b" },
  }
end

r.policy "route.raises" {
  steps = steps(), chain = { "b" },
  route = function(req, sig) error("route exploded") end,
}

r.policy "route.loops" {
  steps = steps(), chain = { "b" },
  route = function(req, sig) while true do end end,
}

r.policy "route.loops_pcall" {
  steps = steps(), chain = { "b" },
  route = function(req, sig)
    while true do pcall(function() while true do end end) end
  end,
}

r.policy "route.garbage" {
  steps = steps(), chain = { "b" },
  route = function(req, sig) return 42 end,
}

r.policy "route.unknown_step" {
  steps = steps(), chain = { "b" },
  route = function(req, sig) return { "a_typo" } end,
}

local A = { "a" }
r.policy "route.ok" {
  steps = steps(), chain = { "b" },
  route = function(req, sig) return A end,
}
LUA

# A flaky upstream behind a breaker with small numbers: calls 4..7 that reach it fail, so
# the breaker trips at call 6 (3 of 6 failed: 50%), its first probe (upstream call 7)
# fails and re-opens it, the second (upstream call 8) succeeds and closes it.  The CLI runs
# on the real clock: the open period (1 s) is 20 of the test's intervals (50 ms), so a
# call lands in it unless the machine stalls for a second, and a slow machine only spaces
# the calls further apart, which leaves more closed calls at the end, never fewer.
policy "$P" flaky.lua <<'LUA'
local r = require "resilua"

r.breaker "flaky-api" {
  window = "10s", buckets = 10, min_calls = 5, failure_rate = 50,
  open_for = "1s", backoff = { factor = 1, max = "1s", jitter = 0 }, probes = 1,
}

local n = 0
r.policy "flaky" {
  steps = {
    primary = r.lua { guards = { "flaky-api" }, run = function(req)
      n = n + 1
      if n >= 4 and n <= 7 then return nil, "5xx" end
      return { status = 200, body = "call " .. n }
    end },
    stub = r.stub { status = 503, body = "down" },
  },
  chain = { "primary", "stub" },
}
LUA

t "one call: exit 0, one JSON line with every field"
run call -p "$P" echo name=ada
expect_rc 0
[ "$(wc -l <"$TMP/out")" -eq 1 ] || fail "expected one line"
expect_json 'R[0]["policy"] == "echo" and R[0]["status"] == 200 and R[0]["outcome"] == "ok"'
expect_json 'R[0]["served_by"] == "primary" and R[0]["degraded"] is False'
expect_json 'path(R[0]) == "primary=ok" and R[0]["path"][0]["attempts"] == 1'
expect_json '"error" not in R[0]["path"][0]'
ok

t "attributes and body reach the policy"
run call -p "$P" echo name=ada "body={\"x\": 1}"
expect_rc 0
expect_json 'R[0]["body"] == "name=ada body={\"x\": 1}"'
run call -p "$P" echo "name=a=b c"
expect_json 'R[0]["body"] == "name=a=b c body=nil"' "a value may hold = and spaces"
ok

t "options may follow the policy name; -- ends options"
run call echo -p "$P" name=x
expect_rc 0
run call -p "$P" -- echo name=-x
expect_rc 0
expect_json 'R[0]["body"].startswith("name=-x")'
ok

t "a failing policy exits 1; the path carries the error"
run call -p "$P" fails fail=1
expect_rc 1
expect_json 'R[0]["outcome"] == "5xx" and R[0]["status"] == 503 and R[0]["served_by"] == "stub"'
expect_json 'R[0]["degraded"] is True and path(R[0]) == "primary=5xx,stub=5xx"'
run call -p "$P" fails
expect_rc 0
ok

t "-n COUNT prints COUNT lines; exit 1 when any is not ok"
run call -p "$P" -n 3 fails fail=1
expect_rc 1
expect_json 'len(R) == 3'
run call -p "$P" -n 5 echo
expect_rc 0
expect_json 'len(R) == 5 and all(r["outcome"] == "ok" for r in R)'
ok

t "a 4xx from a Lua step is returned as is, no fallback"
run call -p "$P" notfound
expect_rc 1
expect_json 'R[0]["outcome"] == "4xx" and R[0]["status"] == 404 and R[0]["body"] == "no such user"'
expect_json 'steps(R[0]) == ["primary"] and R[0]["degraded"] is False'
ok

t "a Lua step that raises: error with its message, then the fallback"
run call -p "$P" raises
expect_rc 0
expect_json 'path(R[0]) == "primary=error,stub=ok" and "boom in primary" in R[0]["path"][0]["error"]'
ok

t "a missing \${attr} is outcome error naming the attribute"
run call -p "$P" keyed
expect_rc 1
expect_json 'R[0]["outcome"] == "error" and R[0]["path"][0]["outcome"] == "error"'
expect_json '"id" in R[0]["path"][0]["error"]' "the error names the attribute"
run call -p "$P" keyed id=7
expect_json 'R[0]["outcome"] == "miss"' "with the attribute, an empty cache misses"
ok

t "route() that raises: the call takes chain and still answers"
run call -p "$P" route.raises
expect_rc 0
expect_json 'R[0]["served_by"] == "b" and steps(R[0]) == ["b"]'
expect_json 'R[0].get("route_failed") is True'
expect_err "route exploded"
ok

t "route() returning garbage or an unknown step takes chain"
for p in route.garbage route.unknown_step; do
  run call -p "$P" "$p"
  expect_rc 0
  expect_json 'R[0]["served_by"] == "b" and R[0].get("route_failed") is True' "$p takes chain"
done
run call -p "$P" route.ok
expect_json 'R[0]["served_by"] == "a" and "route_failed" not in R[0]' "a good route is followed"
ok

t "route() that loops forever is stopped; the call takes chain"
start=$(date +%s%N)
run call -p "$P" -n 2 route.loops
end=$(date +%s%N)
expect_rc 0
expect_json 'len(R) == 2 and all(r["served_by"] == "b" and r.get("route_failed") for r in R)'
[ $(((end - start) / 1000000)) -lt 5000 ] || fail "took $(((end - start) / 1000000)) ms"
run call -p "$P" route.loops_pcall
expect_rc 0
expect_json 'R[0]["served_by"] == "b"' "pcall cannot catch the limit"
ok

t "-n 60 --interval 50ms: the breaker trips, rejects, and recovers"
start=$(date +%s%N)
run call -p "$P" -n 60 --interval 50ms flaky
end=$(date +%s%N)
expect_rc 1
expect_json 'len(R) == 60'
expect_json 'all(path(r) == "primary=ok" for r in R[:3])' "calls 1-3 ok"
expect_json 'first(lambda r: path(r) == "primary=5xx,stub=5xx") == 3' "call 4 fails over to the stub"
expect_json 'first(lambda r: entry(r, "primary")["outcome"] == "rejected") is not None' "the breaker trips"
expect_json 'first(lambda r: path(r) == "primary=ok", first(lambda r: entry(r, "primary")["outcome"] == "rejected")) is not None' "it recovers: primary ok after rejections"
expect_json 'first(lambda r: entry(r, "primary")["outcome"] == "rejected", first(lambda r: path(r) == "primary=5xx,stub=5xx", first(lambda r: entry(r, "primary")["outcome"] == "rejected"))) is not None' "a failed probe re-opens it"
expect_json 'all(path(r) == "primary=ok" for r in R[-3:])' "closed again at the end"
expect_json 'all(r["served_by"] == "stub" and r["degraded"] for r in R if entry(r, "primary")["outcome"] == "rejected")' "rejected calls are served by the stub"
[ $(((end - start) / 1000000)) -ge 2900 ] || fail "59 intervals of 50ms took only $(((end - start) / 1000000)) ms"
ok

t "--interval units"
for d in 0 250us 1ms 0.01s; do
  run call -p "$P" -n 2 --interval "$d" echo
  [ "$rc" -eq 0 ] || fail "--interval $d: exit $rc"
done
run call -p "$P" -n 2 --interval=1ms echo
expect_rc 0
ok

# wait_lines FILE N: until FILE has N lines (30 s at most)
wait_lines() {
  for _ in $(seq 1 300); do
    [ "$(wc -l <"$1")" -ge "$2" ] && return 0
    sleep 0.1
  done
  fail "$1 never had $2 lines: $(cat "$1")"
}

t "results are flushed line by line"
set +e
# The second call is a minute away: the first line must show while the process runs.
"$RESILUA" call -p "$P" -n 2 --interval 60s echo >"$TMP/stream" 2>"$TMP/err" &
pid=$!
set -e
wait_lines "$TMP/stream" 1
kill -0 "$pid" 2>/dev/null || fail "exited before its second call"
[ "$(wc -l <"$TMP/stream")" -eq 1 ] || fail "one line before the second call: $(cat "$TMP/stream")"
python3 -c 'import json,sys; json.loads(open(sys.argv[1]).read())' "$TMP/stream" || fail "the line is not complete JSON"
kill -INT "$pid"
set +e
wait "$pid"
rc=$?
set -e
expect_rc 130
no_sanitizer_report "$TMP/err"
ok

t "SIGINT stops after the call in flight: exit 130, complete lines"
set +e
"$RESILUA" call -p "$P" -n 1000 --interval 100ms echo >"$TMP/out" 2>"$TMP/err" &
pid=$!
set -e
wait_lines "$TMP/out" 2
kill -INT "$pid"
set +e
wait "$pid"
rc=$?
set -e
expect_rc 130
no_sanitizer_report "$TMP/err"
expect_json 'len(R) >= 2 and len(R) < 1000'
ok

t "unknown policy: exit 2, the known ones listed"
run call -p "$P" nosuch
expect_rc 2
expect_err 'unknown policy "nosuch"'
expect_err "echo"
expect_empty_out
ok

t "a policy directory that does not load: exit 2 with the load errors"
run call -p "$TMP/nowhere" echo
expect_rc 2
expect_empty_out
B=$TMP/broken
policy "$B" p.lua <<'LUA'
local r = require "resilua"
r.breaker "b" { failure_rate = 150 }
LUA
run call -p "$B" echo
expect_rc 2
expect_err_line "$B/p.lua:2: breaker \"b\": failure_rate must be in 0..100, got 150"
expect_empty_out
ok

t "usage errors exit 2"
for args in "" "-n 0 echo" "-n abc echo" "-n -3 echo" "-n" "--interval 100 echo" \
            "--interval 5parsecs echo" "--interval -1s echo" "--bogus echo" "echo notanattr" \
            "echo =v"; do
  # shellcheck disable=SC2086
  run call -p "$P" $args
  [ "$rc" -eq 2 ] || fail "resilua call -p P $args: exit $rc, expected 2"
  [ -s "$TMP/err" ] || fail "resilua call $args: no message"
  expect_empty_out
done
ok

t "--redis takes HOST:PORT"
run call -p "$P" --redis localhost echo
expect_rc 2
expect_err "redis: expected HOST:PORT, got \"localhost\""
ok

t "call --help"
run call --help
expect_rc 0
expect_out "usage: resilua"
ok

done_all
