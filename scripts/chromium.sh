#!/usr/bin/env bash
# Headless Chromium for the dashboard's browser test
# (seckill/tests/node/dashboard.rs).
#
#   scripts/chromium.sh    install Debian's chromium (apt-get) if it is
#                          missing; idempotent and quiet; prints its path
#
# Never downloads a browser from anywhere else. The test looks for
# `chromium` (or `$SECKILL_CHROMIUM`) and fails with a clear message when
# it is absent.
set -euo pipefail

find_chromium() {
  if [ -n "${SECKILL_CHROMIUM:-}" ] && [ -x "$SECKILL_CHROMIUM" ]; then
    echo "$SECKILL_CHROMIUM"
    return 0
  fi
  command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null
}

install() {
  if find_chromium >/dev/null; then
    return
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  # Wait for another apt-get (other scripts may install at the same time).
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends)
  # The package lists may be missing or stale: update only when needed.
  if ! $sudo "${apt[@]}" install chromium >/dev/null 2>&1; then
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
    $sudo "${apt[@]}" install chromium >/dev/null
  fi
  find_chromium >/dev/null || {
    echo "chromium.sh: chromium still not on PATH after apt-get install" >&2
    exit 1
  }
}

case "${1:-}" in
  "") install; find_chromium ;;
  *) echo "usage: scripts/chromium.sh" >&2; exit 2 ;;
esac
