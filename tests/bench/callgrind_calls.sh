#!/usr/bin/env bash
# callgrind_calls.sh [BUILD_DIR] [RUNS] -- instructions per call of the three calls the
# layering must not make dearer (issue "One room per concept"), counted by callgrind, which
# does not drift with machine load:
#   - a whole in-process call (bench_call --ops call: route + r.lua step behind a breaker +
#     stub fallback + record + result, on the worker's loop);
#   - an r.http call (bench_io --profile http, 32 in flight, against examples/flaky);
#   - an r.redis GET call (bench_io --profile redis, 32 in flight, against redis-server).
# Each figure is (count(N2) - count(N1)) / (N2 - N1): start-up, loading and the servers'
# start cancel out.  Two counts: every instruction of the process, and the program's own
# object alone (the benchmark's driver and libresilua, which is linked in statically), i.e.
# without libcurl, hiredis, libuv, LuaJIT and libc.  libcurl's share of an HTTP call varies
# by about +-1.5k instructions from run to run (how many answers one socket event brings),
# which is more than resilua's whole part: hence the second figure, and the median of RUNS
# runs (default 3).  Needs valgrind and python3 (scripts/setup.sh installs them).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
runs=${2:-3}
out=$(mktemp -d /tmp/rsl-callgrind-XXXXXX)
trap 'rm -rf "$out"' EXIT

# count FILE PROGRAM: "all own" instruction counts (Ir) of a callgrind output file.
count() {
    python3 - "$1" "$2" <<'PY'
import re, sys
path, prog = sys.argv[1], sys.argv[2]
names, cur, skip, total, own = {}, None, False, 0, 0
for line in open(path):
    if line.startswith(('ob=', 'cob=')):
        v = line.split('=', 1)[1].rstrip('\n')
        m = re.match(r'\((\d+)\)(?: (.*))?$', v)
        name = v
        if m:
            if m.group(2) is not None:
                names[m.group(1)] = m.group(2)
            name = names.get(m.group(1), v)
        if line.startswith('ob='):
            cur = name
    elif line.startswith('calls='):
        skip = True  # the next cost line is the callee's inclusive cost
    elif line[:1].isdigit() or line[:1] in '+-*':
        if skip:
            skip = False
            continue
        f = line.split()
        if len(f) >= 2:
            total += int(f[1])
            if cur == prog:
                own += int(f[1])
print(total, own)
PY
}

# run N PROGRAM ARGS...: the counts of one run with N calls (N is the last argument).
run() {
    local n=$1 prog=$2
    shift 2
    valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$prog" "$@" "$n" >/dev/null 2>&1
    count "$out/cg" "$prog"
}

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

per_call() { # label n1 n2 program args-before-N...
    local label=$1 n1=$2 n2=$3 all="" own="" i a b
    shift 3
    for ((i = 0; i < runs; i++)); do
        read -r a_all a_own < <(run "$n1" "$@")
        read -r b_all b_own < <(run "$n2" "$@")
        all+="$(( (b_all - a_all) / (n2 - n1) ))"$'\n'
        own+="$(( (b_own - a_own) / (n2 - n1) ))"$'\n'
    done
    printf '%-16s %8s instructions/call, %6s of them resilua'"'"'s own (median of %d: all %s; own %s)\n' \
        "$label" "$(printf '%s' "$all" | median)" "$(printf '%s' "$own" | median)" "$runs" \
        "$(printf '%s' "$all" | tr '\n' ' ' | sed 's/ $//')" "$(printf '%s' "$own" | tr '\n' ' ' | sed 's/ $//')"
}

per_call "in-process call" 0 20000 "$build/bench_call" --ops call
per_call "r.http call" 1000 3000 "$build/bench_io" --profile http --calls
per_call "r.redis call" 2000 12000 "$build/bench_io" --profile redis --calls
