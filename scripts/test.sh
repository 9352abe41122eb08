#!/usr/bin/env bash
# Sets everything up and runs every test: the normal build (warnings are errors) with the
# benchmarks as a short smoke, the whole suite again under ASan+UBSan, and the
# concurrency tests under TSan.
#
# All three stages always run: a failure in the plain build must not hide what the
# sanitizers would have found.  The script ends with one summary line per stage and exits
# non-zero if any stage failed (its build or any of its tests).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh || exit 1

export RSL_TEST_TIMEOUT=${RSL_TEST_TIMEOUT:-120}
jobs=$(nproc)
summary=()
failed=0
npass=0
nfail=0

# stage NAME BUILD_DIR "CMAKE_ARGS" [ENV=VALUE ...] -- CTEST_ARGS...
stage() {
  local name=$1 dir=$2 cmake_args=$3
  shift 3
  local envs=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  echo "== $name"
  local log=$root/$dir/ctest-summary.txt line
  # shellcheck disable=SC2086 # cmake_args is a list of words
  if ! bash scripts/build.sh "$dir" $cmake_args; then
    summary+=("$name: FAILED: the build failed")
    nfail=$((nfail + 1))
    failed=1
    return
  fi
  local ok=1 f n
  env "${envs[@]}" ctest --test-dir "$dir" --output-on-failure -j"$jobs" "$@" | tee "$log" || ok=0
  # ctest's own closing line: "97% tests passed, 1 tests failed out of 31"
  line=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+' "$log" | tail -1)
  if [ -n "$line" ]; then
    f=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/' <<<"$line")
    n=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\2/' <<<"$line")
    npass=$((npass + n - f))
    nfail=$((nfail + f))
  else
    ok=0
    nfail=$((nfail + 1))
  fi
  if [ "$ok" = 1 ]; then
    summary+=("$name: ok: $line")
  else
    summary+=("$name: FAILED: ${line:-ctest printed no summary}")
    failed=1
  fi
}

stage "build (release, -Werror)" build "-DCMAKE_BUILD_TYPE=RelWithDebInfo" --
stage "ASan + UBSan" build-asan "-DCMAKE_BUILD_TYPE=Debug -DRSL_SANITIZE=address,undefined" \
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 -- -LE bench
stage "TSan (concurrency tests)" build-tsan "-DCMAKE_BUILD_TYPE=Debug -DRSL_SANITIZE=thread" \
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 -- -L tsan

echo
echo "== summary"
for s in "${summary[@]}"; do echo "$s"; done
# The plain closing line (a build that failed counts as one failed test).
echo "tests: $npass passed, $nfail failed"
exit "$failed"
