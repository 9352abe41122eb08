#!/usr/bin/env bash
# The joint trip (error rate AND latency) against a real upstream: `resilua serve` in
# front of examples/flaky, driven by 8 client threads.  A latency spike with no errors
# and an error burst with fast answers each leave the breaker closed, its bad-period
# streak at 0, however many periods pass; both together open it, with the joint reason;
# once the upstream is healthy again it recovers through its probe.
#
# Nothing here races a period: the negative phases assert what no number of periods can
# change (a rule that needs both legs cannot trip on one), after waiting until the leg
# that is there shows in /state; the positive ones poll, bounded, for the state.
source "$(dirname "$0")/lib.sh"
set -e
P=$TMP/policies
mkdir -p "$P"


start flaky "$FLAKY" --listen 127.0.0.1:0 --quiet
UP=$port
cat >"$P/p.lua" <<EOF
local r = require "resilua"
r.breaker "up" { min_calls = 10, open_for = "1s", probes = 1,
                 count = { "5xx", "timeout", "connect" },
                 trip = { failure_rate = 20, periods = 3, period = "1s", window = "4s",
                          latency = { q = 0.9, over = "150ms" } } }
r.policy "p" {
  deadline = "10s",
  steps = {
    primary = r.http { url = "http://127.0.0.1:$UP/item", timeout = "5s", guards = { "up" } },
    stub = r.stub { status = 200, body = "stub" },
  },
  chain = { "primary", "stub" },
}
EOF
start serve "$RESILUA" serve -p "$P" --listen 127.0.0.1:0 --workers 2
SRV=$port

cat >"$TMP/drive.py" <<'PY'
"""drive.py MODE WHAT COND [SECONDS]: sets flaky's MODE (a /_control query), sends
traffic from 8 threads until COND (a Python expression over B, the breaker's /state
entry) holds, or fails after 60 s.  With SECONDS, keeps driving that long after COND
first held, and then asserts COND again (a negative phase: the breaker must not move)."""
import http.client, json, os, sys, threading, time
UP, SRV = int(os.environ["UP"]), int(os.environ["SRV"])
mode, what, cond = sys.argv[1], sys.argv[2], sys.argv[3]
hold = float(sys.argv[4]) if len(sys.argv) > 4 else 0

def req(port, method, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request(method, path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body

def state():
    st, body = req(SRV, "GET", "/state")
    assert st == 200, st
    return json.loads(body)["guards"]["up"]

assert req(UP, "POST", "/_control?" + mode)[0] == 200
stop = threading.Event()
answered = [0]
lock = threading.Lock()

def client():
    c = http.client.HTTPConnection("127.0.0.1", SRV, timeout=30)
    while not stop.is_set():
        c.request("GET", "/call/p")
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
        with lock:
            answered[0] += 1

threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
for t in threads:
    t.start()
t0, held_at, B = time.time(), None, None
try:
    while time.time() - t0 < 60 + hold:
        B = state()
        ok = eval(cond)
        if ok and held_at is None:
            held_at = time.time()
        if not ok and held_at is not None and hold:
            raise SystemExit("%s: held, then stopped holding: %s" % (what, B))
        if held_at is not None and time.time() - held_at >= hold:
            break
        time.sleep(0.1)
    else:
        raise SystemExit("%s: not within 60 s: %s" % (what, B))
finally:
    stop.set()
    for t in threads:
        t.join(35)
print("%s: %d calls answered; breaker: state %s, failure_rate %.0f%%, p90 %.0f ms, trip %s"
      % (what, answered[0], B["state"], B["failure_rate"], B["p90_ms"], B.get("trip")))
PY

drive() {
  UP=$UP SRV=$SRV python3 "$TMP/drive.py" "$@" >"$TMP/py.out" 2>&1 || {
    cat "$TMP/py.out" >&2
    fail "drive failed"
  }
  cat "$TMP/py.out"
}

t "a latency spike with no errors: p90 over the threshold, the breaker stays closed"
drive "fail=0&slow=300&slow_percent=100" "latency spike" \
  'B["p90_ms"] > 150 and B["calls"] >= 10 and B["state"] == "closed" and B["trip"]["streak"] == 0' 4
ok

t "an error burst with fast answers: failure rate over 20%, the breaker stays closed"
drive "fail=50&slow=0" "error burst" \
  'B["failure_rate"] >= 20 and B["p90_ms"] < 150 and B["state"] == "closed" and B["trip"]["streak"] == 0' 4
ok

t "both at once: the breaker opens, with the joint reason"
drive "fail=50&slow=300&slow_percent=100" "errors and latency" 'B["state"] in ("open", "half_open")'
for _ in $(seq 1 100); do
  grep -q '"to":"open","reason":"joint: failure_rate' "$TMP/serve.err" && break
  sleep 0.1
done
grep -q '"to":"open","reason":"joint: failure_rate' "$TMP/serve.err" ||
  fail "no joint transition logged: $(grep transition "$TMP/serve.err" | head -5)"
ok

t "the upstream heals: the breaker closes through its probe"
drive "fail=0&slow=0" "recovery" 'B["state"] == "closed"'
grep -q '"from":"half_open","to":"closed"' "$TMP/serve.err" ||
  fail "no half_open -> closed: $(grep transition "$TMP/serve.err" | tail -5)"
ok

done_all
