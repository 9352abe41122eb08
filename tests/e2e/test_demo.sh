#!/usr/bin/env bash
# The demo's parts, as scripts/demo.sh runs them but on ephemeral ports: the shipped
# policies/storefront.lua served by `resilua serve` in front of examples/flaky (its
# 127.0.0.1:9000 rewritten to the port the upstream got), VIP kept on the cache and free
# users on the stub while the upstream fails, the breaker opening and closing again,
# scripts/demo_traffic.py driving a short run without a single error, and the demo's 20 s
# run next to its replay by `resilua simulate` (policies/scenarios/demo_outage.lua): the
# same breaker transitions, the same served-by shares within 5 points.
source "$(dirname "$0")/lib.sh"
set -e
P=$TMP/policies
mkdir -p "$P"


# call PORT PATH: $code, $TMP/body, $TMP/hdr.txt
call() {
  code=$(curl -sS --max-time 30 -o "$TMP/body" -D "$TMP/hdr" -w '%{http_code}' "http://127.0.0.1:$1$2")
  tr -d '\r' <"$TMP/hdr" >"$TMP/hdr.txt"
}
served_by() { sed -n 's/^X-Resilua-Served-By: //Ip' "$TMP/hdr.txt"; }
breaker() {
  curl -sS --max-time 30 "http://127.0.0.1:$1/state" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["guards"]["products-api"]["state"])'
}
# transitions FILE: the breaker's transitions a sidecar logged on stderr, "from->to" a line
transitions() {
  python3 -c '
import json, sys
for l in open(sys.argv[1]):
    try:
        e = json.loads(l)
    except ValueError:
        continue
    if e.get("event") == "transition" and e.get("guard") == "products-api":
        print("%s->%s" % (e["from"], e["to"]))' "$1"
}
control() { curl -sS --max-time 30 -o /dev/null -X POST "http://127.0.0.1:$UP/_control?$1"; }
# edit FILE FROM TO: replaces the fixed string FROM, which must be in FILE
edit() {
  grep -qF -- "$2" "$1" || fail "$1 no longer has: $2"
  python3 -c 'import sys; p, a, b = sys.argv[1:]; s = open(p).read(); open(p, "w").write(s.replace(a, b))' "$1" "$2" "$3"
}

# Two sidecars on the same upstream.  "held" serves a copy of storefront.lua whose
# breaker stays open for an hour once it trips (and whose timeouts are generous), so that
# what the policy does while the breaker is open is checked without racing a 1 s timer on
# a busy machine.  "shipped" serves storefront.lua as the demo does (a 1 s open period):
# every check on it waits for what the breaker did, with a bounded poll.
t "the upstream and two sidecars start with the storefront policy"
start flaky "$FLAKY" --listen 127.0.0.1:0 --quiet
UP=$port
grep -q '127.0.0.1:9000' "$RSL_SOURCE_DIR/policies/storefront.lua" || fail "storefront.lua no longer names 127.0.0.1:9000"
sed "s/127\.0\.0\.1:9000/127.0.0.1:$UP/" "$RSL_SOURCE_DIR/policies/storefront.lua" >"$P/storefront.lua"
mkdir -p "$TMP/held"
cp "$P/storefront.lua" "$TMP/held/storefront.lua"
edit "$TMP/held/storefront.lua" 'open_for = "1s"' 'open_for = "1h"'
edit "$TMP/held/storefront.lua" 'max = "4s"' 'max = "2h"'
edit "$TMP/held/storefront.lua" 'window = "2s"' 'window = "1h"'
edit "$TMP/held/storefront.lua" 'deadline = "400ms"' 'deadline = "20s"'
edit "$TMP/held/storefront.lua" 'timeout = "200ms"' 'timeout = "10s"'
start held "$RESILUA" serve -p "$TMP/held" --listen 127.0.0.1:0 --workers 2
HELD=$port
start serve "$RESILUA" serve -p "$P" --listen 127.0.0.1:0 --workers 2
SC=$port
ok

t "healthy: both tiers served by the upstream, through r.expose"
for id in 1 2 3; do
  call "$HELD" "/products/$id?tier=vip"
  [ "$code" = 200 ] && [ "$(served_by)" = primary ] || fail "vip $id: $code $(served_by)"
