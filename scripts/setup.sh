#!/usr/bin/env bash
# Installs what resilua needs on Debian 12 (run as root, or with sudo available).
# Idempotent: installs only what is missing.
set -euo pipefail

# curl drives `resilua serve` in tests/e2e/test_serve.sh; prometheus brings promtool,
# which checks the /metrics format there.
pkgs=(pkg-config cmake gcc make libuv1-dev libcurl4-openssl-dev libhiredis-dev
      libjansson-dev libhttp-parser-dev redis-server python3 curl prometheus)
# LuaJIT: OpenResty's maintained branch; Debian's older libluajit-5.1-dev works too (the
# two conflict, so keep whichever is already there).
if ! dpkg -s libluajit-5.1-dev >/dev/null 2>&1; then
  pkgs+=(libluajit2-5.1-dev)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
