#!/usr/bin/env bash
# `resilua check` as a policy author uses it: the shipped policies pass and are listed;
# broken policy files fail with exit 1 and exact `file:line: message` lines on stderr;
# usage errors exit 2.
source "$(dirname "$0")/lib.sh"
SHIPPED=$RSL_SOURCE_DIR/policies

t "check lists the shipped policies and guards"
run check -p "$SHIPPED"
expect_rc 0
for name in catalog.product search.query pricing.quote \
            catalog-api search-rps search-conc pricing-api; do
  expect_out "$name"
done
expect_out "breaker"
expect_out "limiter"
expect_out "bulkhead"
expect_out "primary -> cache -> stub"
[ ! -s "$TMP/err" ] || fail "the shipped policies should check without warnings"
ok

t "check defaults to ./policies"
(cd "$RSL_SOURCE_DIR" && run check && [ "$rc" -eq 0 ]) || fail "check in the source dir failed"
ok

t "check --policies=DIR and -pDIR"
run check --policies="$SHIPPED"
expect_rc 0
run check "-p$SHIPPED"
expect_rc 0
ok

t "a route returning a step that does not exist is reported where it can be seen"
D=$TMP/routewarn
policy "$D" p.lua <<'LUA'
local r = require "resilua"
r.policy "p" {
  steps = { primary = r.stub {}, stub = r.stub {} },
  chain = { "primary", "stub" },
  route = function(req)
    if req.tier == "vip" then return { "primary", "cahce" } end
    return { "stubb" }
  end,
}
LUA
run check -p "$D"
expect_rc 0
expect_err_line "$D/p.lua:6: policy \"p\": route may return unknown step \"cahce\""
expect_err_line "$D/p.lua:7: policy \"p\": route may return unknown step \"stubb\""
ok

t "failure_rate out of range: exact file:line: message"
D=$TMP/rate
policy "$D" p.lua <<'LUA'
local r = require "resilua"

r.breaker "b" { window = "10s", failure_rate = 150 }
LUA
run check -p "$D"
expect_rc 1
expect_err_line "$D/p.lua:3: breaker \"b\": failure_rate must be in 0..100, got 150"
expect_empty_out
ok

t "the line is the declaration's, further down a file"
D=$TMP/line
policy "$D" p.lua <<'LUA'
local r = require "resilua"
r.breaker "fine" { window = "10s", failure_rate = 50 }
r.limiter "l" { rate = 10, per = "1s" }
-- a comment

r.breaker "bad" {
  window = "10s",
  failure_rate = 101,
}
LUA
run check -p "$D"
expect_rc 1
expect_err_line "$D/p.lua:6: breaker \"bad\": failure_rate must be in 0..100, got 101"
ok

t "unknown field is an error naming it"
D=$TMP/unknown
policy "$D" p.lua <<'LUA'
local r = require "resilua"
r.breaker "b" { window = "10s", colour = "red" }
LUA
run check -p "$D"
expect_rc 1
expect_err_line "$D/p.lua:2: breaker \"b\": unknown field \"colour\""
ok

t "unknown field in a step is an error naming it"
D=$TMP/stepfield
policy "$D" p.lua <<'LUA'
local r = require "resilua"
r.policy "p" {
  steps = { s = r.stub { status = 200, bodyy = "x" } },
  chain = { "s" },
}
LUA
run check -p "$D"
expect_rc 1
expect_err_line "$D/p.lua:3: policy \"p\": step \"s\": unknown field \"bodyy\""
ok

t "unknown step in chain"
D=$TMP/chain
policy "$D" p.lua <<'LUA'
local r = require "resilua"
r.policy "p" {
  steps = { primary = r.stub { status = 200, body = "x" } },
  chain = { "primary", "nope" },
}
LUA
run check -p "$D"
expect_rc 1
expect_err_line "$D/p.lua:2: policy \"p\": chain: unknown step \"nope\""
ok

t "a guard that is not declared"
D=$TMP/guard
policy "$D" p.lua <<'LUA'
local r = require "resilua"
r.policy "p" {
  steps = { primary = r.lua { run = function() return { status = 200 } end, guards = { "ghost" } } },
  chain = { "primary" },
}
LUA
run check -p "$D"
expect_rc 1
expect_err_line "$D/p.lua:2: policy \"p\": step \"primary\": unknown guard \"ghost\""
ok

t "a duration without a unit"
D=$TMP/dur
policy "$D" p.lua <<'LUA'
local r = require "resilua"
r.breaker "b" { open_for = 5 }
LUA
run check -p "$D"
expect_rc 1
expect_err_line "$D/p.lua:2: breaker \"b\": open_for must be a duration like \"150ms\", got 5"
ok

t "a malformed r.http is a load error naming its line, not a crash"
D=$TMP/http
policy "$D" p.lua <<'LUA'
local r = require "resilua"
r.policy "p" {
  steps = { primary = r.http { url = "127.0.0.1:9/x", timeout = "100ms" } },
  chain = { "primary" },
}
LUA
run check -p "$D"
expect_rc 1
expect_err "$D/p.lua:3: policy \"p\": step \"primary\": url must start with http:// or https://"
ok

run check -h
expect_rc 0
expect_out "usage: resilua"
run version
expect_rc 0
grep -qE '^resilua [0-9]+\.[0-9]+\.[0-9]+$' "$TMP/out" || fail "version line"
run serve --help
expect_rc 0
expect_out "serve [-p DIR] [--listen HOST:PORT]"
run serve --bogus
expect_rc 2
expect_err "unknown option --bogus"
ok

done_all
