#!/usr/bin/env bash
# The embedding examples run as a user would run them, and their output is checked.
set -u
bin=${RSL_BINARY_DIR:?}/example_threaded
out=$(mktemp)
trap 'rm -f "$out"' EXIT
fail() { echo "FAIL: $*"; cat "$out"; echo "0 passed, 1 failed"; exit 1; }

"$bin" "${RSL_SOURCE_DIR:?}/examples/policies" >"$out" 2>&1 || fail "example_threaded exited $?"
grep -q '^summary: 1000 calls, 1000 completed exactly once, 1000 ok, 0 errors$' "$out" \
  || fail "summary line"
[ "$(grep -c '^thread [0-3] ' "$out")" -eq 4 ] || fail "one line per host thread"
grep -q '"inventory-db":{"kind":"breaker"' "$out" || fail "guard state"
grep -Eq '^thread 1 \(vip \): 250 calls, 250 ok: backend [0-9]+, cache [1-9]' "$out" \
  || fail "VIP calls kept the cache when the backend failed"
grep -Eq '^thread 0 \(free\): 250 calls, 250 ok: backend [0-9]+, cache 0, stub [1-9]' "$out" \
  || fail "free calls got the stub, never the cache"
echo "ok 1 - example_threaded"

bin=${RSL_BINARY_DIR}/example_libuv
"$bin" "${RSL_SOURCE_DIR}/examples/policies" >"$out" 2>&1 || fail "example_libuv exited $?"
grep -Eq '^summary: 40 calls, 40 answered once, 40 ok, [1-9][0-9]* from the stub, [1-9][0-9]* from the cache, loop closed cleanly: yes$' "$out" \
  || fail "example_libuv summary"
[ "$(grep -c '^{"policy":"inventory.stock"' "$out")" -eq 40 ] || fail "one JSON line per call"
grep -q '"error":"status 503"' "$out" || fail "a 503 from the C step shows in the path"
echo "ok 2 - example_libuv"
echo "2 passed, 0 failed"
