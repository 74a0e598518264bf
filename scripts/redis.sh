#!/usr/bin/env bash
# Redis for cluster mode and its tests.
#
#   scripts/redis.sh                 install redis-server (apt-get) if it is
#                                    missing; idempotent and quiet
#   scripts/redis.sh start PORT DIR  also start one on 127.0.0.1:PORT with its
#                                    files in DIR (no persistence), in the
#                                    background; prints its pid
#
# Tests do not need the second form: they start their own redis-server on a
# free port (seckill_testkit::RedisServer) and stop it on drop.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"

install() {
  # Debian's package starts a system service on 6379 where a service
  # manager runs; the project never uses it, and nothing here depends on it.
  apt_install redis-server redis-server
}

start() {
  local port="${1:?usage: scripts/redis.sh start PORT DIR}"
  local dir="${2:?usage: scripts/redis.sh start PORT DIR}"
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" \
    --save "" --appendonly no --daemonize no \
    --logfile "$dir/redis.log" </dev/null >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do
    if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
      echo "$pid"
      return
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "redis.sh: redis-server exited; see $dir/redis.log" >&2
      exit 1
    fi
    sleep 0.05
  done
  echo "redis.sh: redis-server on port $port did not answer PING" >&2
  kill "$pid" 2>/dev/null || true
  exit 1
}

install
case "${1:-}" in
  "") ;;
  start) shift; start "$@" ;;
  *) echo "usage: scripts/redis.sh [start PORT DIR]" >&2; exit 2 ;;
esac
