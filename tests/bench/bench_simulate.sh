#!/usr/bin/env bash
# bench_simulate.sh -- how fast `resilua simulate` runs a scenario: the storefront outage
# of policies/scenarios/ stretched to 10 minutes at 1,000 calls/s (600k calls), next to a
# baseline measured in the same run: the same traffic through a policy of one r.stub step
# (the simulator's own cost per call: arrivals, the model, the per-second lines).  Prints
# the wall time and ns per simulated call of each, and their ratio.  No speed is asserted.
#
#   bash tests/bench/bench_simulate.sh [--smoke]
#
#   --smoke   30 simulated seconds instead of 10 minutes (what ctest runs, label bench)
#
# $RESILUA names the binary (ctest sets it), else build/resilua under the source tree.
set -euo pipefail
RSL_SOURCE_DIR=${RSL_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
RESILUA=${RESILUA:-$RSL_SOURCE_DIR/build/resilua}
DURATION=10m
[ "${1:-}" = --smoke ] && DURATION=30s
TMP=$(mktemp -d /tmp/rsl-bench-sim-XXXXXX)
trap 'rm -rf "$TMP"' EXIT

sed -e "s/duration = \"60s\"/duration = \"$DURATION\"/" -e 's/rate = 200/rate = 1000/' \
  -e 's/from = "15s", to = "30s"/from = "2m", to = "4m"/' \
  -e 's/from = "30s", to = "45s"/from = "4m", to = "6m"/' \
  "$RSL_SOURCE_DIR/policies/scenarios/storefront_outage.lua" >"$TMP/outage.lua"
mkdir -p "$TMP/stub"
cat >"$TMP/stub/stub.lua" <<'LUA'
local r = require "resilua"
r.policy "storefront.product" { steps = { s = r.stub { status = 200, body = "ok" } } }
LUA

# timed NAME DIR: runs the scenario on DIR; sets ms and calls
timed() {
  local t0 t1
  t0=$(date +%s%N)
  "$RESILUA" simulate -p "$2" "$TMP/outage.lua" >"$TMP/$1.out"
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
  calls=$(sed -n 's/^simulated .*: \([0-9]*\) calls in .*/\1/p' "$TMP/$1.out")
  [ -n "$calls" ] && [ "$calls" -gt 0 ] || { cat "$TMP/$1.out" >&2; echo "bench_simulate: no calls" >&2; exit 1; }
}

timed stub "$TMP/stub"
stub_ms=$ms stub_calls=$calls
timed storefront "$RSL_SOURCE_DIR/policies"
echo "bench_simulate: $DURATION of the storefront outage at 1000 calls/s"
awk -v sm="$stub_ms" -v sc="$stub_calls" -v m="$ms" -v c="$calls" 'BEGIN {
  printf "  %-34s %8d calls %7d ms %7.0f ns/call\n", "storefront (route, breaker, cache)", c, m, m * 1e6 / c
  printf "  %-34s %8d calls %7d ms %7.0f ns/call\n", "baseline: one r.stub step", sc, sm, sm * 1e6 / sc
  if (sm > 0) printf "  storefront/baseline per call: %.2f\n", (m / c) / (sm / sc)
}'
