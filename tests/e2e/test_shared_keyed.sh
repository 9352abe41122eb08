#!/usr/bin/env bash
# A global limiter keyed per tenant, shared by two `resilua serve` processes through one
# real redis-server (ephemeral loopback port): each tenant gets its own bucket in Redis.
# Tenant a through both instances and tenant b through one, hammered for 4 s: each
# tenant's admitted calls stay within rate x T + burst + instances x lease and reach 90%
# of rate x T (so b's quota is not a's); Redis holds one bucket per tenant; /state shows
# the keys and one mode; refills go as EVALSHA, and as one EVAL after SCRIPT FLUSH, with
# no error.  Then 2,000 distinct tenants through a table of 100: every
# request is answered, keys are evicted (their leases freed, refills in flight or not),
# and the guard stays joined; both exit cleanly (no sanitizer report).
source "$(dirname "$0")/lib.sh"
set -e
command -v redis-server >/dev/null || { echo "redis-server is required (scripts/setup.sh)"; exit 1; }
command -v curl >/dev/null || { echo "curl is required (scripts/setup.sh installs it)"; exit 1; }
HAMMER="python3 $RSL_SOURCE_DIR/tests/e2e/hammer.py"
KEYS="python3 $RSL_SOURCE_DIR/tests/e2e/keys.py"
P=$TMP/policies
mkdir -p "$P"
cat >"$P/p.lua" <<'EOF'
local r = require "resilua"
r.limiter "tenant-quota" { rate = 100, per = "1s", burst = 20, scope = "global", lease = 20,
                           key = "${tenant}", max_keys = 100, top_k = 5 }
r.policy "p" { steps = { s = r.stub { status = 200, body = "ok", guards = { "tenant-quota" } } } }
EOF

t "check describes the keyed global limiter: its scope, lease and key"
run check -p "$P"
expect_rc 0
expect_out "scope=global lease=20 on_redis_down=local key=\${tenant} max_keys=100 top_k=5"
ok

RPORT=$(free_port)
start_redis
PREFIX="e2e$$:"

SRV=()
for i in 1 2; do
  start "serve$i" "$RESILUA" serve -p "$P" --listen 127.0.0.1:0 --workers 2 \
    --redis "127.0.0.1:$RPORT" --redis-prefix "$PREFIX"
  SRV+=("$port")
done
url() { echo "http://127.0.0.1:${SRV[$1]}/call/p?tenant=$2"; }

# guard N: instance N's /state of the guard, as JSON
guard() {
  curl -sS --max-time 10 "http://127.0.0.1:${SRV[$1]}/state" |
    python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["guards"]["tenant-quota"]))'
}
mode() { guard "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["mode"])'; }

t "both instances join through their first tenant"
for _ in $(seq 1 100); do
  $HAMMER 0.05 "$(url 0 a)" "$(url 1 a)" >/dev/null
  [ "$(mode 0)" = joined ] && [ "$(mode 1)" = joined ] && break
done
[ "$(mode 0)" = joined ] && [ "$(mode 1)" = joined ] || fail "modes: $(mode 0) $(mode 1)"
ok

t "4 s, tenant a through both instances, b through one: a quota each"
$HAMMER 4 "$(url 0 a)" "$(url 1 a)" "$(url 0 b)" >"$TMP/h.json"
python3 - "$TMP/h.json" <<'PY' || fail "$(cat "$TMP/h.json")"
import json, sys
h = json.load(open(sys.argv[1]))
t, u = h["seconds"], h["by_url"]
a = u[0].get("200", 0) + u[1].get("200", 0)
b = u[2].get("200", 0)
for name, ok, n in (("a", a, 2), ("b", b, 1)):
    bound, floor = 100 * t + 20 + n * 20, 0.9 * 100 * t
    print("  %s through %d: %d admitted in %.2f s; rate x T %.0f, bound %.0f, error %+.1f%%"
          % (name, n, ok, t, 100 * t, bound, 100.0 * (ok - 100 * t) / (100 * t)))
    assert floor <= ok <= bound, (name, ok, floor, bound)
assert h["errors"] == 0, h
assert set(h["total"]) <= {"200", "503"} and h["total"].get("503", 0) > 0, h
PY
ok

t "Redis holds one bucket per tenant; /state the keys and one mode"
redis-cli -p "$RPORT" --scan --pattern "${PREFIX}*" | sort >"$TMP/keys"
grep -qxF "${PREFIX}{tenant-quota[a]}:tb" "$TMP/keys" || fail "no bucket for a: $(cat "$TMP/keys")"
grep -qxF "${PREFIX}{tenant-quota[b]}:tb" "$TMP/keys" || fail "no bucket for b: $(cat "$TMP/keys")"
guard 0 >"$TMP/g.json"
python3 - "$TMP/g.json" <<'PY' || fail "$(cat "$TMP/g.json")"
import json, sys
g = json.load(open(sys.argv[1]))
assert g["scope"] == "global" and g["mode"] == "joined" and g["keys"] == 2, g
assert [k["key"] for k in g["top"]] == ["a", "b"] or [k["key"] for k in g["top"]] == ["b", "a"], g
assert g["rejections"] > 0 and g["granted"] > 0 and "pool" not in g, g
PY
ok

# calls NAME: how many times Redis ran command NAME (INFO commandstats)
calls() {
  redis-cli -p "$RPORT" info commandstats |
    sed -n "s/^cmdstat_$1:calls=\([0-9]*\),.*/\1/p" | grep . || echo 0
}

t "refills go as EVALSHA; after SCRIPT FLUSH one EVAL each, no error, still joined"
E0=$(calls eval) S0=$(calls evalsha)
[ "$S0" -gt $((10 * E0)) ] || fail "EVAL $E0, EVALSHA $S0"
redis-cli -p "$RPORT" script flush >/dev/null
$HAMMER 1 "$(url 0 a)" "$(url 1 a)" >/dev/null
E1=$(calls eval) S1=$(calls evalsha)
[ "$E1" -gt "$E0" ] && [ "$S1" -gt "$S0" ] || fail "EVAL $E0 -> $E1, EVALSHA $S0 -> $S1"
for i in 0 1; do
  guard "$i" >"$TMP/g.json"
  python3 -c 'import json,sys; g=json.load(open(sys.argv[1])); assert g["mode"] == "joined" and g["redis_errors"] == 0, g' \
    "$TMP/g.json" || fail "instance $i: $(cat "$TMP/g.json")"
done
echo "  EVAL $E0 -> $E1, EVALSHA $S0 -> $S1"
ok

t "2,000 tenants through a table of 100: all answered, keys evicted, still joined"
$KEYS "${SRV[0]}" call/p tenant 2000 60 >"$TMP/k.json"
python3 - "$TMP/k.json" <<'PY' || fail "$(cat "$TMP/k.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["sent"] == 2000 and r["errors"] == 0, r
assert sum(r["codes"].values()) == 2000 and r["codes"].get("200", 0) > 0, r
PY
guard 0 >"$TMP/g.json"
python3 - "$TMP/g.json" <<'PY' || fail "$(cat "$TMP/g.json")"
import json, sys
g = json.load(open(sys.argv[1]))
assert g["keys"] <= 100 and g["evictions"] > 0 and g["mode"] == "joined", g
PY
ok

t "SIGTERM: both exit 0 with no sanitizer report (an evicted key's lease freed once)"
for i in 1 2; do
  kill -TERM "${pids[$i]}"
  wait "${pids[$i]}" || fail "serve$i exited $?"
  no_sanitizer_report "$TMP/serve$i.err"
done
ok

done_all
