#!/usr/bin/env bash
# bench_proxy.sh -- `resilua serve` as an HTTP proxy next to nginx, under wrk, on loopback.
#
# One run, three targets, all in front of the same examples/flaky upstream (a fast
# HTTP/1.1 server, plain 200 answers):
#   direct   wrk -> flaky
#   nginx    wrk -> nginx (1 worker, keep-alive upstream pool of 64) -> flaky
#   resilua  wrk -> resilua serve --workers 1 -> flaky, through a policy of one r.http
#            step behind a breaker and a limiter (rate high enough never to reject), with a
#            route() that reads two signals (sig.state of the breaker, sig.tokens of the
#            limiter), exposed as GET /bench with r.expose
#   trace10  the same resilua with tracing on, 10% of calls sampled (--trace-sample 0.1),
#            spans sent as OTLP/HTTP JSON to the upstream process (examples/flaky takes
#            any POST: a collector that costs next to nothing)
#   trace10s trace10 with --trace-skip-unsampled: the 90% not sampled send no traceparent
#   trace100 the same with every call sampled (--trace-sample 1)
# For each: requests/s, p50 and p99 latency (wrk --latency), and the CPU the serving
# process used per request (utime+stime from /proc/PID/stat before and after the wrk run,
# divided by the requests; nginx is master + worker, direct is the flaky process itself),
# plus the upstream's CPU per request for the two proxies.  Then resilua/nginx throughput
# and the p99 difference.  No speed is asserted: the machine running it decides.
#
#   bash tests/bench/bench_proxy.sh [--smoke] [-d SECONDS] [-c CONNS] [-t THREADS]
#                                   [-r ROUNDS] [--perf FILE]
#
#   --smoke      each target for 1 s with 4 connections; checks only that each answered
#                200s (requests > 0, no non-2xx answers, and for resilua no socket errors
#                either, and the answer served by the r.http step); exit 1 otherwise.
#                This is what ctest runs (label bench).
#   -d SECONDS   wrk duration per target (env BENCH_DURATION, default 10)
#   -c CONNS     wrk connections, the same for every target (env BENCH_CONNS, default 32)
#   -t THREADS   wrk threads (env BENCH_THREADS, default 1)
#   -r ROUNDS    run resilua and the three traced sidecars ROUNDS times, interleaved (off,
#                10%, 10% skipping, 100% in each round), and give the tracing ratios as the
#                median over the rounds of each round's traced/off (env BENCH_ROUNDS,
#                default 1): on a noisy machine one round's ratio moves by 20%; the table
#                shows the last round
#   --perf FILE  `perf record -g` the resilua process during its run, into FILE
#   env BENCH_WARMUP  seconds of wrk before each measured run (default 1; 0 in --smoke)
#
# Binaries: $RESILUA and $FLAKY (ctest sets both), else build/resilua and
# build/example_flaky under $RSL_BINARY_DIR (default: the source tree's build/).  Needs
# wrk, nginx and python3 (scripts/setup.sh installs them).  Every process it starts is
# stopped on exit; all traffic stays on 127.0.0.1, on ephemeral ports.
set -euo pipefail

RSL_SOURCE_DIR=${RSL_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
RSL_BINARY_DIR=${RSL_BINARY_DIR:-$RSL_SOURCE_DIR/build}
RESILUA=${RESILUA:-$RSL_BINARY_DIR/resilua}
FLAKY=${FLAKY:-$RSL_BINARY_DIR/example_flaky}

SMOKE=0
DURATION=${BENCH_DURATION:-10}
CONNS=${BENCH_CONNS:-32}
THREADS=${BENCH_THREADS:-1}
ROUNDS=${BENCH_ROUNDS:-1}
WARMUP=${BENCH_WARMUP:-1}
PERF_OUT=""

usage() {
  sed -n '/^#   bash/,/^#   env/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case $1 in
    --smoke) SMOKE=1 ;;
    -d | --duration) DURATION=${2:?}; shift ;;
    -c | --conns) CONNS=${2:?}; shift ;;
    -t | --threads) THREADS=${2:?}; shift ;;
    -r | --rounds) ROUNDS=${2:?}; shift ;;
    --perf) PERF_OUT=${2:?}; shift ;;
    -h | --help) usage ;;
    *) echo "bench_proxy: unknown argument: $1" >&2; usage ;;
  esac
  shift
