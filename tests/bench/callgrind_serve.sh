#!/usr/bin/env bash
# callgrind_serve.sh [BUILD_DIR] -- instructions per request of `resilua serve` proxying
# GET /call/p through one r.http step (behind a breaker) to examples/flaky, counted by
# callgrind, which does not drift with machine load: tracing off, and with tracing on at
# --trace-sample 0, 0.1 and 1, each with and without --trace-skip-unsampled, the spans
# sent as OTLP/HTTP JSON to the upstream (it takes any POST).  Each figure is
# (count(3000 requests) - count(1000)) / 2000, so start-up and shutdown cancel out; one
# keep-alive connection.  Needs valgrind and python3 (scripts/setup.sh installs them).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
out=$(mktemp -d /tmp/rsl-callgrind-serve-XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$out"' EXIT

"$build/example_flaky" --listen 127.0.0.1:0 --quiet >"$out/flaky.out" &
pids+=($!)
up=""
for _ in $(seq 100); do
  up=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$out/flaky.out")
  [ -n "$up" ] && break
  sleep 0.05
done
[ -n "$up" ] || { echo "examples/flaky did not start" >&2; exit 1; }
mkdir -p "$out/p"
cat >"$out/p/p.lua" <<LUA
local r = require "resilua"
r.breaker "b" { min_calls = 1000000 }
r.policy "p" { steps = { up = r.http { url = "http://127.0.0.1:$up/bench", timeout = "5s",
                                        guards = { "b" } } } }
LUA

# count N FLAGS...: the instructions of a `resilua serve` that answered N requests
count() {
  local n=$1
  shift
  rm -f "$out"/cg.* "$out/serve.out"
  valgrind --tool=callgrind --callgrind-out-file="$out/cg.%p" "$build/resilua" serve \
    -p "$out/p" --listen 127.0.0.1:0 --workers 1 "$@" >"$out/serve.out" 2>"$out/serve.err" &
  local sp=$! port=""
  for _ in $(seq 600); do
    port=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$out/serve.out")
    [ -n "$port" ] && break
    sleep 0.05
  done
  [ -n "$port" ] || { cat "$out/serve.err" >&2; exit 1; }
  python3 - "$port" "$n" <<'PY'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
for _ in range(int(sys.argv[2])):
    c.request("GET", "/call/p")
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
PY
  kill -TERM "$sp"
  wait "$sp" || true
  awk '/^(summary|totals):/ { print $2; exit }' "$out"/cg.*
}

per_request() {
  local a b
  a=$(count 1000 "$@")
  b=$(count 3000 "$@")
  echo $(((b - a) / 2000))
}

otlp="--otlp-endpoint=http://127.0.0.1:$up/v1/traces"
off=$(per_request --otlp-endpoint=)
printf '%-44s %8s instructions/request\n' "tracing off" "$off"
for s in 0 0.1 1; do
  for skip in "" --trace-skip-unsampled; do
    [ "$s" = 1 ] && [ -n "$skip" ] && continue # every call sampled: nothing to skip
    v=$(per_request "$otlp" --trace-sample "$s" $skip)
    printf '%-44s %8s   off/this %.3f\n' "--trace-sample $s $skip" "$v" \
      "$(awk -v a="$off" -v b="$v" 'BEGIN { print a / b }')"
  done
done
