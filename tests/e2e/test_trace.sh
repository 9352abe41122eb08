#!/usr/bin/env bash
# Traces and the access log, as an operator runs them: `resilua serve` with the shipped
# storefront policy in front of examples/flaky, sending spans to an OTLP/HTTP receiver of
# this test's own (otlp_receiver.py) on loopback.  A VIP request through a failing primary
# to the cache gives the call's span and the attempts' spans with their outcomes,
# attributes and parents; the traceparent that reached the upstream carries the client's
# trace id and the attempt's span as its parent; the breaker's opening is an event with
# its reason; with the receiver gone every call still answers and the dropped spans are
# counted; the access log has one JSON line per answer and survives SIGUSR1 reopens under
# load with no line lost or torn.
source "$(dirname "$0")/lib.sh"
set -e
P=$TMP/policies
mkdir -p "$P"


# py ARGS <<'PY': python3 with the ports in its environment
py() {
  SC=$SC UP=$UP OT=$OT TMP=$TMP SRV=$SRV python3 - "$@" >"$TMP/py.out" 2>&1 || {
    cat "$TMP/py.out" >&2
    fail "python check failed"
  }
}

# The helpers the checks share: requests to the sidecar and the spans received.
cat >"$TMP/h.py" <<'PY'
import http.client, json, os, time
SC, UP = int(os.environ["SC"]), int(os.environ["UP"])
TMP = os.environ["TMP"]

