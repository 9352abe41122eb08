#!/usr/bin/env python3
"""Drives mixed VIP/free traffic at `resilua serve` for the demo (scripts/demo.sh).

    demo_traffic.py SIDECAR_PORT UPSTREAM_PORT EVENTS_FILE [SECONDS]

Six client threads on keep-alive connections ask for GET /products/ID?tier=vip|free (30%
VIP), each at most every 20 ms, for SECONDS (default 20).  The upstream (examples/flaky)
is healthy, then answers 503 to everything, then is down (connections refused), then
healthy again.  Every second prints, per tier, how many calls were served by the
upstream (primary), the cache and the static page (stub), with the breaker's state read
from GET /state, and the breaker transitions `resilua serve` logged on stderr (with the
rates that tripped it).  Then a summary.  Bounded: every loop stops by itself.
"""
import http.client
import json
import random
import sys
import threading
import time

SIDECAR, UPSTREAM, EVENTS = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
SECONDS = int(sys.argv[4]) if len(sys.argv) > 4 else 20
THREADS, VIP_SHARE, PAUSE = 6, 0.3, 0.02
BREAKER = "products-api"
# (second, what the upstream does from then on, /_control query)
PHASES = [
    (0, "healthy", None),
    (SECONDS * 5 // 20, "503s", "fail=100"),
    (SECONDS * 11 // 20, "down", "fail=0&down=%d" % (SECONDS * 4 // 20 * 1000)),
    (SECONDS * 15 // 20, "healthy", None),
]

tty = sys.stdout.isatty()
BOLD, DIM, RED, GREEN, YEL, OFF = (
    ("\033[1m", "\033[2m", "\033[31m", "\033[32m", "\033[33m", "\033[0m") if tty else ("",) * 6)

lock = threading.Lock()
# counts[second][(tier, served_by)] = n; errors: transport errors, non-200 answers
counts = [dict() for _ in range(SECONDS + 1)]
totals = {}
errors = []
t0 = time.monotonic()
stop = time.monotonic() + SECONDS


def client(seed):
    rnd = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", SIDECAR, timeout=5)
    while time.monotonic() < stop:
        tier = "vip" if rnd.random() < VIP_SHARE else "free"
        pid = rnd.randint(1, 20)
        try:
            conn.request("GET", "/products/%d?tier=%s" % (pid, tier))
            resp = conn.getresponse()
            resp.read()
            served = resp.getheader("X-Resilua-Served-By", "?")
            if resp.status != 200:
                with lock:
                    errors.append("%s %d %s" % (tier, resp.status, resp.getheader("X-Resilua-Path")))
        except (OSError, http.client.HTTPException) as e:
            with lock:
                errors.append("%s: %s" % (tier, e))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", SIDECAR, timeout=5)
            time.sleep(0.05)
            continue
        sec = min(int(time.monotonic() - t0), SECONDS)
        with lock:
            k = (tier, served)
            counts[sec][k] = counts[sec].get(k, 0) + 1
            totals[k] = totals.get(k, 0) + 1
        time.sleep(PAUSE)
    conn.close()


def get_json(port, path, method="GET"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        c.request(method, path)
        return json.loads(c.getresponse().read() or b"null")
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        c.close()


def breaker_state():
    st = get_json(SIDECAR, "/state")
    try:
        return st["guards"][BREAKER]["state"]
    except (TypeError, KeyError):
        return "?"


def paint_state(s):
    return {"closed": GREEN, "open": RED, "half_open": YEL}.get(s, "") + s.ljust(9) + OFF


class Events:
    """Reads the breaker transitions `resilua serve` printed on stderr since last time."""

    def __init__(self, path):
        self.f = open(path, "r")

    def new(self):
        out = []
        for line in self.f.readlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "transition":
                out.append("%s -> %s: %s" % (e["from"], e["to"], e.get("reason", "")))
        return out


def main():
    events = Events(EVENTS)
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(THREADS)]
    for t in threads:
        t.start()
    print("%s%5s  %-9s %25s   %18s   %s%s" % (
        BOLD, "time", "upstream", "VIP: primary  cache  stub", "free: primary  stub",
        "breaker " + BREAKER, OFF))
    phase = 0
    upstream = PHASES[0][1]
    for sec in range(SECONDS):
        # Move to the phase this second belongs to (the upstream's /_control).
        while phase + 1 < len(PHASES) and PHASES[phase + 1][0] <= sec:
            phase += 1
            upstream, q = PHASES[phase][1], PHASES[phase][2]
            if q:
                get_json(UPSTREAM, "/_control?" + q, "POST")
        time.sleep(max(0.0, t0 + sec + 1 - time.monotonic()))
        with lock:
            c = dict(counts[sec])
        g = lambda tier, by: c.get((tier, by), 0)
        up = {"healthy": GREEN, "503s": RED, "down": RED}[upstream] + upstream.ljust(9) + OFF
        print("%4ds  %s %12d %6d %5d   %13d %5d   %s" % (
            sec + 1, up, g("vip", "primary"), g("vip", "cache"), g("vip", "stub"),
            g("free", "primary"), g("free", "stub"), paint_state(breaker_state())))
        for e in events.new():
            print("%s       breaker %s: %s%s" % (DIM, BREAKER, e, OFF))
        sys.stdout.flush()
    for t in threads:
        t.join(timeout=10)

    n = sum(totals.values())
    print("\n%sSummary%s: %d calls in %d s, %d errors (non-200 answers or broken connections)" % (
        BOLD, OFF, n, SECONDS, len(errors)))
    for tier in ("vip", "free"):
        tn = sum(v for (t, _), v in totals.items() if t == tier)
        parts = ["%s %d (%.0f%%)" % (by, v, 100.0 * v / max(tn, 1))
                 for (t, by), v in sorted(totals.items()) if t == tier]
        print("  %-4s %5d calls: %s" % (tier.upper(), tn, ", ".join(parts)))
    print("  VIP customers got real data (upstream or its cached answer) %.1f%% of the time;" % (
        100.0 * (totals.get(("vip", "primary"), 0) + totals.get(("vip", "cache"), 0))
        / max(1, sum(v for (t, _), v in totals.items() if t == "vip"))))
    if not errors:
        print("  Free users got the static page while the upstream failed; nobody got an error.")
    for e in errors[:5]:
        print("  error: " + e)
    return 1 if errors or n == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
