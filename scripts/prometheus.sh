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
source "$(dirname "$0")/lib/apt.sh"

install() {
  apt_install promtool prometheus
}

case "${1:-}" in
  "") install; command -v promtool ;;
  *) echo "usage: scripts/prometheus.sh" >&2; exit 2 ;;
esac
