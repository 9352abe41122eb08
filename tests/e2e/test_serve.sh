#!/usr/bin/env bash
# `resilua serve` over HTTP: /call and r.expose answers with DESIGN.md's X-Resilua-*
# headers, /healthz, /state, /metrics (checked by promtool when it is installed), /reload,
# pipelining in order, the limits (431, 413, 400, 408, idle close) with the server serving
# on, a client going away canceling its call, breaker state kept across a reload, a broken
# policy keeping the old one serving, hot reload on SIGHUP under load from 8 keep-alive
# connections, and SIGTERM draining slow calls in flight before exiting 0.
source "$(dirname "$0")/lib.sh"

command -v curl >/dev/null || { echo "curl is required (scripts/setup.sh installs it)"; exit 1; }

P=$TMP/policies
policy "$P" a.lua <<'LUA'
local r = require "resilua"

r.breaker "b" { min_calls = 2, failure_rate = 50, open_for = "60s" }

r.policy "echo" {
  steps = {
    primary = r.lua(function(req)
      return { status = 200, headers = { ["Content-Type"] = "text/plain" },
               body = "id=" .. tostring(req.id) .. " name=" .. tostring(req.name) .. " body=" .. tostring(req.body) }
    end),
  },
}

r.policy "fails" {
  steps = {
    primary = r.lua { run = function(req) return nil, "5xx" end, guards = { "b" } },
    stub = r.stub { status = 200, body = "stub" },
  },
  chain = { "primary", "stub" },
}

r.policy "teapot" { steps = { a = r.stub { status = 418, body = "short and stout" } } }

-- The bulkhead only counts the slow calls in flight, for the tests to wait on (/state).
r.bulkhead "slowb" { max = 100 }
r.policy "slow" {
  steps = { a = r.stub { body = "slow done", guards = { "slowb" },
                         fault = { delay = "500ms", delay_percent = 100 } } },
}

-- 3 MB: more than a loopback socket takes at once from a client that is not reading.
r.policy "big" { steps = { a = r.stub { body = string.rep("x", 3000000) .. "end" } } }

r.expose {
  ["GET /users/:id"] = "echo",
  ["POST /orders/:id/items/:name"] = "echo",
}
LUA
policy "$P" v.lua <<'LUA'
local r = require "resilua"
r.policy "version" { steps = { a = r.stub { body = "v0" } } }
LUA

SRV_PID=""
PORT=""
cleanup_server() {
  if [ -n "$SRV_PID" ]; then kill -KILL "$SRV_PID" 2>/dev/null || true; fi
}
trap 'cleanup_server; rm -rf "$TMP"' EXIT

# start_server [extra serve args...]: PORT, SRV_PID; output in $TMP/srv.out, srv.err
start_server() {
  : >"$TMP/srv.out"
  : >"$TMP/srv.err"
  "$RESILUA" serve -p "$P" --listen 127.0.0.1:0 --workers 2 "$@" >"$TMP/srv.out" 2>"$TMP/srv.err" &
  SRV_PID=$!
  for _ in $(seq 1 300); do
    PORT=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$TMP/srv.out")
    [ -n "$PORT" ] && return 0
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.1
  done
  cp "$TMP/srv.err" "$TMP/err"
  fail "server did not print its address"
}

# stop_server: SIGTERM, exit 0, no sanitizer report
stop_server() {
  kill -TERM "$SRV_PID"
  set +e
  wait "$SRV_PID"
  local st=$?
  set -e
  SRV_PID=""
  cp "$TMP/srv.err" "$TMP/err"
  no_sanitizer_report "$TMP/srv.err"
  [ "$st" -eq 0 ] || fail "serve exited $st after SIGTERM"
}

# get [curl args...] URL-PATH: $code, $TMP/out (body), $TMP/hdr (headers)
get() {
  local path=${*: -1}
  set +e
  code=$(curl -sS --max-time 30 -o "$TMP/out" -D "$TMP/hdr" -w '%{http_code}' "${@:1:$#-1}" \
    "http://127.0.0.1:$PORT$path" 2>"$TMP/curl_err")
  set -e
  tr -d '\r' <"$TMP/hdr" >"$TMP/hdr.txt"
}

expect_code() {
  [ "$code" = "$1" ] || { cat "$TMP/hdr.txt" >&2 2>/dev/null; cat "$TMP/curl_err" >&2; fail "status $code, expected $1"; }
}

