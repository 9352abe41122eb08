#!/usr/bin/env bash
# The demo's parts, as scripts/demo.sh runs them but on ephemeral ports: the shipped
# policies/storefront.lua served by `resilua serve` in front of examples/flaky (its
# 127.0.0.1:9000 rewritten to the port the upstream got), VIP kept on the cache and free
# users on the stub while the upstream fails, the breaker opening and closing again, and
# scripts/demo_traffic.py driving a short run without a single error.
source "$(dirname "$0")/lib.sh"
set -e
FLAKY=${RSL_BINARY_DIR:?}/example_flaky
P=$TMP/policies
mkdir -p "$P"

pids=()
trap 'for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$TMP"' EXIT

# start NAME CMD...: waits for "listening HOST:PORT" on stdout; sets $port
start() {
  local name=$1; shift
  : >"$TMP/$name.out" # before the server starts: sed below must find it (set -e)
  "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
  pids+=($!)
  for _ in $(seq 1 100); do
    port=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$TMP/$name.out")
    [ -n "$port" ] && return 0
    sleep 0.1
  done
  cp "$TMP/$name.err" "$TMP/err"
  fail "$name did not print its address"
}

# call PATH: $code, $TMP/body, $TMP/hdr.txt
call() {
  code=$(curl -sS --max-time 5 -o "$TMP/body" -D "$TMP/hdr" -w '%{http_code}' "http://127.0.0.1:$SC$1")
  tr -d '\r' <"$TMP/hdr" >"$TMP/hdr.txt"
}
served_by() { sed -n 's/^X-Resilua-Served-By: //Ip' "$TMP/hdr.txt"; }
breaker() {
  curl -sS --max-time 5 "http://127.0.0.1:$SC/state" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["guards"]["products-api"]["state"])'
}
control() { curl -sS --max-time 5 -o /dev/null -X POST "http://127.0.0.1:$UP/_control?$1"; }

t "the upstream and the sidecar start with the shipped storefront policy"
start flaky "$FLAKY" --listen 127.0.0.1:0 --quiet
UP=$port
grep -q '127.0.0.1:9000' "$RSL_SOURCE_DIR/policies/storefront.lua" || fail "storefront.lua no longer names 127.0.0.1:9000"
sed "s/127\.0\.0\.1:9000/127.0.0.1:$UP/" "$RSL_SOURCE_DIR/policies/storefront.lua" >"$P/storefront.lua"
start serve "$RESILUA" serve -p "$P" --listen 127.0.0.1:0 --workers 2
SC=$port
ok

t "healthy: both tiers served by the upstream, through r.expose"
for id in 1 2 3; do
  call "/products/$id?tier=vip"
  [ "$code" = 200 ] && [ "$(served_by)" = primary ] || fail "vip $id: $code $(served_by)"
done
call "/products/1?tier=free"
[ "$code" = 200 ] && [ "$(served_by)" = primary ] || fail "free: $code $(served_by)"
grep -q '"path":"/products/1"' "$TMP/body" || fail "body $(cat "$TMP/body")"
ok

t "upstream failing: VIP from the cache, free users the stub, the breaker opens"
control fail=100
for i in $(seq 1 12); do
  call "/products/2?tier=vip"
  [ "$code" = 200 ] && [ "$(served_by)" = cache ] || fail "vip call $i: $code $(served_by)"
  grep -qix 'X-Resilua-Degraded: 1' "$TMP/hdr.txt" || fail "vip call $i not marked degraded"
  grep -q '"path":"/products/2"' "$TMP/body" || fail "vip call $i: not the cached answer: $(cat "$TMP/body")"
done
call "/products/3?tier=free"
[ "$code" = 200 ] && [ "$(served_by)" = stub ] || fail "free: $code $(served_by)"
[ "$(breaker)" = open ] || fail "breaker $(breaker) after 12 failing calls"
call "/products/3?tier=free"
grep -qix 'X-Resilua-Path: stub=ok' "$TMP/hdr.txt" || fail "free while open: $(grep -i x-resilua-path "$TMP/hdr.txt")"
ok

t "upstream back: a probe closes the breaker within its open period (1-4 s)"
control fail=0
closed=""
for _ in $(seq 1 80); do
  call "/products/1?tier=vip"
  if [ "$(breaker)" = closed ]; then closed=1; break; fi
  sleep 0.1
done
[ -n "$closed" ] || fail "breaker still $(breaker) 8 s after the upstream came back"
call "/products/1?tier=free"
[ "$(served_by)" = primary ] || fail "free after recovery: $(served_by)"
ok

t "demo_traffic.py: 8 s of mixed traffic through an outage, not one error"
set +e
python3 "$RSL_SOURCE_DIR/scripts/demo_traffic.py" "$SC" "$UP" "$TMP/serve.err" 8 >"$TMP/out" 2>"$TMP/err"
rc=$?
set -e
[ "$rc" = 0 ] || { cat "$TMP/out" >&2; fail "demo_traffic.py exited $rc"; }
grep -q ' 0 errors' "$TMP/out" || { cat "$TMP/out" >&2; fail "errors in the run"; }
grep -q 'VIP customers got real data' "$TMP/out" || fail "no summary"
[ "$(grep -c '^ *[0-9]*s ' "$TMP/out")" = 8 ] || { cat "$TMP/out" >&2; fail "expected 8 rows"; }
ok

t "SIGTERM: the sidecar exits 0 with no sanitizer report"
kill -TERM "${pids[1]}"
wait "${pids[1]}" || fail "serve exited $?"
no_sanitizer_report "$TMP/serve.err"
ok

done_all
