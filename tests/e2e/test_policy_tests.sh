#!/usr/bin/env bash
# `resilua test` as a policy author runs it: the shipped policies/tests pass; a copy of
# storefront.lua with its VIP rule flipped fails, naming the expectation's file and line
# with what was expected and what came; a broken test file and a bad upstream get
# file:line errors; usage errors exit 2.
source "$(dirname "$0")/lib.sh"

t "the shipped policy tests pass (TAP, exit 0)"
run test -p "$RSL_SOURCE_DIR/policies" "$RSL_SOURCE_DIR/policies/tests"
expect_rc 0
expect_out "# $RSL_SOURCE_DIR/policies/tests/test_storefront.lua"
expect_out "ok 1 - $RSL_SOURCE_DIR/policies/tests/test_storefront.lua:"
grep -q '^1\.\.[0-9][0-9]*$' "$TMP/out" || fail "no TAP plan line"
grep -q '^not ok' "$TMP/out" && fail "a shipped test failed"
ok

t "a deliberate bug: the VIP rule flipped, the test names the line that catches it"
mkdir -p "$TMP/bug/tests"
cp "$RSL_SOURCE_DIR"/policies/*.lua "$TMP/bug/"
sed -i 's/if req.tier == "vip" then/if req.tier ~= "vip" then/' "$TMP/bug/storefront.lua"
grep -q 'req.tier ~= "vip"' "$TMP/bug/storefront.lua" || fail "the rule was not flipped"
cp "$RSL_SOURCE_DIR/policies/tests/test_storefront.lua" "$TMP/bug/tests/"
run test -p "$TMP/bug" "$TMP/bug/tests"
expect_rc 1
# A VIP with the upstream down now gets the static page: the line of that served_by.
line=$(grep -n '^  .served_by("cache").path{ "primary=connect", "cache=ok" }' \
  "$TMP/bug/tests/test_storefront.lua" | head -1 | cut -d: -f1)
[ -n "$line" ] || fail "the expectation is not in the test file"
expect_out "not ok"
grep -q "^not ok [0-9]* - $TMP/bug/tests/test_storefront.lua:$line: served_by \"cache\"$" "$TMP/out" ||
  fail "no failure naming test_storefront.lua:$line"
grep -A2 "test_storefront.lua:$line: served_by" "$TMP/out" | grep -q '^#   expected: "cache"$' ||
  fail "no expected line"
grep -A2 "test_storefront.lua:$line: served_by" "$TMP/out" | grep -q '^#   got:      "stub"$' ||
  fail "no got line"
ok

t "a broken test file and a bad upstream: file:line, the other files still run"
mkdir -p "$TMP/t2"
cat >"$TMP/t2/test_a_broken.lua" <<'LUA'
expect(call("storefront.product", { id = "1", tier = "vip" })).served_by("primary")
local x = = 1
LUA
cat >"$TMP/t2/test_b_upstream.lua" <<'LUA'
expect(call("storefront.product", { id = "1", tier = "vip" })).served_by("primary")
call("storefront.product", { id = "1" }, { primary = "sideways" })
LUA
cat >"$TMP/t2/test_c_fine.lua" <<'LUA'
expect(call("storefront.product", { id = "1", tier = "vip" })).served_by("primary")
LUA
run test -p "$RSL_SOURCE_DIR/policies" "$TMP/t2"
expect_rc 1
expect_out "$TMP/t2/test_a_broken.lua:2:"
expect_out "$TMP/t2/test_b_upstream.lua:2: upstream of primary: \"sideways\" is not ok, down, timeout, error or a status"
expect_out "ok 4 - $TMP/t2/test_c_fine.lua:1: served_by \"primary\""
ok

t "usage errors and a directory without tests"
run test
expect_rc 2
expect_err "usage: resilua test"
mkdir -p "$TMP/empty"
run test -p "$RSL_SOURCE_DIR/policies" "$TMP/empty"
expect_rc 1
expect_err "no test_*.lua in"
ok

done_all
