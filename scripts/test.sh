#!/usr/bin/env bash
# Sets everything up and runs every test: the normal build (warnings are errors) with the
# benchmarks as a short smoke, the whole suite again under ASan+UBSan, and the
# concurrency tests under TSan.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh

export RSL_TEST_TIMEOUT=${RSL_TEST_TIMEOUT:-120}
jobs=$(nproc)

echo "== build (release, -Werror)"
bash scripts/build.sh build -DCMAKE_BUILD_TYPE=RelWithDebInfo
ctest --test-dir build --output-on-failure -j"$jobs"

echo "== ASan + UBSan"
bash scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=Debug -DRSL_SANITIZE=address,undefined
ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j"$jobs" -LE bench

echo "== TSan (concurrency tests)"
bash scripts/build.sh build-tsan -DCMAKE_BUILD_TYPE=Debug -DRSL_SANITIZE=thread
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --test-dir build-tsan --output-on-failure -j"$jobs" -L tsan