expect_header() {
  grep -qixF -- "$1" "$TMP/hdr.txt" || { cat "$TMP/hdr.txt" >&2; fail "no header line: $1"; }
}

expect_body() {
  [ "$(cat "$TMP/out")" = "$1" ] || fail "body \"$(head -c 300 "$TMP/out")\", expected \"$1\""
}

# py SCRIPT-ARGS <<'PY': runs python3 with PORT in the environment; fails on non-zero
py() {
  PORT=$PORT SRV_PID=$SRV_PID P=$P python3 - "$@" >"$TMP/py.out" 2>&1 || {
    cat "$TMP/py.out" >&2
    fail "python check failed"
  }
}

metric() { # metric 'NAME{labels}': its value in /metrics (0 when absent)
  curl -sS --max-time 30 "http://127.0.0.1:$PORT/metrics" | awk -v k="$1" '$1 == k { v = $2 } END { print v + 0 }'
}

start_server

t "/call: status, body, result headers and X-Resilua-* headers; query attributes decoded"
get "/call/echo?id=42&name=a%20b+c"
expect_code 200
expect_body "id=42 name=a b c body=nil"
expect_header "Content-Type: text/plain"
expect_header "X-Resilua-Served-By: primary"
expect_header "X-Resilua-Outcome: ok"
expect_header "X-Resilua-Degraded: 0"
expect_header "X-Resilua-Path: primary=ok"
expect_header "Content-Length: 25"
ok

t "POST /call: the request body is req.body"
get --data-binary 'hello there' "/call/echo?id=1"
expect_code 200
expect_body "id=1 name=nil body=hello there"
ok

t "a fallback answers degraded, the path says why"
get "/call/fails"
expect_code 200
expect_body "stub"
expect_header "X-Resilua-Served-By: stub"
expect_header "X-Resilua-Degraded: 1"
expect_header "X-Resilua-Path: primary=5xx,stub=ok"
ok

t "the policy's own status is the answer's status"
get "/call/teapot"
expect_code 418
expect_body "short and stout"
expect_header "X-Resilua-Outcome: 4xx"
ok

t "unknown policy and unknown path: 404 with a JSON error"
get "/call/nope"
expect_code 404
expect_body '{"error":"unknown policy \"nope\""}'
expect_header "Content-Type: application/json"
get "/nowhere"
expect_code 404
expect_body '{"error":"no route for GET /nowhere"}'
ok

t "r.expose: path parameters become attributes (percent-decoded), methods are routed"
get "/users/77?name=q"
expect_code 200
expect_body "id=77 name=q body=nil"
expect_header "X-Resilua-Path: primary=ok"
get --data-binary 'two' "/orders/9/items/blue%20pen"
expect_code 200
expect_body "id=9 name=blue pen body=two"
get -X DELETE "/users/77"
expect_code 404
ok

t "/healthz, /state, methods"
get "/healthz"
expect_code 200
expect_body "ok"
get "/state"
expect_code 200
python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); assert s["generation"]==1 and s["last_reload"]["ok"] and "b" in s["guards"], s' "$TMP/out" ||
  fail "/state: $(cat "$TMP/out")"
get -X POST "/metrics"
expect_code 405
expect_header "Allow: GET"
get "/reload"
expect_code 405
ok

t "/metrics: Prometheus text with the runtime's and the server's series"
get "/metrics"
expect_code 200
expect_header "Content-Type: text/plain; version=0.0.4; charset=utf-8"
grep -q '^resilua_calls_total{policy="echo",outcome="ok"} [1-9]' "$TMP/out" || fail "no resilua_calls_total for echo"
grep -q '^resilua_http_requests_total{code="200"} [1-9]' "$TMP/out" || fail "no resilua_http_requests_total"
grep -q '^resilua_http_rejected_total{reason="header_too_large"} 0' "$TMP/out" || fail "no resilua_http_rejected_total"
grep -q '^resilua_breaker_state{breaker="b",state="closed"} 1' "$TMP/out" || fail "no breaker state"
if command -v promtool >/dev/null; then
  promtool check metrics <"$TMP/out" >"$TMP/promtool" 2>&1 || { cat "$TMP/promtool" >&2; fail "promtool check metrics"; }
elif [ -n "${CI:-}" ]; then
  fail "promtool not installed (scripts/setup.sh installs prometheus; CI must check the format)"
