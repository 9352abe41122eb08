#!/usr/bin/env python3
"""hammer.py -- drives several sidecars at once for a fixed time, for tests/e2e.

  hammer.py SECONDS URL [URL ...]

One keep-alive connection and thread per URL, each sending GET requests back to back
until SECONDS have passed (and at most 500,000 each). Prints one JSON line:
{"seconds": T, "by_url": [{"200": n, "503": n, ...}, ...], "total": {...},
 "worst_ms": w, "errors": n}, where `errors` counts requests that got no answer.
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse


def drive(url, until, out):
    u = urllib.parse.urlsplit(url)
    path = u.path + ("?" + u.query if u.query else "")
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    codes, worst, errors, n = {}, 0.0, 0, 0
    while time.monotonic() < until and n < 500000:
        t0 = time.monotonic()
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            codes[str(r.status)] = codes.get(str(r.status), 0) + 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        worst = max(worst, (time.monotonic() - t0) * 1e3)
        n += 1
    conn.close()
    out.update(codes=codes, worst=worst, errors=errors)


def main():
    secs = float(sys.argv[1])
    urls = sys.argv[2:]
    t0 = time.monotonic()
    until = t0 + secs
    outs = [dict() for _ in urls]
    ts = [threading.Thread(target=drive, args=(u, until, o)) for u, o in zip(urls, outs)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    total = {}
    for o in outs:
        for k, v in o["codes"].items():
            total[k] = total.get(k, 0) + v
    print(json.dumps({"seconds": time.monotonic() - t0,
                      "by_url": [o["codes"] for o in outs], "total": total,
                      "worst_ms": max(o["worst"] for o in outs),
                      "errors": sum(o["errors"] for o in outs)}))


main()
