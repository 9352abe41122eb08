#!/usr/bin/env bash
# `resilua serve` refuses ambiguous framing (README, "Request framing"): each request below
# goes over its own raw socket and gets its documented status, closes its connection, is
# counted under its reason, never reaches a policy, and the server serves the next one.
# Well-formed variants (chunk extensions, "Chunked", leading empty lines, absolute-form,
# OPTIONS *) are answered as before.
source "$(dirname "$0")/lib.sh"

P=$TMP/policies
policy "$P" a.lua <<'LUA'
local r = require "resilua"
r.policy "echo" {
  steps = {
    primary = r.lua(function(req)
      return { status = 200, body = "name=" .. tostring(req.name) .. " body=" .. tostring(req.body) }
    end),
  },
}
LUA

SRV_PID=""
trap '[ -n "$SRV_PID" ] && kill -KILL "$SRV_PID" 2>/dev/null; rm -rf "$TMP"' EXIT
"$RESILUA" serve -p "$P" --listen 127.0.0.1:0 --workers 2 >"$TMP/srv.out" 2>"$TMP/srv.err" &
SRV_PID=$!
PORT=""
for _ in $(seq 1 300); do
  PORT=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$TMP/srv.out")
  [ -n "$PORT" ] && break
  kill -0 "$SRV_PID" 2>/dev/null || break
  sleep 0.1
done
[ -n "$PORT" ] || { cp "$TMP/srv.err" "$TMP/err"; fail "server did not print its address"; }

cat >"$TMP/lib.py" <<'PY'
import os, re, socket, urllib.request
PORT = int(os.environ["PORT"])

def metrics():
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % PORT, timeout=30) as r:
        text = r.read().decode()
    m = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            m[k] = float(v)
    return m

def calls(m):
    return sum(v for k, v in m.items() if k.startswith("resilua_calls_total{"))

def rejected(m, reason):
    return m.get('resilua_http_rejected_total{reason="%s"}' % reason, 0)

def exchange(data):
    """Sends data, reads until the server closes: (all it answered, closed by the server)."""
    s = socket.create_connection(("127.0.0.1", PORT), timeout=30)
    try:
        s.sendall(data)
    except OSError:
        pass
    buf, closed = b"", False
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            closed = True
            break
        except socket.timeout:
            break
        if not d:
            closed = True
            break
        buf += d
    s.close()
    return buf, closed

def answers(buf):
    """The statuses of the answers in buf, in order."""
    return [int(x) for x in re.findall(rb"HTTP/1\.1 (\d{3}) ", buf)]
PY

t "each ambiguous request: 400 with its reason, the connection closed, no policy called, the server serves on"
cat >"$TMP/cases.py" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from lib import *