done
if [ "$SMOKE" = 1 ]; then
  DURATION=1
  CONNS=4
  THREADS=1
  WARMUP=0
  ROUNDS=1
fi
for v in DURATION CONNS THREADS WARMUP ROUNDS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench_proxy: $v must be a whole number, got ${!v}" >&2; exit 2; }
done
[ "$CONNS" -ge "$THREADS" ] || { echo "bench_proxy: connections must be >= threads" >&2; exit 2; }
[ "$ROUNDS" -ge 1 ] || { echo "bench_proxy: rounds must be >= 1" >&2; exit 2; }

die() {
  echo "bench_proxy: $*" >&2
  exit 1
}

for tool in wrk nginx python3 curl; do
  command -v "$tool" >/dev/null || die "$tool is required (scripts/setup.sh installs it)"
done
[ -x "$RESILUA" ] || die "no resilua binary at $RESILUA (set RESILUA or build first)"
[ -x "$FLAKY" ] || die "no flaky upstream at $FLAKY (set FLAKY or build first)"

TMP=$(mktemp -d /tmp/rsl-bench-proxy-XXXXXX)
PIDS=() # every process we started, stopped on exit
PERF_PID=""
WRK_PID=""

cleanup() {
  local p
  if [ -n "$WRK_PID" ]; then kill -TERM "$WRK_PID" 2>/dev/null || true; fi
  if [ -n "$PERF_PID" ]; then kill -INT "$PERF_PID" 2>/dev/null || true; fi
  for p in "${PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do
      kill -0 "$p" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CLK_TCK=$(getconf CLK_TCK)

# free_port: a port nothing listens on right now (for nginx, which cannot report one).
free_port() {
  python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_listening FILE PID WHAT: the port from the "listening 127.0.0.1:PORT" line in FILE.
wait_listening() {
  local port
  for _ in $(seq 1 300); do
    # 2>/dev/null: the server may not have created FILE yet
    port=$(sed -n 's/^listening 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$1" 2>/dev/null || true)
    if [ -n "$port" ]; then
      echo "$port"
      return 0
    fi
    kill -0 "$2" 2>/dev/null || break
    sleep 0.1
  done
  cat "$1" "${1%.out}.err" >&2 2>/dev/null || true
  die "$3 did not print its address"
}

# wait_200 URL WHAT: the URL answers 200 within 30 s.
wait_200() {
  local code
  for _ in $(seq 1 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" || true)
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  die "$2 did not answer 200 at $1 (last status: ${code:-none})"
}

# cpu_ticks PID...: utime + stime of these processes, in clock ticks (all their threads).
cpu_ticks() {
  local total=0 p stat f
  for p in "$@"; do
    stat=$(cat "/proc/$p/stat") || die "process $p is gone"
    # The fields after the command name, which is in parentheses and may hold spaces:
    # f[0] is field 3 (state), so utime (field 14) is f[11] and stime f[12].
    read -r -a f <<<"${stat##*) }"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}

# ---- the upstream -----------------------------------------------------------------------

"$FLAKY" --listen 127.0.0.1:0 --quiet >"$TMP/flaky.out" 2>"$TMP/flaky.err" &
FLAKY_PID=$!
PIDS+=("$FLAKY_PID")
UP_PORT=$(wait_listening "$TMP/flaky.out" "$FLAKY_PID" "the flaky upstream")

# ---- nginx ------------------------------------------------------------------------------

NGX=$TMP/nginx
mkdir -p "$NGX/logs"
NGX_PORT=$(free_port)
NGX_USER=""
# As root the worker would switch to nobody, who cannot enter our temp dir: stay root.
if [ "$(id -u)" -eq 0 ]; then
  NGX_USER="user $(id -un) $(id -gn);"
fi
cat >"$NGX/nginx.conf" <<EOF
$NGX_USER
worker_processes 1;
daemon off;
pid $NGX/nginx.pid;
error_log $NGX/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $NGX/client_body;
  proxy_temp_path $NGX/proxy;
  fastcgi_temp_path $NGX/fastcgi;
  uwsgi_temp_path $NGX/uwsgi;
  scgi_temp_path $NGX/scgi;
  upstream flaky {
    server 127.0.0.1:$UP_PORT;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$NGX_PORT;
    location / {
      proxy_pass http://flaky;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
# -e: the error log before the config is read (the default is under /var/log).
nginx -p "$NGX/" -e "$NGX/logs/error.log" -c "$NGX/nginx.conf" >"$NGX/stdout" 2>&1 &
NGX_PID=$!
PIDS+=("$NGX_PID")
sleep 0.1
kill -0 "$NGX_PID" 2>/dev/null || { cat "$NGX/stdout" "$NGX/logs/error.log" >&2 2>/dev/null; die "nginx did not start"; }
wait_200 "http://127.0.0.1:$NGX_PORT/bench" nginx
# The master and its worker(s).
ngx_pids() {
  echo "$NGX_PID"
  ps -o pid= --ppid "$NGX_PID" | tr -d ' '
}

# ---- resilua ----------------------------------------------------------------------------

mkdir -p "$TMP/policies"
cat >"$TMP/policies/bench.lua" <<EOF
local r = require "resilua"

r.breaker "up" { min_calls = 20, failure_rate = 50, open_for = "1s",
                 count = { "timeout", "connect", "5xx", "error" } }
-- Never rejects at any rate this machine can reach.
r.limiter "up-rps" { rate = 1000000000, per = "1s", burst = 1000000000 }

local PRIMARY = { "primary" }
local SHED = { "shed" }

r.policy "bench" {
  -- Generous: the smoke in CI runs on a loaded machine; a healthy upstream never nears them.
  deadline = "10s",
  steps = {
    primary = r.http { url = "http://127.0.0.1:$UP_PORT/bench", timeout = "5s",
                       guards = { "up-rps", "up" } },
    -- A 503: a bench run that ever takes this path shows it as non-2xx answers.
    shed = r.stub { status = 503, body = "shed" },
  },
  chain = { "primary" },
  route = function(req, sig)
    if sig.state("up") == "open" or sig.tokens("up-rps") < 1 then
      return SHED
    end
    return PRIMARY
  end,
}

r.expose { ["GET /bench"] = "bench" }
EOF
"$RESILUA" serve -p "$TMP/policies" --listen 127.0.0.1:0 --workers 1 \
  >"$TMP/resilua.out" 2>"$TMP/resilua.err" &
RSL_PID=$!
PIDS+=("$RSL_PID")
RSL_PORT=$(wait_listening "$TMP/resilua.out" "$RSL_PID" "resilua serve")
wait_200 "http://127.0.0.1:$RSL_PORT/bench" resilua
served_by=$(curl -s -D - -o /dev/null --max-time 5 "http://127.0.0.1:$RSL_PORT/bench" |
  tr -d '\r' | sed -n 's/^[Xx]-[Rr]esilua-[Ss]erved-[Bb]y: //p')
[ "$served_by" = primary ] || die "resilua answered from \"$served_by\", not the r.http step"

# The traced sidecars: the same policy, spans to the upstream as the collector.
declare -A TR_PID TR_PORT
for tr in trace10 trace10s trace100; do
  ratio=0.1
  skip=()
  [ "$tr" = trace100 ] && ratio=1
  [ "$tr" = trace10s ] && skip=(--trace-skip-unsampled)
  "$RESILUA" serve -p "$TMP/policies" --listen 127.0.0.1:0 --workers 1 \
    --otlp-endpoint "http://127.0.0.1:$UP_PORT/v1/traces" --trace-sample "$ratio" "${skip[@]}" \
    >"$TMP/$tr.out" 2>"$TMP/$tr.err" &
  TR_PID[$tr]=$!
  PIDS+=("${TR_PID[$tr]}")
  TR_PORT[$tr]=$(wait_listening "$TMP/$tr.out" "${TR_PID[$tr]}" "resilua serve ($tr)")
  wait_200 "http://127.0.0.1:${TR_PORT[$tr]}/bench" "$tr"
done

# ---- the runs ---------------------------------------------------------------------------

# to_ms VALUE: wrk's "812.00us" / "1.23ms" / "1.05s" / "2.00m" in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.3f", n }'
}

FAILED=0
declare -A REQ RPS P50 P99 CPU UPCPU NON2XX SOCKERR EXPORTED DROPPED

# run NAME PORT PIDS-FUNCTION: one wrk run against 127.0.0.1:PORT/bench.
run() {
  local name=$1 port=$2 pidsf=$3 url="http://127.0.0.1:$2/bench" out=$TMP/wrk.$1
  local pids
  if [ "$WARMUP" -gt 0 ]; then
    wrk -t"$THREADS" -c"$CONNS" -d"${WARMUP}s" "$url" >/dev/null &
    WRK_PID=$!
    wait "$WRK_PID"
    WRK_PID=""
  fi
  mapfile -t pids < <($pidsf)
  local c0 u0 c1 u1
  c0=$(cpu_ticks "${pids[@]}")
  u0=$(cpu_ticks "$FLAKY_PID")
  if [ "$name" = resilua ] && [ -n "$PERF_OUT" ]; then
    perf record -q -g -p "$RSL_PID" -o "$PERF_OUT" >"$TMP/perf.log" 2>&1 &
    PERF_PID=$!
  fi
  # In the background, so that a signal stops the run at once (see cleanup).
  wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "$url" >"$out" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || { WRK_PID=""; cat "$out" >&2; die "wrk failed against $name"; }
  WRK_PID=""
  c1=$(cpu_ticks "${pids[@]}")
  u1=$(cpu_ticks "$FLAKY_PID")
  if [ -n "$PERF_PID" ]; then
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=""
  fi
  REQ[$name]=$(awk '/requests in/ { print $1 }' "$out")
  REQ[$name]=${REQ[$name]:-0}
  RPS[$name]=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  P50[$name]=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
  P99[$name]=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
  NON2XX[$name]=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
  NON2XX[$name]=${NON2XX[$name]:-0}
  # "Socket errors: connect 0, read 0, write 0, timeout 0"
  SOCKERR[$name]=$(awk -F'[ ,]+' '/Socket errors:/ { print $4 + $6 + $8 + $10 }' "$out")
  SOCKERR[$name]=${SOCKERR[$name]:-0}
  if [ "${REQ[$name]}" -gt 0 ]; then
    CPU[$name]=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v n="${REQ[$name]}" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
    UPCPU[$name]=$(awk -v t=$((u1 - u0)) -v hz="$CLK_TCK" -v n="${REQ[$name]}" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
  else
    CPU[$name]=-
    UPCPU[$name]=-
  fi
  if [ "$SMOKE" = 1 ]; then
    local bad=""
    [ "${REQ[$name]}" -gt 0 ] || bad="no requests completed"
    [ "${NON2XX[$name]}" -eq 0 ] || bad="${NON2XX[$name]} non-2xx answers"
    if [ "$name" != direct ] && [ "$name" != nginx ] && [ "${SOCKERR[$name]}" -ne 0 ]; then
      bad="${SOCKERR[$name]} socket errors"
    fi
    if [ -n "$bad" ]; then
      echo "FAIL: $name: $bad" >&2
      cat "$out" >&2
      FAILED=1
    else
      echo "ok - $name answered ${REQ[$name]} requests with 200"
    fi
  fi
}

direct_pids() { echo "$FLAKY_PID"; }
rsl_pids() { echo "$RSL_PID"; }
trace10_pids() { echo "${TR_PID[trace10]}"; }
trace10s_pids() { echo "${TR_PID[trace10s]}"; }
trace100_pids() { echo "${TR_PID[trace100]}"; }

echo "bench_proxy: wrk -t$THREADS -c$CONNS -d${DURATION}s --latency, warm-up ${WARMUP}s;" \
  "$(nproc) cores; upstream :$UP_PORT, nginx :$NGX_PORT, resilua :$RSL_PORT"
run direct "$UP_PORT" direct_pids
run nginx "$NGX_PORT" ngx_pids
# Each round's traced/off throughput, "t10 t10s t100" per line.
RATIOS=$TMP/ratios
: >"$RATIOS"
for round in $(seq 1 "$ROUNDS"); do
  run resilua "$RSL_PORT" rsl_pids
  run trace10 "${TR_PORT[trace10]}" trace10_pids
  run trace10s "${TR_PORT[trace10s]}" trace10s_pids
  run trace100 "${TR_PORT[trace100]}" trace100_pids
  awk -v rr="${RPS[resilua]}" -v a="${RPS[trace10]}" -v b="${RPS[trace10s]}" -v c="${RPS[trace100]}" \
    'BEGIN { if (rr > 0) printf "%.4f %.4f %.4f\n", a / rr, b / rr, c / rr }' >>"$RATIOS"
  [ "$ROUNDS" -eq 1 ] || echo "round $round/$ROUNDS: traced/off $(tail -1 "$RATIOS")"
done

# Spans the traced sidecars sent and dropped (their /metrics), before they stop.
for tr in trace10 trace10s trace100; do
  m=$(curl -s --max-time 5 "http://127.0.0.1:${TR_PORT[$tr]}/metrics")
  EXPORTED[$tr]=$(echo "$m" | awk '/^resilua_trace_spans_exported_total / { print $2 }')
  DROPPED[$tr]=$(echo "$m" | awk '/^resilua_trace_spans_dropped_total/ { s += $2 } END { print s + 0 }')
done

# SIGTERM drains and exits 0.
for pid in "$RSL_PID" "${TR_PID[trace10]}" "${TR_PID[trace10s]}" "${TR_PID[trace100]}"; do
  kill -TERM "$pid"
  set +e
  wait "$pid"
  st=$?
  set -e
  if [ "$st" -ne 0 ]; then
    echo "FAIL: resilua serve (pid $pid) exited $st after SIGTERM" >&2
    FAILED=1
  fi
done

echo
printf '%-8s %10s %11s %9s %9s %12s %14s %8s %8s\n' target requests "req/s" "p50 ms" "p99 ms" \
  "cpu us/req" "upstr us/req" non2xx sockerr
for n in direct nginx resilua trace10 trace10s trace100; do
  up=${UPCPU[$n]}
  [ "$n" = direct ] && up=-
  printf '%-8s %10s %11s %9s %9s %12s %14s %8s %8s\n' "$n" "${REQ[$n]}" "${RPS[$n]}" "${P50[$n]}" \
    "${P99[$n]}" "${CPU[$n]}" "$up" "${NON2XX[$n]}" "${SOCKERR[$n]}"
done
echo
awk -v rr="${RPS[resilua]}" -v nr="${RPS[nginx]}" -v dr="${RPS[direct]}" \
  -v r99="${P99[resilua]}" -v n99="${P99[nginx]}" -v r50="${P50[resilua]}" -v n50="${P50[nginx]}" \
  -v rc="${CPU[resilua]}" -v nc="${CPU[nginx]}" 'BEGIN {
  if (nr > 0) printf "resilua/nginx throughput: %.2f\n", rr / nr
  if (dr > 0) printf "resilua/direct throughput: %.2f   nginx/direct: %.2f\n", rr / dr, nr / dr
  printf "p99 resilua - nginx: %+.3f ms   (p50: %+.3f ms)\n", r99 - n99, r50 - n50
  if (nc > 0) printf "cpu per request resilua/nginx: %.2f\n", rc / nc
}'
# median COLUMN: the median of that column of $RATIOS.
median() {
  awk -v c="$1" '{ print $c }' "$RATIOS" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR) printf "%.2f", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
if [ -s "$RATIOS" ]; then
  of=""
  [ "$ROUNDS" -eq 1 ] || of=" (median of $ROUNDS rounds)"
  echo "tracing 10%/off throughput: $(median 1)   10% skipping unsampled context/off: $(median 2)" \
    "  tracing 100%/off: $(median 3)$of"
fi
echo "spans exported/dropped: trace10 ${EXPORTED[trace10]:-0}/${DROPPED[trace10]:-0}," \
  "trace100 ${EXPORTED[trace100]:-0}/${DROPPED[trace100]:-0}"

[ -z "$PERF_OUT" ] || echo "perf profile of resilua: $PERF_OUT (perf report -i $PERF_OUT)"

exit "$FAILED"
