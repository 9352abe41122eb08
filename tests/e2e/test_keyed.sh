#!/usr/bin/env bash
# Per-key guards through `resilua serve`: 100,000 distinct tenants (and one hot tenant in
# every tenth request) through a keyed limiter with max_keys = 1000 on 2 workers.  The
# sidecar's RSS stays bounded (VmRSS after the 100,000 against after a warm-up of 2,000,
# printed; the bound asserted is a generous +64 MB), /metrics has at most top_k + 1 series
# per metric for that guard (and passes promtool when installed), /state shows at most
# 1000 keys, the evictions, and the hot tenant on top; a reload keeps the keys.
source "$(dirname "$0")/lib.sh"
set -e
command -v curl >/dev/null || { echo "curl is required (scripts/setup.sh installs it)"; exit 1; }
KEYS="python3 $RSL_SOURCE_DIR/tests/e2e/keys.py"
P=$TMP/policies
mkdir -p "$P"
cat >"$P/p.lua" <<'EOL'
local r = require "resilua"
r.limiter "tenant-rps" { rate = 100, per = "1s", burst = 10,
                         key = "${tenant}", max_keys = 1000, top_k = 10 }
r.policy "api" {
  steps = {
    primary = r.stub { status = 200, body = "ok", guards = { "tenant-rps" } },
    busy    = r.stub { status = 429, body = "slow down" },
  },
  chain = { "primary", "busy" },
}
EOL

t "check lists the keyed limiter"
run check -p "$P"
expect_rc 0
ok

t "serve"
# An ASan build keeps freed memory in quarantine (256 MB by default), which would count as
# growth: a small one here.  Other builds ignore the variable.
ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=8 \
  start srv "$RESILUA" serve -p "$P" --listen 127.0.0.1:0 --workers 2
SPID=${pids[-1]}
ok

rss_kb() {
  sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB$/\1/p' "/proc/$SPID/status"
}

t "a warm-up of 2,000 tenants fills the table"
$KEYS "$port" call/api tenant 2000 60 >"$TMP/warm.json"
python3 - "$TMP/warm.json" <<'EOL' || fail "warm-up: $(cat "$TMP/warm.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["sent"] == 2000 and r["errors"] == 0 and r["codes"].get("200") == 2000, r
EOL
curl -sf "http://127.0.0.1:$port/state" >"$TMP/state0.json" || fail "GET /state"
python3 - "$TMP/state0.json" <<'EOL' || fail "state after the warm-up: $(head -c 2000 "$TMP/state0.json")"
import json, sys
g = json.load(open(sys.argv[1]))["guards"]["tenant-rps"]
assert g["keys"] == 1000 and g["max_keys"] == 1000, g
EOL
RSS0=$(rss_kb)
ok

t "100,000 distinct tenants, every tenth request the hot one"
$KEYS "$port" call/api tenant 100000 200 --hot hot 10 >"$TMP/load.json"
RSS1=$(rss_kb)
python3 - "$TMP/load.json" <<'EOL' || fail "load: $(cat "$TMP/load.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["sent"] == 100000 and r["errors"] == 0, r
# 90,000 fresh tenants each have a full bucket; the hot one gets 100/s + 10.
assert r["codes"].get("200", 0) >= 90000 and r["codes"].get("429", 0) > 0, r
assert r["codes"].get("200", 0) + r["codes"].get("429", 0) == 100000, r
EOL
GROWTH=$((RSS1 - RSS0))
echo "# VmRSS: ${RSS0} kB after 2,000 tenants, ${RSS1} kB after 100,000 more (growth ${GROWTH} kB); $(cat "$TMP/load.json")"
[ "$GROWTH" -lt 65536 ] || fail "RSS grew by $GROWTH kB (from $RSS0 kB) over 100,000 keys with max_keys = 1000"
ok

t "/metrics: at most top_k + 1 = 11 series per metric for the keyed guard"
curl -sf "http://127.0.0.1:$port/metrics" >"$TMP/out" || fail "GET /metrics"
for m in resilua_keyed_calls_total resilua_guard_rejections_total; do
  n=$(grep -c "^$m{guard=\"tenant-rps\"" "$TMP/out" || true)
  echo "# $m series for tenant-rps: $n"
  [ "$n" -ge 1 ] && [ "$n" -le 11 ] || fail "$n series of $m for tenant-rps"
done
expect_out 'resilua_keyed_calls_total{guard="tenant-rps",key="hot"} 10'
expect_out 'resilua_keyed_calls_total{guard="tenant-rps",key="other"} '
grep -q '^resilua_keyed_keys{guard="tenant-rps"} 1000$' "$TMP/out" || fail "keys gauge is not 1000"
total=$(grep '^resilua_keyed_calls_total{guard="tenant-rps"' "$TMP/out" | awk '{s += $2} END {print s}')
[ "$total" -eq 102000 ] || fail "the keys' calls add up to $total, not 102000"
if command -v promtool >/dev/null; then
  promtool check metrics <"$TMP/out" >"$TMP/promtool" 2>&1 || { cat "$TMP/promtool" >&2; fail "promtool check metrics"; }
fi
ok

t "/state: 1000 keys, the evictions, the hot tenant first"
curl -sf "http://127.0.0.1:$port/state" >"$TMP/state1.json" || fail "GET /state"
python3 - "$TMP/state1.json" <<'EOL' || fail "state: $(head -c 3000 "$TMP/state1.json")"
import json, sys
g = json.load(open(sys.argv[1]))["guards"]["tenant-rps"]
assert g["keys"] == 1000, g["keys"]
assert g["evictions"] + g["overflow_calls"] >= 90000, g
assert len(g["top"]) == 10 and g["top"][0]["key"] == "hot" and g["top"][0]["calls"] == 10000, g["top"][0]
assert g["top"][0]["rejections"] > 0, g["top"][0]
assert sum(e["calls"] for e in g["top"]) + g["other"]["calls"] == 102000, g
print("# evictions %d, overflow calls %d" % (g["evictions"], g["overflow_calls"]))
EOL
ok

t "a reload that keeps the guard keeps its keys"
curl -sf -X POST "http://127.0.0.1:$port/reload" >"$TMP/out" || fail "POST /reload"
curl -sf "http://127.0.0.1:$port/state" >"$TMP/state2.json" || fail "GET /state"
python3 - "$TMP/state2.json" <<'EOL' || fail "state after reload: $(head -c 2000 "$TMP/state2.json")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["last_reload"]["kept"] == ["tenant-rps"], s["last_reload"]
g = s["guards"]["tenant-rps"]
assert g["keys"] == 1000 and g["top"][0]["key"] == "hot", g
EOL
no_sanitizer_report "$TMP/srv.err"
ok

done_all
