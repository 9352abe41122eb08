#!/usr/bin/env bash
# callgrind_calls.sh [BUILD_DIR] -- instructions per call of the three calls the layering
# must not make dearer (issue "One room per concept"), counted by callgrind, which does not
# drift with machine load:
#   - a whole in-process call (bench_call --ops call: route + r.lua step behind a breaker +
#     stub fallback + record + result, on the worker's loop);
#   - an r.http call (bench_io --profile http, against examples/flaky on loopback);
#   - an r.redis GET call (bench_io --profile redis, against a redis-server on loopback).
# Each figure is (total(N2) - total(N1)) / (N2 - N1): start-up, loading and server start are
# the same in both runs and cancel out.  Needs valgrind (scripts/setup.sh installs it).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
out=$(mktemp -d /tmp/rsl-callgrind-XXXXXX)
trap 'rm -rf "$out"' EXIT

# total NAME ARGS...: the program's instruction count (Ir) under callgrind.
total() {
    local name=$1
    shift
    valgrind --tool=callgrind --callgrind-out-file="$out/$name" "$@" >/dev/null 2>&1
    awk '/^summary:/ {print $2}' "$out/$name"
}

per_call() { # label n1 n2 cmd-before-N cmd-after-N...
    local label=$1 n1=$2 n2=$3 a b
    shift 3
    a=$(total "$label.$n1" "$@" "$n1")
    b=$(total "$label.$n2" "$@" "$n2")
    awk -v l="$label" -v a="$a" -v b="$b" -v n1="$n1" -v n2="$n2" \
        'BEGIN { printf "%-28s %10.0f instructions/call\n", l, (b - a) / (n2 - n1) }'
}

per_call "in-process call" 0 20000 "$build/bench_call" --ops call
per_call "r.http call" 1000 3000 "$build/bench_io" --profile http --calls
per_call "r.redis call" 2000 12000 "$build/bench_io" --profile redis --calls
