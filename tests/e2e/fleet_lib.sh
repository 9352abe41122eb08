# fleet_lib.sh -- sourced by test_fleet.sh and test_fleet_faults.sh (after lib.sh, with
# $RPORT's redis-server and $HAMMER): three `resilua serve` sharing breaker "pay" through
# that Redis, and reads of their /state.
# start_fleet DIR: the three instances on policy directory DIR; their ports in SRV.
SRV=()
start_fleet() {
  local i
  for i in 1 2 3; do
    start "serve$i" "$RESILUA" serve -p "$1" --listen 127.0.0.1:0 --workers 2 \
      --redis "127.0.0.1:$RPORT" --redis-prefix "e2e$$:"
    SRV+=("$port")
  done
}
url() { echo "http://127.0.0.1:${SRV[$1]}/call/p?status=$2"; }

# st N EXPR: a Python expression over g, instance N's /state entry of "pay" (s: g["shared"])
st() {
  curl -sS --max-time 10 "http://127.0.0.1:${SRV[$1]}/state" | python3 -c '
import json, sys
g = json.load(sys.stdin)["guards"]["pay"]; s = g.get("shared", {})
print(eval(sys.argv[1]))' "$2"
}
# until_st N EXPR [URL...]: polls (bounded, 30 s) until EXPR holds on N, driving URLs meanwhile
until_st() {
  local n=$1 e=$2
  shift 2
  for _ in $(seq 1 150); do
    if [ $# -gt 0 ]; then $HAMMER 0.1 "$@" >/dev/null; else sleep 0.1; fi
    [ "$(st "$n" "$e")" = True ] && return 0
  done
  fail "instance $n: not $e: $(st "$n" 'g')"
}