else
  echo "# promtool not installed: format not checked (scripts/setup.sh installs prometheus)"
fi
ok

t "pipelining: three requests in one write, answered in order on one connection"
py <<'PY'
import os, socket, time
s = socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), timeout=30)
reqs = b"".join(b"GET /call/%s HTTP/1.1\r\nHost: x\r\n\r\n" % p
                for p in (b"slow", b"echo?id=2", b"echo?id=3"))
t0 = time.time()
s.sendall(reqs)
buf = b""
while buf.count(b"HTTP/1.1 ") < 3 or not buf.endswith(b"body=nil"):
    d = s.recv(65536)
    assert d, "closed early: %r" % buf
    buf += d
parts = buf.split(b"HTTP/1.1 ")[1:]
bodies = [p.split(b"\r\n\r\n", 1)[1] for p in parts]
assert bodies == [b"slow done", b"id=2 name=nil body=nil", b"id=3 name=nil body=nil"], bodies
assert time.time() - t0 >= 0.45, "the slow one answered too early"
PY
ok

t "HTTP/1.0 closes after the answer; keep-alive reuses one connection"
py <<'PY'
import os, socket, http.client
s = socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), timeout=30)
s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
buf = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    buf += d
assert buf.startswith(b"HTTP/1.1 200") and b"Connection: close" in buf and buf.endswith(b"ok\n"), buf
c = http.client.HTTPConnection("127.0.0.1", int(os.environ["PORT"]), timeout=30)
for i in range(20):
    c.request("GET", "/call/echo?id=%d" % i)
    r = c.getresponse()
    assert r.status == 200 and r.read() == b"id=%d name=nil body=nil" % i
    assert not r.will_close
PY
ok

t "limits: 431 (header size, header count), 413, 400 -- each closes, the server serves on"
py <<'PY'
import os, socket
port = int(os.environ["PORT"])
def exchange(data, shut=False):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(data)
    except OSError:
        pass
    buf = b""
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            break
        if not d:
            break
        buf += d
    return buf
def status(buf):
    return int(buf.split(b" ")[1]) if buf.startswith(b"HTTP/1.1 ") else None
r = exchange(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
assert status(r) == 431 and b"Connection: close" in r and b"header too large" in r, r[:300]
r = exchange(b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(101)) + b"\r\n")
assert status(r) == 431 and b"too many header fields" in r, r[:300]
r = exchange(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(99)) + b"\r\n")
assert status(r) == 200, r[:300]   # 100 fields: within the limit
PY
ok

t "limits, continued: 413 on a declared or a streamed body, 400 on garbage"
py <<'PY'
import os, socket
port = int(os.environ["PORT"])
def exchange(data):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(data)
    except OSError:
        pass
    buf = b""
    while True:
        try:
            d = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not d:
            break
        buf += d
    return buf
def status(buf):
    return int(buf.split(b" ")[1]) if buf.startswith(b"HTTP/1.1 ") else None
r = exchange(b"POST /call/echo HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n")
assert status(r) == 413 and b"Connection: close" in r, r[:300]
# The whole oversized body sent anyway: the server discards it (lingering close) rather
# than resetting the connection under the client before it reads its 413.
r = exchange(b"POST /call/echo HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n" + b"z" * 2000000)
assert status(r) == 413 and b"body too large" in r, r[:300]
chunk = b"%x\r\n%s\r\n" % (600000, b"x" * 600000)
r = exchange(b"POST /call/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + chunk + b"0\r\n\r\n")
assert status(r) == 413, r[:300]
r = exchange(b"GARBAGE\r\n\r\n")
assert status(r) == 400 and b"malformed" in r, r[:300]
r = exchange(b"GET /healthz HTTP/1.1\r\nContent-Length: zz\r\n\r\n")
assert status(r) == 400, r[:300]
PY
get "/healthz"
expect_code 200
[ "$(metric 'resilua_http_rejected_total{reason="header_too_large"}')" -ge 1 ] || fail "header_too_large not counted"
[ "$(metric 'resilua_http_rejected_total{reason="too_many_headers"}')" -ge 1 ] || fail "too_many_headers not counted"
[ "$(metric 'resilua_http_rejected_total{reason="body_too_large"}')" -ge 2 ] || fail "body_too_large not counted"
[ "$(metric 'resilua_http_rejected_total{reason="malformed"}')" -ge 2 ] || fail "malformed not counted"
ok

t "Expect: 100-continue gets its 100 before the body is sent (curl sends it for big bodies)"
py <<'PY'
import os, socket
s = socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), timeout=30)
body = b"y" * 300000
s.sendall(b"POST /call/echo?id=big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
          b"Expect: 100-continue\r\n\r\n" % len(body))
