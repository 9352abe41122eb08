#!/usr/bin/env bash
# Redis faults under load for a breaker shared by three `resilua serve` processes (A, B, C)
# through one real redis-server, in front of examples/flaky (shared = { quorum = 2,
# flush = "100ms" }); test_shared.sh does the same for global limiters.  Healthy traffic
# goes through all three the whole time, each request with its own id in the upstream's
# path (flaky echoes the path), so an answer can be matched to its request:
#   - Redis stopped (SIGSTOP) mid-run: each instance's shared breaker goes down; Redis
#     continued (SIGCONT): each joins again;
#   - Redis killed (SIGKILL) mid-run: each goes down; Redis started again on the same
#     port: each joins again;
#   - over both runs, every request sent is answered once, with its own answer (none
#     lost, none shifted onto another request's answer, nothing left over on a
#     connection), all 200 (the breaker stays closed), and none waits longer than 2 s.
#     Nothing on the call path waits for Redis: a flush that has no answer in 250 ms puts
#     the breaker down.  2 s is that plus a generous margin for a loaded 2-core box (ASan,
#     ctest -j2, a CPU hog beside it); it bounds a stall, it does not measure a speed;
#   - after the rejoin, failing traffic through A and B opens the fleet, and C with it (C
#     sent nothing): the counts reach the restarted Redis again.
# Every wait is a bounded poll for a condition; every load is bounded in count and time.
source "$(dirname "$0")/lib.sh"
set -e
command -v redis-server >/dev/null || { echo "redis-server is required (scripts/setup.sh)"; exit 1; }
command -v curl >/dev/null || { echo "curl is required (scripts/setup.sh installs it)"; exit 1; }
HAMMER="python3 $RSL_SOURCE_DIR/tests/e2e/hammer.py"

RPORT=$(free_port)
start_redis

start flaky "$FLAKY" --listen 127.0.0.1:0 --quiet
UP=$port
P=$TMP/policies
mkdir -p "$P"
# A 2 s window (10 buckets of 200 ms), so that the healthy traffic of the fault runs has
# left the fleet's window soon after it stops (the last check polls for that).
cat >"$P/p.lua" <<EOF
local r = require "resilua"
r.breaker "pay" { window = "2s", min_calls = 10, failure_rate = 50, open_for = "5s",
                  shared = { quorum = 2, flush = "100ms" } }
r.policy "p" {
  deadline = "10s",
  steps = { up = r.http { url = "http://127.0.0.1:$UP/pay/\${id}?status=\${status}",
                          timeout = "5s", guards = { "pay" } } },
}
EOF
source "$RSL_SOURCE_DIR/tests/e2e/fleet_lib.sh"
start_fleet "$P"
until_all() {
  for n in 0 1 2; do until_st $n "$1"; done
}

# The load: one keep-alive connection and thread per instance, one request every 2 ms at
# most, each with its own id, until $TMP/stop appears (at most 60 s and 30,000 requests a
# thread).  Writes one JSON line to $TMP/load.json.
cat >"$TMP/load.py" <<'PY'
import http.client, json, os, select, sys, threading, time

stop, out, urls = sys.argv[1], sys.argv[2], sys.argv[3:]
LIMIT_S, LIMIT_N, PACE_S = 60.0, 30000, 0.002

def drive(k, port, res):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = answered = lost = shifted = 0
    codes, worst, t_end = {}, 0.0, time.monotonic() + LIMIT_S
    while sent < LIMIT_N and time.monotonic() < t_end and not os.path.exists(stop):
        rid = "%d-%d" % (k, sent)
        t0 = time.monotonic()
        sent += 1
        try:
            conn.request("GET", "/call/p?status=200&id=" + rid)
            r = conn.getresponse()
            body = r.read().decode("utf-8", "replace")
            answered += 1
            codes[str(r.status)] = codes.get(str(r.status), 0) + 1
            if ('"path":"/pay/%s"' % rid) not in body:
                shifted += 1  # an answer that is not this request's
        except (OSError, http.client.HTTPException):
            lost += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        dt = time.monotonic() - t0
        worst = max(worst, dt * 1e3)
        if dt < PACE_S:
            time.sleep(PACE_S - dt)
    # Nothing may be left on the connection: a second answer to some request would be.
    extra = 0
    if conn.sock is not None:
        time.sleep(0.2)
        if select.select([conn.sock], [], [], 0)[0]:
            try:
                extra = len(conn.sock.recv(65536))
            except OSError:
                pass
    conn.close()
    res.update(sent=sent, answered=answered, lost=lost, shifted=shifted, extra_bytes=extra,
               codes=codes, worst_ms=round(worst, 1))