done
call "$HELD" "/products/1?tier=free"
[ "$code" = 200 ] && [ "$(served_by)" = primary ] || fail "free: $code $(served_by)"
grep -q '"path":"/products/1"' "$TMP/body" || fail "body $(cat "$TMP/body")"
ok

# 12 VIP calls fail on the primary (or are rejected once the breaker is open): with 4 good
# calls before them, min_calls = 10 and 50% are reached well within them.
t "upstream failing: VIP from the cache, free users the stub, the breaker opens"
control fail=100
for i in $(seq 1 12); do
  call "$HELD" "/products/2?tier=vip"
  [ "$code" = 200 ] && [ "$(served_by)" = cache ] || fail "vip call $i: $code $(served_by)"
  grep -qix 'X-Resilua-Degraded: 1' "$TMP/hdr.txt" || fail "vip call $i not marked degraded"
  grep -q '"path":"/products/2"' "$TMP/body" || fail "vip call $i: not the cached answer: $(cat "$TMP/body")"
done
call "$HELD" "/products/3?tier=free"
[ "$code" = 200 ] && [ "$(served_by)" = stub ] || fail "free: $code $(served_by)"
[ "$(breaker "$HELD")" = open ] || fail "breaker $(breaker "$HELD") after 12 failing calls"
[ "$(transitions "$TMP/held.err")" = "closed->open" ] ||
  fail "transitions logged: $(transitions "$TMP/held.err" | tr '\n' ' ')"
call "$HELD" "/products/3?tier=free"
grep -qix 'X-Resilua-Path: stub=ok' "$TMP/hdr.txt" || fail "free while open: $(grep -i x-resilua-path "$TMP/hdr.txt")"
ok

# The shipped policy: free calls (20 on one connection a round) until the breaker has
# opened, then the upstream comes back and calls go on until a probe has closed it.  Each
# wait is bounded by rounds and by 60 s, never by the open period itself.
t "upstream back: with the shipped 1 s open period, a probe closes the breaker"
urls=()
for _ in $(seq 1 20); do urls+=("http://127.0.0.1:$SC/products/1?tier=free"); done
opened=""
for _ in $(seq 1 50); do
  curl -sS --max-time 30 "${urls[@]}" >/dev/null || fail "free calls to the shipped policy"
  if transitions "$TMP/serve.err" | grep -qx 'closed->open'; then opened=1; break; fi
done
[ -n "$opened" ] || fail "the shipped breaker did not open after 1000 failing calls: $(breaker "$SC")"
control fail=0
closed=""
limit=$((SECONDS + 60))
for _ in $(seq 1 600); do
  call "$SC" "/products/1?tier=vip"
  if [ "$(breaker "$SC")" = closed ]; then closed=1; break; fi
  [ "$SECONDS" -lt "$limit" ] || break
  sleep 0.1
done
[ -n "$closed" ] || fail "breaker still $(breaker "$SC") 60 s after the upstream came back"
transitions "$TMP/serve.err" | grep -qx 'half_open->closed' ||
  fail "no half_open->closed logged: $(transitions "$TMP/serve.err" | tr '\n' ' ')"
call "$SC" "/products/1?tier=free"
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

t "the demo's 20 s outage, live and replayed by resilua simulate: the same transitions, shares within 5 points"
# The live run as scripts/demo.sh makes it (20 s: healthy, 503s from 5 s, refused from
# 11 s, healthy from 15 s), then policies/scenarios/demo_outage.lua at the rate the live
# run reached.  The breaker's transitions are compared as a sequence, the served-by shares
# per tier within 5 points.  Nothing races a period: both runs are whole before anything
# is compared, and an open period is 1-4 s against phases of 4-6 s.
# Both on storefront.lua without its backoff jitter (a sidecar of its own): a random
# 10% on a 4 s open period moves the closing probe by up to 0.4 s, a different draw in
# each run, and that alone would move the shares by 2 points.
mkdir -p "$TMP/nojit"
cp "$P/storefront.lua" "$TMP/nojit/storefront.lua"
edit "$TMP/nojit/storefront.lua" 'jitter = 0.1' 'jitter = 0'
start nojit "$RESILUA" serve -p "$TMP/nojit" --listen 127.0.0.1:0 --workers 2
NJ=$port
set +e
python3 "$RSL_SOURCE_DIR/scripts/demo_traffic.py" "$NJ" "$UP" "$TMP/nojit.err" 20 >"$TMP/live.out" 2>"$TMP/err"
rc=$?
set -e
[ "$rc" = 0 ] || { cat "$TMP/live.out" >&2; fail "demo_traffic.py exited $rc"; }
cp "$TMP/nojit.err" "$TMP/live.events"
calls=$(sed -n 's/^Summary: \([0-9]*\) calls in 20 s.*/\1/p' "$TMP/live.out")
[ -n "$calls" ] || { cat "$TMP/live.out" >&2; fail "no summary"; }
sed "s/rate = 250/rate = $((calls / 20))/" "$RSL_SOURCE_DIR/policies/scenarios/demo_outage.lua" >"$TMP/replay.lua"
"$RESILUA" simulate -p "$TMP/nojit" "$TMP/replay.lua" --json "$TMP/replay.json" >"$TMP/replay.out" 2>"$TMP/err" ||
  fail "simulate: $(cat "$TMP/err")"