def req(port, path, headers=None, method="GET"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body

def spans():
    out = []
    try:
        lines = open(TMP + "/spans.jsonl").read().splitlines()
    except FileNotFoundError:
        return out
    for l in lines:
        for rs in json.loads(l)["resourceSpans"]:
            svc = {a["key"]: a["value"] for a in rs["resource"]["attributes"]}
            assert svc["service.name"] == {"stringValue": "storefront-e2e"}, svc
            for ss in rs["scopeSpans"]:
                out.extend(ss["spans"])
    return out

def attrs(s):
    a = {}
    for kv in s.get("attributes", []):
        v = kv["value"]
        a[kv["key"]] = v.get("stringValue", v.get("intValue", v.get("boolValue")))
    return a

def sixty_calls():
    """60 VIP calls, each must answer 200: the mean time a call took, in ms."""
    t0 = time.time()
    for i in range(60):
        st, h, b = req(SC, "/products/%d?tier=vip" % (i % 3 + 7))
        assert st == 200, (i, st)
    return (time.time() - t0) * 1000 / 60

def wait_spans(cond, what, limit=60):
    t = time.time()
    while time.time() - t < limit:
        got = spans()
        if cond(got):
            return got
        time.sleep(0.1)
    raise SystemExit("no %s within %ds; %d spans" % (what, limit, len(spans())))
PY

t "an upstream, an OTLP receiver and a traced sidecar with an access log start"
start flaky "$FLAKY" --listen 127.0.0.1:0 --quiet
UP=$port
start otlp python3 "$RSL_SOURCE_DIR/tests/e2e/otlp_receiver.py" "$TMP/spans.jsonl"
OT=$port
sed "s/127\.0\.0\.1:9000/127.0.0.1:$UP/" "$RSL_SOURCE_DIR/policies/storefront.lua" >"$P/storefront.lua"
# Held open once tripped, and generous timeouts: nothing below races a period.
sed -i 's/open_for = "1s"/open_for = "1h"/; s/max = "4s"/max = "2h"/; s/window = "2s"/window = "1h"/; s/deadline = "400ms"/deadline = "20s"/; s/timeout = "200ms"/timeout = "10s"/' "$P/storefront.lua"
cat >"$P/echo.lua" <<'LUA'
local r = require "resilua"
r.policy "echo" { steps = { a = r.stub { body = "hi" } } }
LUA
start serve "$RESILUA" serve -p "$P" --listen 127.0.0.1:0 --workers 2 \
  --otlp-endpoint "http://127.0.0.1:$OT/v1/traces" --trace-sample 1 \
  --service-name storefront-e2e --access-log "$TMP/access.log"
SC=$port
SRV=${pids[-1]}
ok

CALLER_TRACE=4bf92f3577b34da6a3ce929d0e0e4736
t "the traceparent reaching the upstream carries the client's trace, the attempt as parent"
py <<'PY'
exec(open(__import__("os").environ["TMP"] + "/h.py").read())
tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
st, h, b = req(SC, "/products/7?tier=vip", {"traceparent": tp, "tracestate": "congo=t61rcWkgMzE"})
assert st == 200 and h["x-resilua-served-by"] == "primary", (st, h)
st, h, b = req(UP, "/_last")
last = json.loads(b)
hd = {k.lower(): v for k, v in last["headers"].items()}
up = hd["traceparent"].split("-")
assert up[0] == "00" and up[1] == "4bf92f3577b34da6a3ce929d0e0e4736", hd
assert up[2] != "00f067aa0ba902b7" and up[3] == "01", hd
assert hd["tracestate"] == "congo=t61rcWkgMzE", hd
assert int(hd["x-resilua-deadline-ms"]) > 0, hd
got = wait_spans(lambda g: any(s["spanId"] == up[2] for s in g), "the attempt's span")
att = [s for s in got if s["spanId"] == up[2]][0]
call = [s for s in got if s["spanId"] == att["parentSpanId"]][0]
assert call["parentSpanId"] == "00f067aa0ba902b7" and call["traceId"] == up[1], call
a = attrs(att)
assert a["resilua.step"] == "primary" and a["resilua.outcome"] == "ok", a
assert a["http.request.method"] == "GET" and a["server.address"] == "127.0.0.1", a
assert int(a["server.port"]) == UP and int(a["http.response.status_code"]) == 200, a
assert att["kind"] == 3 and call["kind"] == 1, (att["kind"], call["kind"])
PY
ok

t "a VIP request through the failing primary to the cache: its spans, outcomes, parents"
curl -sS --max-time 30 -o /dev/null -X POST "http://127.0.0.1:$UP/_control?fail=100"
py <<'PY'
exec(open(__import__("os").environ["TMP"] + "/h.py").read())
tp = "00-11112222333344445555666677778888-0102030405060708-01"
st, h, b = req(SC, "/products/7?tier=vip", {"traceparent": tp})
assert st == 200 and h["x-resilua-served-by"] == "cache" and h["x-resilua-degraded"] == "1", (st, h)
st, _, b = req(UP, "/_last")
sent = {k.lower(): v for k, v in json.loads(b)["headers"].items()}["traceparent"].split("-")
assert sent[1] == "11112222333344445555666677778888", sent
got = wait_spans(lambda g: sum(s["traceId"] == sent[1] for s in g) >= 4, "the call's spans")
mine = [s for s in got if s["traceId"] == sent[1]]
call = [s for s in mine if s["name"] == "storefront.product"]
assert len(call) == 1, [s["name"] for s in mine]
call = call[0]
c = attrs(call)
assert call["parentSpanId"] == "0102030405060708", call
assert c["resilua.served_by"] == "cache" and c["resilua.degraded"] is True, c
assert c["resilua.outcome"] == "ok" and c["resilua.path"].startswith("primary=5xx,cache=ok"), c
kids = [s for s in mine if s is not call]
assert all(s["parentSpanId"] == call["spanId"] for s in kids), kids
prim = sorted([s for s in kids if s["name"] == "primary"], key=lambda s: attrs(s)["resilua.attempt"])
assert len(prim) == 2, [attrs(s) for s in kids]  # a retry: attempts 1 and 2
for n, s in enumerate(prim, 1):
    a = attrs(s)
    assert int(a["resilua.attempt"]) == n and a["resilua.outcome"] == "5xx", a
    assert int(a["http.response.status_code"]) == 503 and a["error.type"] == "5xx", a
    assert s["status"]["code"] == 2, s["status"]
assert sent[2] == prim[1]["spanId"], (sent, prim[1]["spanId"])  # the last attempt's
cache = [s for s in kids if s["name"] == "cache"]
assert len(cache) == 1 and attrs(cache[0])["resilua.outcome"] == "ok", cache
assert cache[0]["status"]["code"] == 1
PY
ok

t "the breaker's opening is an event on the attempt that tripped it, with its reason"
py <<'PY'
exec(open(__import__("os").environ["TMP"] + "/h.py").read())
for i in range(12):
    st, h, b = req(SC, "/products/7?tier=vip")
    assert st == 200 and h["x-resilua-served-by"] == "cache", (i, st, h)
st, h, b = req(SC, "/state")
assert json.loads(b)["guards"]["products-api"]["state"] == "open"
def opened(g):
    for s in g:
        for e in s.get("events", []):
            if e["name"] == "resilua.breaker.transition" and attrs(e)["resilua.to"] == "open":
                return s, e
    return None
got = wait_spans(opened, "the opening event")
s, e = opened(got)
a = attrs(e)
assert s["name"] == "primary" and a["resilua.guard"] == "products-api", (s["name"], a)
assert a["resilua.from"] == "closed" and "failure_rate" in a["resilua.reason"], a
assert int(e["timeUnixNano"]) >= int(s["startTimeUnixNano"]), (e, s)
# Open now: the next attempt is refused by the breaker, and its span says which guard.
st, h, b = req(SC, "/products/7?tier=vip", {"traceparent": "00-aaaabbbbccccddddeeeeffff00001111-0102030405060708-01"})
got = wait_spans(lambda g: any(s["traceId"] == "aaaabbbbccccddddeeeeffff00001111" and s["name"] == "primary" for s in g), "the refused attempt")
r = [s for s in got if s["traceId"] == "aaaabbbbccccddddeeeeffff00001111" and s["name"] == "primary"][0]
assert attrs(r)["resilua.outcome"] == "rejected" and attrs(r)["resilua.guard"] == "products-api", attrs(r)
PY
ok

t "the receiver gone: every call still answers, and the dropped spans are counted"
py <<'PY'
exec(open(__import__("os").environ["TMP"] + "/h.py").read())
print("60 calls with the receiver up: %.2f ms a call" % sixty_calls())
PY
cat "$TMP/py.out"
kill -TERM "${pids[1]}"
wait "${pids[1]}" 2>/dev/null || true
py <<'PY'
exec(open(__import__("os").environ["TMP"] + "/h.py").read())
import re
print("60 calls with the receiver down: %.2f ms a call" % sixty_calls())
def dropped():
    st, h, b = req(SC, "/metrics")
    m = re.search(rb'resilua_trace_spans_dropped_total\{reason="export_failed"\} (\d+)', b)
    return int(m.group(1)) if m else 0
t = time.time()
while dropped() == 0 and time.time() - t < 60:
    time.sleep(0.2)
assert dropped() > 0, "no dropped spans counted"
PY
cat "$TMP/py.out"
ok

t "the access log: one JSON line per answer, through SIGUSR1 reopens under load"
py <<'PY'
exec(open(__import__("os").environ["TMP"] + "/h.py").read())
import os, signal, threading
SRV = int(os.environ["SRV"])
N, T = 600, 4
done = [0]
lock = threading.Lock()
def load():
    c = http.client.HTTPConnection("127.0.0.1", SC, timeout=30)
    for i in range(N):
        c.request("GET", "/call/echo?i=%d" % i)
        r = c.getresponse()
        r.read()
        assert r.status == 200
        with lock:
            done[0] += 1
    c.close()
ts = [threading.Thread(target=load) for _ in range(T)]
for t in ts:
    t.start()
for k, at in enumerate((N * T // 4, N * T // 2)):
    while done[0] < at:
        time.sleep(0.01)
    os.rename(TMP + "/access.log", TMP + "/access.log.%d" % (k + 1))
    os.kill(SRV, signal.SIGUSR1)
for t in ts:
    t.join()
PY
kill -TERM "$SRV"
wait "$SRV" || fail "serve exited $? after SIGTERM"
no_sanitizer_report "$TMP/serve.err"
py <<'PY'
import json, os, re
TMP = os.environ["TMP"]
lines = []
for f in ("access.log.1", "access.log.2", "access.log"):
    data = open(os.path.join(TMP, f)).read()
    assert data.endswith("\n"), f
    got = data.split("\n")[:-1]
    assert got, "%s is empty: the reopen did not happen" % f
    lines += got
recs = [json.loads(l) for l in lines]  # a torn line would not parse
for r in recs:
    for k in ("time", "method", "path", "status", "duration_ms", "bytes"):
        assert k in r, r
echo = [r for r in recs if r.get("policy") == "echo"]
assert len(echo) == 2400, len(echo)
assert all(r["outcome"] == "ok" and r["served_by"] == "a" and r["steps"] == ["a=ok"] for r in echo)
prods = [r for r in recs if r.get("policy") == "storefront.product"]
assert any(r.get("trace_id") == "11112222333344445555666677778888" and r["served_by"] == "cache" and r["degraded"] for r in prods), prods[:3]
# Every answer the sidecar gave has its line: the requests the test made, all of them.
assert len(recs) == len(prods) + len(echo) + sum(r["path"] in ("/state", "/metrics") for r in recs)
print("%d lines, %d of them in the reopened files" % (len(recs), len(recs) - len(open(os.path.join(TMP, "access.log")).read().splitlines())))
PY
cat "$TMP/py.out"
ok

t "--trace-skip-unsampled: an unsampled call of its own sends no traceparent; a client's goes on"
curl -sS --max-time 30 -o /dev/null -X POST "http://127.0.0.1:$UP/_control?fail=0"
mkdir -p "$TMP/p2"
cat >"$TMP/p2/up.lua" <<LUA
local r = require "resilua"
r.policy "up" { steps = { a = r.http { url = "http://127.0.0.1:$UP/items/1", timeout = "10s" } } }
LUA
start serve2 "$RESILUA" serve -p "$TMP/p2" --listen 127.0.0.1:0 \
  --otlp-endpoint "http://127.0.0.1:$OT/v1/traces" --trace-sample 0 --trace-skip-unsampled
S2=$port
py <<PY
exec(open(__import__("os").environ["TMP"] + "/h.py").read())
st, h, b = req($S2, "/call/up")
assert st == 200, (st, b)
st, _, b = req(UP, "/_last")
hd = {k.lower(): v for k, v in json.loads(b)["headers"].items()}
assert "traceparent" not in hd and "host" in hd, hd
tp = "00-99998888777766665555444433332222-0102030405060708-00"
st, h, b = req($S2, "/call/up", {"traceparent": tp})
st, _, b = req(UP, "/_last")
hd = {k.lower(): v for k, v in json.loads(b)["headers"].items()}
assert hd["traceparent"].split("-")[1] == "99998888777766665555444433332222", hd
PY
ok

done_all