ports = [int(u) for u in urls]
res = [dict() for _ in ports]
ts = [threading.Thread(target=drive, args=(k, p, r)) for k, (p, r) in enumerate(zip(ports, res))]
t0 = time.monotonic()
for t in ts:
    t.start()
for t in ts:
    t.join()
tot = {"seconds": round(time.monotonic() - t0, 2), "by_instance": res}
for f in ("sent", "answered", "lost", "shifted", "extra_bytes"):
    tot[f] = sum(r[f] for r in res)
tot["worst_ms"] = max(r["worst_ms"] for r in res)
tot["codes"] = {}
for r in res:
    for c, n in r["codes"].items():
        tot["codes"][c] = tot["codes"].get(c, 0) + n
json.dump(tot, open(out, "w"))
PY
LOADPID=
load_start() {
  rm -f "$TMP/stop" "$TMP/load.json"
  python3 "$TMP/load.py" "$TMP/stop" "$TMP/load.json" "${SRV[@]}" &
  LOADPID=$!
  pids+=($LOADPID)
  # Under way: every instance has answered some of it.
  for _ in $(seq 1 100); do
    [ "$(st 0 'g["calls"] > 0')" = True ] && [ "$(st 2 'g["calls"] > 0')" = True ] && return 0
    sleep 0.1
  done
  fail "the load did not start"
}
# load_check WHAT: stops the load and checks what it saw
load_check() {
  touch "$TMP/stop"
  wait "$LOADPID" || fail "$1: the load driver failed"
  python3 - "$TMP/load.json" "$1" <<'PY' || fail "$1: $(cat "$TMP/load.json")"
import json, sys
h, what = json.load(open(sys.argv[1])), sys.argv[2]
print("  %s: %d sent in %.1f s, %d answered, %d lost, %d shifted, worst %.0f ms, %s"
      % (what, h["sent"], h["seconds"], h["answered"], h["lost"], h["shifted"], h["worst_ms"],
         h["codes"]))
assert h["sent"] > 0 and all(r["sent"] > 0 for r in h["by_instance"]), h
assert h["lost"] == 0 and h["shifted"] == 0 and h["extra_bytes"] == 0, h
assert h["answered"] == h["sent"], h
assert h["codes"] == {"200": h["sent"]}, h
assert h["worst_ms"] < 2000, h
PY
}

t "three instances join the fleet"
until_all 's.get("mode") == "joined"'
ok

t "Redis stopped under load: all answered, each down; continued: each joined again"
load_start
kill -STOP "$RPID"
until_all 's["mode"] == "down"'
kill -CONT "$RPID"
until_all 's["mode"] == "joined"'
load_check "SIGSTOP"
ok

t "Redis killed under load: all answered, each down; started again: each joined again"
load_start
errs0=$(st 1 's["redis_errors"]')
kill -KILL "$RPID"
wait "$RPID" 2>/dev/null || true
until_all 's["mode"] == "down"'
[ "$(st 1 "s['redis_errors'] > $errs0")" = True ] || fail "no Redis error counted: $(st 1 'g')"
start_redis
until_all 's["mode"] == "joined"'
load_check "SIGKILL"
curl -sS "http://127.0.0.1:${SRV[0]}/metrics" >"$TMP/m"
grep -q '^resilua_shared_mode{guard="pay",mode="joined"} 1$' "$TMP/m" ||
  fail "metrics: $(grep shared "$TMP/m")"
ok

t "after the rejoin, failing traffic through A and B opens the fleet, and C"
# The healthy calls of the runs above leave the fleet's 2 s window first (C reads the
# fleet's counts at each flush).
until_st 2 's["calls"] == 0'
for n in 0 1 2; do
  [ "$(st $n 'g["state"] + " " + s["fleet_state"]')" = "closed closed" ] || fail "instance $n: $(st $n 'g')"
done
until_st 2 'g["state"] == "open" and s["fleet_state"] == "open" and s["failing_instances"] >= 2' \
  "$(url 0 503)" "$(url 1 503)"
ok

for i in 1 2 3; do no_sanitizer_report "$TMP/serve$i.err"; done
done_all
