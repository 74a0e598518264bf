#!/usr/bin/env bash
# promtool, to check deploy/prometheus/alerts.yml
# (seckill/tests/node/deploy.rs).
#
#   scripts/prometheus.sh    install Debian's prometheus package (which
#                            ships promtool) if promtool is missing;
#                            idempotent and quiet; prints its path
#
# Only promtool is used; the package's own Prometheus service is never
# started by the project.
set -euo pipefail

install() {
  if command -v promtool >/dev/null 2>&1; then
    return
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  # Wait for another apt-get (other scripts may install at the same time).
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -y -qq --no-install-recommends)
  # The package lists may be missing or stale: update only when needed.
  if ! $sudo "${apt[@]}" install prometheus >/dev/null 2>&1; then
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
    $sudo "${apt[@]}" install prometheus >/dev/null
  fi
  command -v promtool >/dev/null 2>&1 || {
    echo "prometheus.sh: promtool still not on PATH after apt-get install" >&2
    exit 1
  }
}

case "${1:-}" in
  "") install; command -v promtool ;;
  *) echo "usage: scripts/prometheus.sh" >&2; exit 2 ;;
esac