G = b"GET /call/echo?name=x HTTP/1.1\r\nHost: x\r\n"
POST = b"POST /call/echo HTTP/1.1\r\nHost: x\r\n"
CH = POST + b"Transfer-Encoding: chunked\r\n\r\n"
# "malformed": http_parser refuses it itself (as before); "framing": http_parser would take
# it, the framing rules do not; "bad_target": framed well, but its target may not be decoded.
# (what, request, status, reason(s))
cases = [
    # the issue's cases
    ("whitespace before the colon", POST + b"Transfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400, "framing"),
    ("a space inside a header name", G + b"X Foo: 1\r\n\r\n", 400, "framing"),
    ("TE identity then TE chunked", POST + b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 400, "framing"),
    ("a chunk size with a trailing space", CH + b"5 \r\nhello\r\n0\r\n\r\n", 400, "framing"),
    ("a chunk extension ending in a bare LF", CH + b"5;x\nhello\r\n0\r\n\r\n", 400, "framing"),
    ("Content-Length with a trailing space", POST + b"Content-Length: 5 \r\n\r\nhello", 400, "framing"),
    ("Content-Length with leading zeros", POST + b"Content-Length: 005\r\n\r\nhello", 400, "framing"),
    ("a method followed by two spaces", b"GET  /call/echo HTTP/1.1\r\nHost: x\r\n\r\n", 400, "framing"),
    ("conflicting Content-Lengths (kept)", POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, "malformed"),
    ("Content-Length and Transfer-Encoding (kept)", POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "malformed"),
    # more framing
    ("Transfer-Encoding then Content-Length", POST + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400, "malformed"),
    ("Transfer-Encoding: chunked, identity", POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400, "framing"),
    ("Transfer-Encoding: xchunked", POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400, "framing"),
    ("Transfer-Encoding: chunked twice", POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "framing"),
    ("Transfer-Encoding with a trailing space", POST + b"Transfer-Encoding: chunked \r\n\r\n0\r\n\r\n", 400, "framing"),
    ("Transfer-Encoding in HTTP/1.0", b"POST /call/echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "framing"),
    ("Content-Length with a sign", POST + b"Content-Length: +5\r\n\r\nhello", 400, "malformed"),
    ("Content-Length as a list", POST + b"Content-Length: 5, 5\r\n\r\nhello", 400, "malformed"),
    ("an empty Content-Length", POST + b"Content-Length:\r\n\r\n", 400, "framing"),
    ("Content-Length of 19 digits", POST + b"Content-Length: 1000000000000000000\r\n\r\n", 400, "framing"),
    ("an obs-fold line", G + b"X-A: 1\r\n folded\r\n\r\n", 400, "framing"),
    ("bare LF line endings", b"GET /call/echo HTTP/1.1\nHost: x\n\n", 400, "framing"),
    ("a bare CR inside a header value", G + b"X-A: a\rb\r\n\r\n", 400, "malformed"),
    ("a NUL in a header value", G + b"X-A: a\x00b\r\n\r\n", 400, "malformed"),
    ("a tab between method and target", b"GET\t/call/echo HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed"),
    ("a space after the version", b"GET /call/echo HTTP/1.1 \r\nHost: x\r\n\r\n", 400, "malformed"),
    ("two spaces before the version", b"GET /call/echo  HTTP/1.1\r\nHost: x\r\n\r\n", 400, "framing"),
    ("HTTP/1.2", b"GET /call/echo HTTP/1.2\r\nHost: x\r\n\r\n", 400, "framing"),
    ("a lowercase version", b"GET /call/echo http/1.1\r\nHost: x\r\n\r\n", 400, "malformed"),
    ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 400, "framing"),
    ("a chunk size with 0x", CH + b"0x5\r\nhello\r\n0\r\n\r\n", 400, "malformed"),
    ("chunk data longer than its size", CH + b"3\r\nhello\r\n0\r\n\r\n", 400, "framing"),
    ("a chunk size of 16 hex digits", CH + b"1000000000000000\r\nx\r\n0\r\n\r\n", 400, "framing"),
    ("a trailer with a space before its colon", CH + b"5\r\nhello\r\n0\r\nX-T : 1\r\n\r\n", 400, "framing"),
    ("two Host headers", b"GET /call/echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "framing"),
    ("a header name that is not a token", G + b"X<A>: 1\r\n\r\n", 400, "malformed"),
    ("whitespace before the request line", b" GET /call/echo HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed"),
    ("a chunk extension over 1 KiB", CH + b"5;" + b"e" * 2000 + b"\r\nhello\r\n0\r\n\r\n", 400, "framing"),
    ("a control byte in a chunk extension", CH + b"5;a\x01b\r\nhello\r\n0\r\n\r\n", 400, "framing"),
    # what is decoded before a policy sees it
    ("%00 in a query value", b"GET /call/echo?name=a%00b HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_target"),
    ("%00 in the path", b"GET /call/ec%00ho HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_target"),
    ("an invalid percent-escape", b"GET /call/echo?name=%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_target"),
    ("a truncated percent-escape", b"GET /call/echo?name=%4 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_target"),
    ("a path without its leading /", b"GET call/echo HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed"),
    ("* for GET", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_target"),
    ("userinfo in an absolute target", b"GET http://u@x/call/echo HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_target"),
    ("a fragment", b"GET /call/echo#frag HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_target"),
    ("a non-ASCII byte in the target", b"GET /call/ech\xc3\xb6 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "framing"),
    ("an ftp:// target", b"GET ftp://x/call/echo HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_target"),
]
assert len(cases) >= 28, len(cases)
for what, req, status, reasons in cases:
    if isinstance(reasons, str):
        reasons = (reasons,)
    before = metrics()
    buf, closed = exchange(req)
    after = metrics()
    got = answers(buf)
    assert got == [status], "%s: answers %s: %r" % (what, got, buf[:300])
    assert b"Connection: close" in buf and closed, "%s: the connection stays open" % what
    moved = [r for r in ("framing", "malformed", "bad_target") if rejected(after, r) != rejected(before, r)]
    assert len(moved) == 1 and moved[0] in reasons and rejected(after, moved[0]) == rejected(before, moved[0]) + 1, \
        "%s: counted under %s, expected one of %s" % (what, moved, reasons)
    assert calls(after) == calls(before), "%s: reached a policy" % what
    print("%d %-10s %s" % (status, moved[0], what))
    buf, closed = exchange(G + b"Connection: close\r\n\r\n")
    assert answers(buf) == [200] and buf.endswith(b"name=x body=nil"), "%s: the next request: %r" % (what, buf[:300])
print("%d cases" % len(cases))
PY
PORT=$PORT python3 "$TMP/cases.py" "$TMP" >"$TMP/out" 2>&1 || fail "python check failed"
cat "$TMP/out"
ok

t "well-formed framing is served as before"
cat >"$TMP/good.py" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from lib import *

CLOSE = b"Connection: close\r\n"
def one(req, body):
    buf, closed = exchange(req)
    assert answers(buf) == [200] and buf.endswith(body), (req[:80], buf[:400])

P = b"POST /call/echo HTTP/1.1\r\nHost: x\r\n" + CLOSE
one(P + b"Transfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n", b"body=hello world")
one(P + b"Transfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", b"body=hello")
one(P + b"Content-Length: 0\r\n\r\n", b"body=nil")
one(P + b"Content-Length:   5\r\n\r\nhello", b"body=hello")
one(b"\r\n\r\nGET /call/echo?name=y HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n", b"name=y body=nil")
one(b"GET /call/echo?name=y HTTP/1.0\r\n\r\n", b"name=y body=nil")
one(b"GET http://example.com/call/echo?name=abs HTTP/1.1\r\nHost: example.com\r\n" + CLOSE + b"\r\n", b"name=abs body=nil")
one(b"GET /call/echo?name=a%20b%2B HTTP/1.1\r\n" + CLOSE + b"\r\n", b"name=a b+ body=nil")
buf, closed = exchange(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n")
assert answers(buf) == [200] and b"Allow: GET, HEAD, POST, OPTIONS" in buf, buf
# pipelined: a chunked request then a plain one, answered in order on one connection
buf, closed = exchange(P.replace(CLOSE, b"") + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                       + b"GET /call/echo?name=z HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n")
assert answers(buf) == [200, 200] and b"body=abc" in buf and buf.endswith(b"name=z body=nil"), buf
PY
PORT=$PORT python3 "$TMP/good.py" "$TMP" >"$TMP/out" 2>&1 || fail "python check failed"
ok

t "SIGTERM: exit 0, no sanitizer report"
kill -TERM "$SRV_PID"
set +e
wait "$SRV_PID"
st=$?
set -e
SRV_PID=""
cp "$TMP/srv.err" "$TMP/err"
no_sanitizer_report "$TMP/srv.err"
[ "$st" -eq 0 ] || fail "serve exited $st"
ok

done_all
