#!/usr/bin/env bash
# The README's first command: sets up a fresh Debian 12 machine (apt packages), builds,
# and shows resilua at work on the shipped policies/: `resilua serve` in front of a real
# HTTP upstream (examples/flaky) that fails for a stretch, with mixed VIP/free traffic
# for 20 s: a table every second of who was served by the upstream, the cache or the
# static page, and the breaker's state and transitions; then a few `resilua call`s.
# About 30 s after the build.  The upstream listens on 127.0.0.1:9000 (the address in
# policies/storefront.lua); the sidecar on an ephemeral loopback port.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bash scripts/setup.sh
echo "== building (build/)"
bash scripts/build.sh build >/dev/null
R=$root/build/resilua

if [ -t 1 ]; then B=$'\033[1m'; D=$'\033[2m'; N=$'\033[0m'; else B=; D=; N=; fi
say() {
  printf '\n%s%s%s\n' "$B" "$1" "$N"
  shift
  for l in "$@"; do printf '  %s\n' "$l"; done
}
cmd() {
  printf '%s$ resilua %s%s\n' "$D" "$*" "$N"
}

# Reads `resilua call` JSON lines as they come and prints one compact line per call.
compact() {
  python3 -u -c '
import json, sys
tier = sys.argv[1]
n = 0
while True:
    line = sys.stdin.readline()
    if not line:
        break
    n += 1
    r = json.loads(line)
    path = "  ".join("%s=%s" % (e["step"], e["outcome"]) for e in r["path"])
    note = ""
    if any(e["outcome"] == "rejected" for e in r["path"]):
        note = "   <- breaker open"
    elif any(e["attempts"] > 1 for e in r["path"]):
        note = "   <- retried: " + ", ".join("%s x%d" % (e["step"], e["attempts"]) for e in r["path"] if e["attempts"] > 1)
    print("  %3d  %-5s %-4s %-8s served_by=%-9s %-9s %s%s" % (
        n, tier, r["status"], r["outcome"], r["served_by"],
        "degraded" if r["degraded"] else "", path, note))
' "$1"
}

pids=()
tmp=$(mktemp -d)
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# start_server OUT ERR CMD...: starts a server that prints "listening HOST:PORT" on
# stdout, waits for that line, and sets $port.  (Not in a $(...) subshell: the pid must
# reach the cleanup.)
start_server() {
  local out=$1 err=$2; shift 2
  : >"$out" # before the server starts: sed below must find it (set -e)
  "$@" >"$out" 2>"$err" &
  pids+=($!)
  for _ in $(seq 100); do
    port=$(sed -n 's/^listening .*:\([0-9]*\)$/\1/p' "$out")
    [ -n "$port" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.05
  done
  echo "demo: $* did not start:" >&2
  cat "$err" >&2
  return 1
}

say "1. resilua check: load and validate policies/, list policies and guards"
cmd check
"$R" check | sed -n '1p;/storefront.product/,/^$/p'

say "2. resilua serve in front of a flaky upstream, 20 s of traffic" \
    "examples/flaky plays the product service on 127.0.0.1:9000: healthy for 5 s, then it" \
    "answers 503 to everything for 6 s, then it is down (connections refused) for 4 s," \
    "then healthy again.  Six clients send GET /products/ID?tier=vip|free (30% VIP) to" \
    "the sidecar.  policies/storefront.lua: the breaker opens on 50% failures; VIP" \
    "customers keep real data from the cache (written through by earlier answers), free" \
    "users get the static page; the breaker probes with one call, with growing pauses," \
    "and closes once the upstream answers again.  Every answer is a 200."
if ! start_server "$tmp/flaky.out" "$tmp/flaky.err" "$root/build/example_flaky" \
       --listen 127.0.0.1:9000 --quiet; then
  echo "demo: could not start the upstream on 127.0.0.1:9000 (is the port in use?)" >&2
  exit 1
fi
up=$port
start_server "$tmp/serve.out" "$tmp/events" "$R" serve -p "$root/policies" \
  --listen 127.0.0.1:0 --workers 2
sc=$port
cmd "serve --listen 127.0.0.1:$sc --workers 2"
echo
python3 "$root/scripts/demo_traffic.py" "$sc" "$up" "$tmp/events" 20
printf '\n%s$ curl -s 127.0.0.1:%s/metrics | grep breaker_transitions%s\n' "$D" "$sc" "$N"
curl -s "127.0.0.1:$sc/metrics" | grep '^resilua_breaker_transitions_total{breaker="products-api"' |
  sed 's/^/  /'

say "3. The same policies from the command line: one JSON line per call" \
    "catalog.product simulates its upstream in Lua (an r.lua step): no server needed."
cmd call catalog.product id=42 tier=vip
"$R" call catalog.product id=42 tier=vip
say "A business error is never masked by a fallback" \
    "The upstream answers 400 for a bad id: outcome 4xx, returned as is (exit status 1)."
cmd call catalog.product id=abc tier=vip
"$R" call catalog.product id=abc tier=vip | compact vip || true

say "4. The same policy through a 30-minute outage, simulated in well under a second" \
    "resilua simulate runs the real policy and guards on virtual time, the upstream" \
    "modelled by policies/scenarios/storefront_30min.lua: healthy, 503s, refused, healthy."
svg=$root/build/demo-outage.svg
cmd "simulate policies/scenarios/storefront_30min.lua --svg build/demo-outage.svg"
"$R" simulate -p "$root/policies" "$root/policies/scenarios/storefront_30min.lua" --svg "$svg" \
  >"$tmp/sim.out"
awk '/ -> / && n++ < 3 { print "  " $0 }' "$tmp/sim.out" # the first transitions
echo "  ..."
tail -1 "$tmp/sim.out" | sed 's/^/  /'
echo "  timeline: $svg (open it in a browser)"

say "Done." "Policies: policies/*.lua.  Tests: bash scripts/test.sh.  More: README.md."
