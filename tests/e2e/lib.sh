# lib.sh -- shared by tests/e2e/test_*.sh (sourced; not a test itself).
#
# Each script drives the built `resilua` ($RESILUA) as a policy author would, in a temp
# dir it removes on exit, stops at the first failure with a clear message (and what the
# command printed), and ends with "N passed, 0 failed".
#
#   t "name"                 starts a check
#   run ARGS...              runs resilua: $rc, $TMP/out (stdout), $TMP/err (stderr);
#                            fails on any sanitizer report in stderr
#   expect_rc N              exit status
#   expect_out STR / expect_err STR        stdout/stderr contains STR (fixed string)
#   expect_err_line LINE     stderr has exactly this line
#   expect_json 'PYEXPR' [what]            PYEXPR is true over R (the stdout JSON lines)
#   ok                       the check passed
#   policy DIR FILE <<'EOF'  writes a policy file
#   start NAME CMD...        runs a server in the background until the script exits
#   $FLAKY                   the built examples/flaky
set -u
: "${RESILUA:?RESILUA must name the built resilua binary (ctest sets it)}"
RSL_SOURCE_DIR=${RSL_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
TMP=$(mktemp -d /tmp/rsl-e2e-XXXXXX)
# The servers start() ran are killed on exit, before the temp dir goes.
pids=()
trap 'for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$TMP"' EXIT
# examples/flaky, the upstream of the tests that start one
FLAKY=${RSL_BINARY_DIR:-$RSL_SOURCE_DIR/build}/example_flaky
passed=0
current="(setup)"
rc=0

t() {
  current=$1
}

ok() {
  passed=$((passed + 1))
  echo "ok $passed - $current"
}

fail() {
  {
    echo "FAIL: $current: $*"
    if [ -s "$TMP/out" ]; then echo "--- stdout:"; head -c 4000 "$TMP/out"; fi
    if [ -s "$TMP/err" ]; then echo "--- stderr:"; head -c 4000 "$TMP/err"; fi
  } >&2
  echo "$passed passed, 1 failed"
  exit 1
}

# free_port: a loopback port nothing listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_redis: a redis-server on 127.0.0.1:$RPORT (no persistence), its pid in RPID and
# in pids (stopped on exit); waits (bounded) until it accepts connections.
start_redis() {
  redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
    >"$TMP/redis.out" 2>&1 &
  RPID=$!
  pids+=($RPID)
  for _ in $(seq 1 100); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' \
      "$RPORT" 2>/dev/null && return 0
    sleep 0.05
  done
  fail "redis-server did not start: $(cat "$TMP/redis.out")"
}

done_all() {
  echo "$passed passed, 0 failed"
  exit 0
}

# start NAME CMD...: runs a server in the background (its pid appended to the caller's
# `pids` array), waits for its "listening 127.0.0.1:PORT" line on stdout; sets $port.
# Output in $TMP/NAME.out and $TMP/NAME.err.
start() {
  local name=$1; shift
  : >"$TMP/$name.out" # before the server starts: sed below must find it (set -e)
  "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
  pids+=($!)
  for _ in $(seq 1 300); do
    port=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$TMP/$name.out" | head -1)
    [ -n "$port" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  cp "$TMP/$name.err" "$TMP/err"
  fail "$name did not print its address"
}

run() {
  set +e
  "$RESILUA" "$@" >"$TMP/out" 2>"$TMP/err"
  rc=$?
  set -e
  no_sanitizer_report "$TMP/err"
}

# Under ASan/UBSan/TSan a report may not change the exit status the test expects (ASan
# exits 1, like a failing check): look for one in what the binary printed.
no_sanitizer_report() {
  if grep -qE "ERROR: (Address|Leak|Thread|Memory)Sanitizer|WARNING: ThreadSanitizer|runtime error: " "$1"; then
    fail "sanitizer report in $1"
  fi
}

expect_rc() {
  [ "$rc" -eq "$1" ] || fail "exit status $rc, expected $1"
}

expect_out() {
  grep -qF -- "$1" "$TMP/out" || fail "stdout lacks: $1"
}

expect_no_out() {
  ! grep -qF -- "$1" "$TMP/out" || fail "stdout has: $1"
}

expect_err() {
  grep -qF -- "$1" "$TMP/err" || fail "stderr lacks: $1"
}

expect_err_line() {
  grep -qxF -- "$1" "$TMP/err" || fail "stderr lacks the exact line: $1"
}

expect_empty_out() {
  [ ! -s "$TMP/out" ] || fail "stdout should be empty"
}

policy() {
  mkdir -p "$1"
  cat >"$1/$2"
}

# The JSON checker: every stdout line must parse and carry DESIGN.md's fields; then the
# expression is evaluated with R = the list of results and these helpers:
#   path(r)       "primary=5xx,stub=ok"
#   steps(r)      ["primary", "stub"]
#   entry(r, s)   the path entry of step s, or None
#   first(cond)   index of the first result satisfying cond(r), or None
cat >"$TMP/check.py" <<'PY'
import json, sys

OUTCOMES = {"ok", "timeout", "connect", "5xx", "4xx", "rejected", "miss", "error", "canceled"}

def die(msg):
    print("json check: " + msg, file=sys.stderr)
    sys.exit(1)

lines = [l for l in open(sys.argv[1]).read().split("\n") if l != ""]
R = []
for n, l in enumerate(lines, 1):
    try:
        r = json.loads(l)
    except ValueError as e:
        die("line %d is not JSON (%s): %s" % (n, e, l))
    if not isinstance(r, dict):
        die("line %d is not an object: %s" % (n, l))
    R.append(r)
    want = {"policy": str, "status": int, "outcome": str, "degraded": bool, "body": str,
            "elapsed_ms": (int, float), "path": list}
    for k, ty in want.items():
        if k not in r or not isinstance(r[k], ty) or (ty is int and isinstance(r[k], bool)):
            die("line %d: field %s missing or not %s: %s" % (n, k, ty, l))
    if "served_by" not in r or not (r["served_by"] is None or isinstance(r["served_by"], str)):
        die("line %d: served_by missing or not a string: %s" % (n, l))
    if r["outcome"] not in OUTCOMES:
        die("line %d: unknown outcome %r" % (n, r["outcome"]))
    if r["elapsed_ms"] < 0:
        die("line %d: negative elapsed_ms" % n)
    for e in r["path"]:
        for k, ty in {"step": str, "outcome": str, "ms": (int, float), "attempts": int}.items():
            if k not in e or not isinstance(e[k], ty):
                die("line %d: path entry lacks %s (%s): %s" % (n, k, ty, l))
        if e["outcome"] not in OUTCOMES:
            die("line %d: path outcome %r" % (n, e["outcome"]))
        if e["outcome"] != "ok" and not (isinstance(e.get("error"), str) and e["error"]):
            die("line %d: path entry %s is %s without an error message: %s"
                % (n, e["step"], e["outcome"], l))
        if e["outcome"] == "ok" and "error" in e:
            die("line %d: ok path entry carries an error: %s" % (n, l))
    if r["path"] and r["served_by"] is not None and r["path"][-1]["step"] != r["served_by"]:
        die("line %d: served_by %r is not the last step of the path: %s" % (n, r["served_by"], l))

def path(r):
    return ",".join("%s=%s" % (e["step"], e["outcome"]) for e in r["path"])

def steps(r):
    return [e["step"] for e in r["path"]]

def entry(r, s):
    for e in r["path"]:
        if e["step"] == s:
            return e
    return None

def first(cond, start=0):
    for i in range(start, len(R)):
        if cond(R[i]):
            return i
    return None

expr = sys.argv[2]
try:
    v = eval(expr)
except Exception as e:
    die("%s raised %r" % (expr, e))
if not v:
    print("json check: false: " + expr, file=sys.stderr)
    for i, r in enumerate(R):
        print("  %2d %-9s %-8s %s" % (i + 1, r["outcome"], r["served_by"], path(r)), file=sys.stderr)
    sys.exit(1)
PY

expect_json() {
  local what=${2:-$1}
  python3 "$TMP/check.py" "$TMP/out" "$1" 2>"$TMP/json_err" || {
    cat "$TMP/json_err" >&2
    fail "JSON: $what"
  }
}

set -e
