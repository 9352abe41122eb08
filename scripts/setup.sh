#!/usr/bin/env bash
# Installs what resilua needs on Debian 12 (run as root, or with sudo available).
# Idempotent: installs only what is missing.
set -euo pipefail

# curl drives `resilua serve` in tests/e2e/test_serve.sh; prometheus brings promtool,
# which checks the /metrics format there.  wrk and nginx are for
# tests/bench/bench_proxy.sh (the sidecar next to nginx as a keep-alive proxy); Debian 12's
# `nginx` is the core server (nginx-light only adds the echo module on top of it).
# valgrind counts instructions per call in tests/bench/callgrind_calls.sh.
pkgs=(pkg-config cmake gcc make libuv1-dev libcurl4-openssl-dev libhiredis-dev
      libjansson-dev libhttp-parser-dev redis-server python3 curl prometheus wrk nginx
      valgrind)
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
  # Debian's nginx starts a service on port 80 when installed (and fails the install when
  # it cannot, e.g. without IPv6 in a container): the bench runs its own nginx, so deny
  # service starts during the install with a temporary policy-rc.d (unless the machine
  # has one already), and keep a freshly installed nginx from running or starting at boot.
  fresh_nginx=0
  case " ${missing[*]} " in *" nginx "*) fresh_nginx=1 ;; esac
  if [ "$fresh_nginx" = 1 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# setup.sh: no service starts while it installs packages\nexit 101\n' |
      $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 755 /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  if [ "$fresh_nginx" = 1 ]; then
    if [ -d /run/systemd/system ]; then
      $sudo systemctl disable --now nginx >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/nginx ]; then
      $sudo /etc/init.d/nginx stop >/dev/null 2>&1 || true
    fi
  fi
fi