python3 - "$TMP/live.out" "$TMP/live.events" "$TMP/replay.json" <<'PY' >"$TMP/cmp.out" 2>&1 || { cat "$TMP/cmp.out" "$TMP/live.out" >&2; fail "live and replay differ"; }
import json, re, sys
live_out, live_ev, replay = sys.argv[1:]
def seq_of(pairs):
    return ["%s->%s" % p for p in pairs]
live = []
for l in open(live_ev):
    try:
        e = json.loads(l)
    except ValueError:
        continue
    if e.get("event") == "transition" and e.get("guard") == "products-api":
        live.append((e["from"], e["to"]))
doc = json.load(open(replay))
sim = [(t["from"], t["to"]) for t in doc["transitions"] if t["guard"] == "products-api"]
print("live  ", " ".join(seq_of(live)))
print("replay", " ".join(seq_of(sim)))
assert seq_of(live) == seq_of(sim), "the transitions differ"
# Shares second by second, then averaged over the seconds: a live run slowed down by a
# busy machine in one phase and not in another must not tilt them.
def mean_shares(secs):
    acc, n = {}, {}
    for row in secs:
        for tier, d in row.items():
            tot = sum(d.values())
            if not tot:
                continue
            n[tier] = n.get(tier, 0) + 1
            for by, v in d.items():
                acc[(tier, by)] = acc.get((tier, by), 0) + 100.0 * v / tot
    return {k: v / n[k[0]] for k, v in acc.items()}
live_secs = []
for l in open(live_out):
    m = re.match(r"\s*(\d+)s\s+\S+\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s", l)
    if m:
        v = [int(x) for x in m.groups()[1:]]
        live_secs.append({"vip": {"primary": v[0], "cache": v[1], "stub": v[2]},
                          "free": {"primary": v[3], "stub": v[4]}})
assert len(live_secs) == 20, len(live_secs)
def count_shares(secs):
    tot = {}
    for row in secs:
        for tier, d in row.items():
            for by, v in d.items():
                tot[(tier, by)] = tot.get((tier, by), 0) + v
    return {k: 100.0 * v / max(1, sum(x for (t, _), x in tot.items() if t == k[0]))
            for k, v in tot.items()}
ca, cb = count_shares(live_secs), count_shares([r["served_by"] for r in doc["seconds"]])
for k in sorted(set(ca) | set(cb)):
    print("by count: %-4s %-7s live %5.1f%%  replay %5.1f%%" % (k[0], k[1], ca.get(k, 0), cb.get(k, 0)))
a = mean_shares(live_secs)
b = mean_shares([r["served_by"] for r in doc["seconds"]])
worst = 0
for k in sorted(set(a) | set(b)):
    x, y = a.get(k, 0.0), b.get(k, 0.0)
    print("%-4s %-7s live %5.1f%%  replay %5.1f%%" % (k[0], k[1], x, y))
    worst = max(worst, abs(x - y))
assert worst <= 5, "a share differs by %.1f points" % worst
PY
cat "$TMP/cmp.out"
ok

t "SIGTERM: the sidecars exit 0 with no sanitizer report"
for i in 1 2 3; do
  kill -TERM "${pids[$i]}"
  wait "${pids[$i]}" || fail "serve exited $?"
done
no_sanitizer_report "$TMP/held.err"
no_sanitizer_report "$TMP/serve.err"
no_sanitizer_report "$TMP/nojit.err"
ok

done_all
