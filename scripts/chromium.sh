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
source "$(dirname "$0")/lib/apt.sh"

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
  apt_install chromium chromium
}

case "${1:-}" in
  "") install; find_chromium ;;
  *) echo "usage: scripts/chromium.sh" >&2; exit 2 ;;
esac
