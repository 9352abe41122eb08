#!/usr/bin/env bash
# Configures and builds one flavour: build.sh DIR [cmake args...]
set -euo pipefail
dir=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
cmake -S "$root" -B "$root/$dir" -DRSL_WERROR=ON "$@" >/dev/null
cmake --build "$root/$dir" -j"$(nproc)" -- --no-print-directory
