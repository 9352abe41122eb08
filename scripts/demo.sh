#!/usr/bin/env bash
# The README's first command: sets up a fresh Debian 12 machine (apt packages), builds,
# and shows resilua at work on the shipped policies/: a circuit breaker tripping and
# recovering, VIP customers kept on the cache while free users get the stub, a 4xx
# returned as is, retries of injected faults.  The runs take about 10 s after the build.
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

say "1. resilua check: load and validate policies/, list policies and guards"
cmd check
"$R" check

say "2. One call: one JSON line per call on stdout" \
    "catalog.product runs a simulated flaky upstream (an r.lua step) behind the breaker" \
    "catalog-api (trips at 50% failures once it has seen 5 calls, stays open 1 s)."
cmd call catalog.product id=42 tier=vip
"$R" call catalog.product id=42 tier=vip

say "3. A VIP customer, 30 calls 100 ms apart, in one runtime" \
    "The upstream fails its calls 6 to 10 (5xx). VIP route: primary -> cache -> stub, and the" \
    "cache was written through by calls 1-5, so VIP keeps real data. After call 10 the" \
    "breaker opens: the upstream is not even called (primary=rejected) for about 1 s; then" \
    "one probe goes through, succeeds, and the breaker closes."
cmd call -n 30 --interval 100ms catalog.product id=42 tier=vip
"$R" call -n 30 --interval 100ms catalog.product id=42 tier=vip | compact vip

say "4. The same outage for a free-tier user" \
    "Free route: primary -> stub. Same trip and recovery, but the answer while the" \
    "upstream is down is the static stub page (still a 200, marked degraded)."
cmd call -n 30 --interval 100ms catalog.product id=42 tier=free
"$R" call -n 30 --interval 100ms catalog.product id=42 tier=free | compact free

say "5. A business error is never masked by a fallback" \
    "The upstream answers 400 for a bad id: outcome 4xx, returned as is (exit status 1)."
cmd call catalog.product id=abc tier=vip
"$R" call catalog.product id=abc tier=vip | compact vip || true

say "6. Retries with backoff on injected faults" \
    "pricing.quote injects a 5xx on 30% of attempts (fault) and retries up to 3 tries" \
    "(retry, with a retry budget); the cache and a 503 stub back it up."
cmd call -n 12 pricing.quote sku=A100
"$R" call -n 12 pricing.quote sku=A100 | compact -  || true

say "Done." "Policies: policies/*.lua.  Tests: bash scripts/test.sh.  More: README.md."
