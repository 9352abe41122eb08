#!/usr/bin/env bash
# `resilua simulate` as a policy author runs it: every shipped scenario runs; the
# storefront outage opens the breaker in the 503s, keeps VIPs on the cache and free users
# on the static page while it lasts, and closes it once the upstream heals; the demo's
# 30-minute outage draws an SVG timeline; the same seed gives the same output byte for
# byte (text and --json), another seed another one; broken scenarios get file:line errors.
source "$(dirname "$0")/lib.sh"
SCN=$RSL_SOURCE_DIR/policies/scenarios

t "every shipped scenario runs"
for f in "$SCN"/*.lua; do
  run simulate -p "$RSL_SOURCE_DIR/policies" "$f"
  expect_rc 0
  expect_out "simulated $f:"
done
ok

t "the storefront outage: the breaker opens in the 503s and closes after; VIPs keep real data"
run simulate -p "$RSL_SOURCE_DIR/policies" "$SCN/storefront_outage.lua" --json "$TMP/run.json"
expect_rc 0
python3 - "$TMP/run.json" <<'PY' || fail "the run's shape: $(head -c 2000 "$TMP/out")"
import json, sys
doc = json.load(open(sys.argv[1]))
rows, tr = doc["seconds"], doc["transitions"]
assert len(rows) == 60, len(rows)
# The transitions, with their virtual times: opened by the 503s' failure rate, probing
# while the upstream fails, closed by the probe that succeeds once it has healed.
pairs = [(x["from"], x["to"]) for x in tr]
assert pairs[0] == ("closed", "open") and 15 <= tr[0]["t"] < 17, tr[0]
assert tr[0]["reason"].startswith("failure_rate"), tr[0]
assert pairs[-1] == ("half_open", "closed") and tr[-1]["t"] >= 45, tr[-1]
assert all(p in (("open", "half_open"), ("half_open", "open")) for p in pairs[1:-1]), pairs
st = [r["guards"]["products-api"]["state"] for r in rows]
# healthy for the first 15 s, open within the 503s, closed again at the end
assert all(s == "closed" for s in st[:15]), st[:15]
assert "open" in st[15:20], st[15:20]
assert st[-1] == "closed", st[-5:]
seq = [s for i, s in enumerate(st) if i == 0 or st[i - 1] != s]
assert seq[0] == "closed" and seq[-1] == "closed" and "open" in seq, seq
def served(rows, tier):
    out = {}
    for r in rows:
        for k, v in r["served_by"].get(tier, {}).items():
            out[k] = out.get(k, 0) + v
    return out
outage = rows[16:45]
vip, free = served(outage, "vip"), served(outage, "free")
assert vip.get("cache", 0) > 0.95 * sum(vip.values()), vip
assert free.get("stub", 0) > 0.95 * sum(free.values()), free
healthy = served(rows[:15], "vip")
assert healthy.get("primary", 0) == sum(healthy.values()), healthy
print("transitions", len(tr), "first", tr[0], "last", tr[-1])
print("vip in the outage", vip, "free", free)
PY
ok

t "the demo's 30-minute outage: an SVG timeline with the bands, areas, lines and marks"
run simulate -p "$RSL_SOURCE_DIR/policies" "$SCN/storefront_30min.lua" --svg "$TMP/t.svg"
expect_rc 0
expect_out "simulated $SCN/storefront_30min.lua: "
python3 - "$TMP/t.svg" <<'PY' || fail "the SVG: $(head -c 600 "$TMP/t.svg")"
import sys, xml.dom.minidom
d = xml.dom.minidom.parse(sys.argv[1])
svg = d.documentElement
assert svg.tagName == "svg" and svg.getAttribute("xmlns") == "http://www.w3.org/2000/svg"
rects = [r.getAttribute("fill") for r in svg.getElementsByTagName("rect")]
assert rects.count("#59a14f") > 100 and rects.count("#e15759") > 100, "state bands"
assert len(svg.getElementsByTagName("path")) >= 5, "served-by areas (free 2, vip 3)"
assert len(svg.getElementsByTagName("polyline")) == 2, "error rate and p90"
marks = [l for l in svg.getElementsByTagName("line") if l.getAttribute("stroke") == "#333333"]
assert len(marks) == 2, "the opening and the closing"
texts = " ".join(t.firstChild.data for t in svg.getElementsByTagName("text") if t.firstChild)
for w in ("free", "vip", "products-api", "primary", "cache", "stub"):
    assert w in texts, w
PY
ok

t "the same seed, the same output byte for byte; another seed, another run"
run simulate -p "$RSL_SOURCE_DIR/policies" "$SCN/storefront_outage.lua" --json "$TMP/a.json"
cp "$TMP/out" "$TMP/a.txt"
run simulate -p "$RSL_SOURCE_DIR/policies" "$SCN/storefront_outage.lua" --json "$TMP/b.json"
cmp -s "$TMP/a.txt" "$TMP/out" || fail "two runs differ"
cmp -s "$TMP/a.json" "$TMP/b.json" || fail "two --json runs differ"
run simulate -p "$RSL_SOURCE_DIR/policies" "$SCN/storefront_outage.lua" --seed 99
cmp -s "$TMP/a.txt" "$TMP/out" && fail "--seed 99 gave the same run"
ok

t "broken scenarios: file:line"
cat >"$TMP/syntax.lua" <<'LUA'
scenario { policy = "storefront.product", duration = "10s" }
traffic { rate = 10
LUA
run simulate -p "$RSL_SOURCE_DIR/policies" "$TMP/syntax.lua"
expect_rc 2
expect_err "$TMP/syntax.lua:3:"
cat >"$TMP/field.lua" <<'LUA'
scenario { policy = "storefront.product", duration = "10s" }
traffic { rate = 10 }
upstream "primary" { latency = "fast" }
LUA
run simulate -p "$RSL_SOURCE_DIR/policies" "$TMP/field.lua"
expect_rc 2
expect_err "$TMP/field.lua:3: latency: expected a duration, got fast"
cat >"$TMP/rate.lua" <<'LUA'
scenario { policy = "storefront.product", duration = "10s" }
traffic { rate = -5 }
LUA
run simulate -p "$RSL_SOURCE_DIR/policies" "$TMP/rate.lua"
expect_rc 2
expect_err "$TMP/rate.lua:2: rate: must be in 0..10000000, got -5"
cat >"$TMP/nopolicy.lua" <<'LUA'
scenario { policy = "no.such", duration = "10s" }
traffic { rate = 10 }
LUA
run simulate -p "$RSL_SOURCE_DIR/policies" "$TMP/nopolicy.lua"
expect_rc 2
expect_err "no policy \"no.such\""
run simulate
expect_rc 2
expect_err "usage: resilua simulate"
ok

done_all