buf = b""
while b"\r\n\r\n" not in buf:      # nothing of the body sent yet: the 100 must come first
    d = s.recv(4096)
    assert d, "closed before the 100: %r" % buf
    buf += d
assert buf.startswith(b"HTTP/1.1 100 Continue\r\n"), buf[:200]
buf = buf.split(b"\r\n\r\n", 1)[1]
s.sendall(body)
want = b"body=" + body
while not buf.endswith(want):
    d = s.recv(1 << 20)
    assert d, "closed before the answer: %r" % buf[:200]
    buf += d
assert buf.startswith(b"HTTP/1.1 200 "), buf[:200]
PY
head -c 300000 /dev/zero | tr '\0' 'y' >"$TMP/big"
get --data-binary @"$TMP/big" -H "Expect: 100-continue" "/call/echo?id=big"
expect_code 200
grep -q '^HTTP/1.1 100 Continue$' "$TMP/hdr.txt" || { cat "$TMP/hdr.txt" >&2; fail "curl got no 100 Continue"; }
ok

t "an answer larger than the socket takes at once, to a client that reads late, pipelined"
py <<'PY'
import os, socket, time
s = socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), timeout=10)
s.sendall(b"GET /call/big HTTP/1.1\r\nHost: x\r\n\r\n" * 2 + b"GET /call/teapot HTTP/1.1\r\nHost: x\r\n\r\n")
time.sleep(0.5)  # the server writes what fits and queues the rest
data = b""
while data.count(b"short and stout") == 0:
    chunk = s.recv(1 << 20)
    assert chunk, "connection closed after %d bytes" % len(data)
    data += chunk
answers = data.split(b"HTTP/1.1 ")[1:]
assert len(answers) == 3, [a[:40] for a in answers]
for a in answers[:2]:
    head, body = a.split(b"\r\n\r\n", 1)
    assert head.startswith(b"200 ") and b"Content-Length: 3000003" in head, head
    assert len(body) == 3000003 and body.endswith(b"end"), len(body)
assert answers[2].startswith(b"418 "), answers[2][:40]
PY
ok

t "a client that goes away mid-call cancels its call"
before=$(metric 'resilua_calls_total{policy="slow",outcome="canceled"}')
py <<'PY'
import json, os, socket, time, urllib.request
port = int(os.environ["PORT"])
def inflight():
    with urllib.request.urlopen("http://127.0.0.1:%d/state" % port, timeout=30) as r:
        return json.load(r)["guards"]["slowb"]["inflight"]
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.sendall(b"GET /call/slow HTTP/1.1\r\nHost: x\r\n\r\n")
for _ in range(3000):                 # until the call is in flight (at most 30 s)
    if inflight() == 1:
        break
    time.sleep(0.01)
assert inflight() == 1, "the slow call never started"
s.close()
PY
for _ in $(seq 1 300); do # the cancel lands on the worker's loop: wait for it (30 s at most)
  after=$(metric 'resilua_calls_total{policy="slow",outcome="canceled"}')
  [ "$after" -ge $((before + 1)) ] && break
  sleep 0.1
done
[ "$after" -eq $((before + 1)) ] || fail "canceled slow calls: $before -> $after"
[ "$(metric 'resilua_http_client_aborts_total')" -ge 1 ] || fail "client abort not counted"
ok

t "a breaker trips (one JSON event line) and keeps its state across a reload"
for _ in 1 2 3; do get "/call/fails"; done
expect_header "X-Resilua-Path: primary=rejected,stub=ok"
grep -q '"event":"transition","guard":"b","from":"closed","to":"open","reason":"failure_rate' "$TMP/srv.err" ||
  { cp "$TMP/srv.err" "$TMP/err"; fail "no transition event"; }
sed -i 's/short and stout/tall and thin/' "$P/a.lua"
get -X POST "/reload"
expect_code 200
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["ok"] and r["generation"]==2 and "b" in r["kept"], r' "$TMP/out" ||
  fail "reload answer: $(cat "$TMP/out")"
