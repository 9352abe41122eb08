#!/usr/bin/env python3
"""keys.py -- distinct keys through a sidecar, for tests/e2e/test_keyed.sh.

  keys.py PORT PATH ATTR COUNT [SECONDS] [--hot VALUE EVERY]

Sends COUNT GET requests to http://127.0.0.1:PORT/PATH?ATTR=k<i> (i = 0..COUNT-1, every
one a new value), pipelined 200 at a time on 2 keep-alive connections, and stops early
after SECONDS (default 120) however far it got.  With --hot, every EVERY-th request
carries ATTR=VALUE instead.  Prints one JSON line: {"sent": n, "codes": {"200": n, ...},
"seconds": t, "errors": n} (errors: connections that broke).
"""
import json
import socket
import sys
import threading
import time

BATCH = 200


def read_answers(sock, buf, n, codes):
    """Reads n whole answers (Content-Length framed) from sock; returns the rest of buf."""
    while n > 0:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            buf += chunk
            continue
        head = buf[:end].decode("latin-1")
        status = head.split(" ", 2)[1]
        length = 0
        for line in head.split("\r\n")[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
        while len(buf) < end + 4 + length:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            buf += chunk
        buf = buf[end + 4 + length:]
        codes[status] = codes.get(status, 0) + 1
        n -= 1
    return buf


def drive(port, path, attr, lo, hi, until, hot, out):
    codes, sent, errors = {}, 0, 0
    sock = socket.create_connection(("127.0.0.1", port), 10)
    buf = b""
    i = lo
    while i < hi and time.monotonic() < until:
        reqs = []
        for j in range(i, min(i + BATCH, hi)):
            v = hot[0] if hot and j % hot[1] == 0 else "k%d" % j
            reqs.append(("GET /%s?%s=%s HTTP/1.1\r\nHost: x\r\n\r\n" % (path, attr, v)).encode())
        try:
            sock.sendall(b"".join(reqs))
            buf = read_answers(sock, buf, len(reqs), codes)
        except OSError:
            errors += 1
            sock.close()
            sock = socket.create_connection(("127.0.0.1", port), 10)
            buf = b""
        sent += len(reqs)
        i += len(reqs)
    sock.close()
    out.update(codes=codes, sent=sent, errors=errors)


def main():
    port, path, attr, count = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    rest = sys.argv[5:]
    hot = None
    if "--hot" in rest:
        k = rest.index("--hot")
        hot = (rest[k + 1], int(rest[k + 2]))
        rest = rest[:k] + rest[k + 3:]
    secs = float(rest[0]) if rest else 120.0
    t0 = time.monotonic()
    half = count // 2
    outs = [dict(), dict()]
    ts = [threading.Thread(target=drive, args=(port, path, attr, lo, hi, t0 + secs, hot, o))
          for (lo, hi), o in zip([(0, half), (half, count)], outs)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    codes = {}
    for o in outs:
        for k, v in o["codes"].items():
            codes[k] = codes.get(k, 0) + v
    print(json.dumps({"sent": sum(o["sent"] for o in outs), "codes": codes,
                      "seconds": round(time.monotonic() - t0, 2),
                      "errors": sum(o["errors"] for o in outs)}))


if __name__ == "__main__":
    main()