get "/call/teapot"
expect_body "tall and thin"
get "/call/fails"
expect_header "X-Resilua-Path: primary=rejected,stub=ok"
get "/state"
python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); assert s["generation"]==2 and s["guards"]["b"]["state"]=="open", s' "$TMP/out" ||
  fail "/state after reload: $(cat "$TMP/out")"
grep -q '"event":"reload","ok":true' "$TMP/srv.err" || { cp "$TMP/srv.err" "$TMP/err"; fail "no reload event"; }
ok

t "a broken policy: POST /reload 422 with file:line, SIGHUP logs it, the old one serves, /state shows it"
cp "$P/a.lua" "$TMP/a.lua.good"
sed -i 's/failure_rate = 50/failure_rate = 150/' "$P/a.lua"
get -X POST "/reload"
expect_code 422
python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
assert r["ok"] is False and "a.lua:3:" in r["error"] and "failure_rate" in r["error"], r' "$TMP/out" ||
  fail "422 answer: $(cat "$TMP/out")"
get "/call/teapot"
expect_code 418
expect_body "tall and thin"
kill -HUP "$SRV_PID"
for _ in $(seq 1 300); do
  grep -q '"event":"reload","ok":false,"error":".*a.lua:3:' "$TMP/srv.err" && break
  sleep 0.1
done
grep -q '"event":"reload","ok":false,"error":".*a.lua:3:' "$TMP/srv.err" ||
  { cp "$TMP/srv.err" "$TMP/err"; fail "no failed reload event"; }
get "/state"
python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
lr = s["last_reload"]
assert s["generation"] == 2 and lr["ok"] is False and "a.lua:3:" in lr["error"], s' "$TMP/out" ||
  fail "/state after a failed reload: $(cat "$TMP/out")"
cp "$TMP/a.lua.good" "$P/a.lua"
get -X POST "/reload"
expect_code 200
ok

t "hot reload under load: 8 keep-alive clients, a rewrite + SIGHUP every 0.5 s, 12+ reloads and 1000+ answers"
py <<'PY'
import http.client, os, re, signal, threading, time
port, pid, pdir = int(os.environ["PORT"]), int(os.environ["SRV_PID"]), os.environ["P"]
stop = threading.Event()
errors, bad, counts = [], [], [0] * 8
written = [0]          # highest version written so far (v0 is the file's start)

def client(i):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        try:
            c.request("GET", "/call/version")
            r = c.getresponse()
            body = r.read().decode()
        except Exception as e:       # a dropped connection is a failure, not a retry
            errors.append("client %d: %r" % (i, e))
            return
        m = re.fullmatch(r"v(\d+)", body)
        if r.status != 200 or not m or int(m.group(1)) > written[0]:
            bad.append((r.status, body))
        counts[i] += 1

def write_version(n):
    tmp = os.path.join(pdir, "v.lua.tmp")
    with open(tmp, "w") as f:
        f.write('local r = require "resilua"\n'
                'r.policy "version" { steps = { a = r.stub { body = "v%d" } } }\n' % n)
    written[0] = max(written[0], n)
    os.rename(tmp, os.path.join(pdir, "v.lua"))   # never a half-written file

threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
n = 0
# Until there were 12 reloads and every client had answers, 1000 in all: a loaded machine
# takes longer, never fewer (at most 120 s, then the asserts below say what was missing).
t_end = time.time() + 120
while time.time() < t_end and not (n >= 12 and all(counts) and sum(counts) > 1000):
    time.sleep(0.5)
    n += 1
    write_version(n)
    os.kill(pid, signal.SIGHUP)
# The last SIGHUP may coalesce with the one before: one more, then the new body must serve.
time.sleep(0.3)
os.kill(pid, signal.SIGHUP)
deadline = time.time() + 30
last = None
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
while time.time() < deadline:
    c.request("GET", "/call/version")
    last = c.getresponse().read().decode()
    if last == "v%d" % n:
        break
    time.sleep(0.05)
stop.set()
for t in threads:
    t.join()
total = sum(counts)
print("answers %d, per client %s, reloads %d" % (total, counts, n))
assert not errors, errors[:5]
assert not bad, bad[:5]
assert last == "v%d" % n, "after the last reload: %r, expected v%d" % (last, n)
assert all(x > 0 for x in counts) and total > 1000, counts
PY
cat "$TMP/py.out"
grep -c '"event":"reload","ok":true' "$TMP/srv.err" >"$TMP/nreload"
[ "$(cat "$TMP/nreload")" -ge 6 ] || fail "only $(cat "$TMP/nreload") reload events"
ok

t "idle keep-alive connections close after --idle-timeout; a slow request gets 408"
stop_server
# The idle period is the longer one: a request's first byte must reach the server before
# its connection counts as idle (that needs the server to stall for a whole second).
start_server --idle-timeout 1s --request-timeout 400ms
py <<'PY'
import os, socket, time
port = int(os.environ["PORT"])
# t0 before connecting: the server's timers start at accept, never before.  The upper
# bounds only say "it did close" (a loaded machine may be late, never early).
t0 = time.time()
s = socket.create_connection(("127.0.0.1", port), timeout=30)
assert s.recv(100) == b""            # closed by the server, nothing said
dt = time.time() - t0
assert 0.99 < dt < 20, dt
t0 = time.time()
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")   # never finished
buf = b""
while True:
    d = s.recv(4096)
    if not d:
        break
    buf += d
dt = time.time() - t0
assert buf.startswith(b"HTTP/1.1 408") and b"Connection: close" in buf, buf
assert 0.39 < dt < 20, dt
PY
[ "$(metric 'resilua_http_rejected_total{reason="request_timeout"}')" -eq 1 ] || fail "408 not counted"
[ "$(metric 'resilua_http_idle_closed_total')" -ge 1 ] || fail "idle close not counted"
ok

t "SIGTERM: slow calls in flight answer, a request being sent gets 503 from /healthz, exit 0"
stop_server
start_server
py <<'PY'
import json, os, signal, socket, threading, time, urllib.request
port, pid = int(os.environ["PORT"]), int(os.environ["SRV_PID"])
results = []
def inflight():
    with urllib.request.urlopen("http://127.0.0.1:%d/state" % port, timeout=30) as r:
        return json.load(r)["guards"]["slowb"]["inflight"]
def slow():
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /call/slow HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = b""
    while True:
        d = s.recv(4096)
        if not d:
            break
        buf += d
    results.append(buf)
idle = socket.create_connection(("127.0.0.1", port), timeout=30)
partial = socket.create_connection(("127.0.0.1", port), timeout=30)
partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
threads = [threading.Thread(target=slow) for _ in range(4)]
for t in threads:
    t.start()
for _ in range(3000):                 # until the 4 slow calls are in flight (30 s at most)
    if inflight() == 4:
        break
    time.sleep(0.01)
assert inflight() == 4, "the slow calls never started"
os.kill(pid, signal.SIGTERM)
# The idle connection closing says the drain has begun on its worker; connections refused
# say every worker closed its listener, so every worker drains (each drains on its own
# loop: until then a connection may still be taken, and is closed here at once).
assert idle.recv(100) == b"", "an idle connection stays open while draining"
refused = False
for _ in range(3000):                 # 30 s at most
    try:
        socket.create_connection(("127.0.0.1", port), timeout=30).close()
    except ConnectionRefusedError:
        refused = True
        break
    time.sleep(0.01)
assert refused, "still accepting while draining"
partial.sendall(b"\r\n")
buf = b""
while True:
    d = partial.recv(4096)
    if not d:
        break
    buf += d
assert buf.startswith(b"HTTP/1.1 503") and b"draining" in buf and b"Connection: close" in buf, buf
for t in threads:
    t.join()
assert len(results) == 4 and all(r.startswith(b"HTTP/1.1 200") and r.endswith(b"slow done")
                                  and b"Connection: close" in r for r in results), results
PY
set +e
wait "$SRV_PID"
st=$?
set -e
SRV_PID=""
cp "$TMP/srv.err" "$TMP/err"
no_sanitizer_report "$TMP/srv.err"
[ "$st" -eq 0 ] || fail "exit status $st after SIGTERM"
grep -q '"event":"stopped"' "$TMP/srv.err" || fail "no stopped event"
ok

t "usage errors: exit 2; a directory that does not load: exit 2 with file:line"
run serve --workers 0
expect_rc 2
run serve -p "$P" --listen nohost
expect_rc 2
expect_err 'expected HOST:PORT'
policy "$TMP/bad" x.lua <<'LUA'
local r = require "resilua"
r.breaker "x" { failure_rate = 150 }
LUA
run serve -p "$TMP/bad" --listen 127.0.0.1:0
expect_rc 2
expect_err "x.lua:2:"
ok

done_all
