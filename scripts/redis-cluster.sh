#!/usr/bin/env bash
# A local Redis Cluster and a Sentinel set on loopback, for trying cluster
# mode and for benches (tests start their own: seckill_testkit::redis_cluster).
#
#   scripts/redis-cluster.sh start [DIR]   3 masters + 3 replicas (redis-cli
#                                          --cluster create --cluster-replicas 1),
#                                          AOF on; and 1 primary + 1 replica
#                                          watched by 3 sentinels (quorum 2);
#                                          prints the two --redis URLs
#   scripts/redis-cluster.sh status [DIR]  each process: port, role, alive
#   scripts/redis-cluster.sh stop [DIR]    SIGTERM every process started, then
#                                          SIGKILL after 5 s; removes DIR
#   scripts/redis-cluster.sh run CMD...    start in a temp dir, run CMD with
#                                          REDIS_CLUSTER and REDIS_SENTINEL
#                                          set, stop on exit (also on failure)
#
# DIR defaults to ${TMPDIR:-/tmp}/seckill-redis-cluster. Ports: the cluster
# on CLUSTER_PORT..+5 (default 7100; the cluster bus on port + 10000), the
# sentinel set's primary and replica on SENTINEL_REDIS_PORT..+1 (default
# 7200), the sentinels on SENTINEL_PORT..+2 (default 27200). `start` refuses
# a port already taken. The master name is `seckill`. Whoever starts the
# processes stops them: `run` does it by itself; after `start`, call `stop`
# (e.g. `trap 'scripts/redis-cluster.sh stop' EXIT`).
set -euo pipefail

CLUSTER_PORT=${CLUSTER_PORT:-7100}
SENTINEL_REDIS_PORT=${SENTINEL_REDIS_PORT:-7200}
SENTINEL_PORT=${SENTINEL_PORT:-27200}
MASTER_NAME=seckill
DEFAULT_DIR="${TMPDIR:-/tmp}/seckill-redis-cluster"

die() { echo "redis-cluster.sh: $*" >&2; exit 1; }

port_free() { ! (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_pong() { # port pid log
  for _ in $(seq 1 200); do
    if redis-cli -p "$1" ping 2>/dev/null | grep -q PONG; then return 0; fi
    kill -0 "$2" 2>/dev/null || die "the server on port $1 exited; see $3"
    sleep 0.05
  done
  die "the server on port $1 did not answer PING; see $3"
}

# redis-server ... in the background, its pid appended to DIR/pids.
spawn() { # dir name port args...
  local dir=$1 name=$2 port=$3
  shift 3
  port_free "$port" || die "port $port is taken (set CLUSTER_PORT / SENTINEL_REDIS_PORT / SENTINEL_PORT)"
  mkdir -p "$dir/$name"
  # --repl-diskless-sync-delay 0: a replica's first sync starts at once.
  redis-server "$@" --port "$port" --bind 127.0.0.1 --dir "$dir/$name" \
    --repl-diskless-sync-delay 0 --daemonize no --logfile "$dir/$name/redis.log" </dev/null >/dev/null 2>&1 &
  echo "$! $port $name" >>"$dir/pids"
  wait_pong "$port" "$!" "$dir/$name/redis.log"
}

start() {
  local dir=${1:-$DEFAULT_DIR}
  command -v redis-cli >/dev/null || bash "$(dirname "$0")/redis.sh"
  [ -e "$dir/pids" ] && die "$dir/pids exists: already started? (stop it first)"
  mkdir -p "$dir"
  : >"$dir/pids"
  local seeds=() p
  for i in 0 1 2 3 4 5; do
    p=$((CLUSTER_PORT + i))
    port_free $((p + 10000)) || die "cluster bus port $((p + 10000)) is taken"
    spawn "$dir" "cluster-$i" "$p" --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --appendonly yes --appendfsync everysec --save ""
    seeds+=("127.0.0.1:$p")
  done
  redis-cli --cluster create "${seeds[@]}" --cluster-replicas 1 --cluster-yes \
    >"$dir/create.log" 2>&1 || die "cluster create failed; see $dir/create.log"
  for i in 0 1 2 3 4 5; do
    p=$((CLUSTER_PORT + i))
    for _ in $(seq 1 200); do
      redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' && break
      sleep 0.05
    done
    redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' ||
      die "the cluster is not ok on port $p"
  done

  local primary=$SENTINEL_REDIS_PORT replica=$((SENTINEL_REDIS_PORT + 1))
  spawn "$dir" primary "$primary" --appendonly yes --appendfsync everysec --save ""
  spawn "$dir" replica "$replica" --appendonly yes --appendfsync everysec --save "" \
    --replicaof 127.0.0.1 "$primary"
  for i in 0 1 2; do
    p=$((SENTINEL_PORT + i))
    mkdir -p "$dir/sentinel-$i"
    cat >"$dir/sentinel-$i/sentinel.conf" <<EOF
sentinel monitor $MASTER_NAME 127.0.0.1 $primary 2
sentinel down-after-milliseconds $MASTER_NAME 1000
sentinel failover-timeout $MASTER_NAME 5000
sentinel parallel-syncs $MASTER_NAME 1
EOF
    # redis-server --sentinel: the sentinel needs a config file it may rewrite.
    spawn "$dir" "sentinel-$i" "$p" "$dir/sentinel-$i/sentinel.conf" --sentinel
  done
  local sentinels
  sentinels=$(seq -s, -f "127.0.0.1:%g" "$SENTINEL_PORT" $((SENTINEL_PORT + 2)))
  echo "redis://127.0.0.1:$CLUSTER_PORT,redis://127.0.0.1:$((CLUSTER_PORT + 1)),redis://127.0.0.1:$((CLUSTER_PORT + 2))" >"$dir/cluster.url"
  echo "redis+sentinel://$sentinels/$MASTER_NAME" >"$dir/sentinel.url"
  echo "cluster:  $(cat "$dir/cluster.url")"
  echo "sentinel: $(cat "$dir/sentinel.url")"
}

status() {
  local dir=${1:-$DEFAULT_DIR} pid port name role
  [ -e "$dir/pids" ] || die "nothing started in $dir"
  while read -r pid port name; do
    if kill -0 "$pid" 2>/dev/null; then
      role=$(redis-cli -p "$port" info replication 2>/dev/null | tr -d '\r' |
        sed -n 's/^role://p')
      echo "$name port $port pid $pid up ${role:-sentinel}"
    else
      echo "$name port $port pid $pid down"
    fi
  done <"$dir/pids"
}

stop() {
  local dir=${1:-$DEFAULT_DIR} pid _rest
  [ -e "$dir/pids" ] || return 0
  while read -r pid _rest; do kill "$pid" 2>/dev/null || true; done <"$dir/pids"
  for _ in $(seq 1 50); do
    local alive=0
    while read -r pid _rest; do kill -0 "$pid" 2>/dev/null && alive=1; done <"$dir/pids"
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  while read -r pid _rest; do kill -9 "$pid" 2>/dev/null || true; done <"$dir/pids"
  rm -rf "$dir"
}

run() {
  [ $# -gt 0 ] || die "usage: scripts/redis-cluster.sh run CMD..."
  RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/seckill-redis-cluster.XXXXXX")
  rmdir "$RUN_DIR"
  trap 'stop "$RUN_DIR"' EXIT
  start "$RUN_DIR" >/dev/null
  REDIS_CLUSTER=$(cat "$RUN_DIR/cluster.url") REDIS_SENTINEL=$(cat "$RUN_DIR/sentinel.url") "$@"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  status) shift; status "$@" ;;
  stop) shift; stop "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: scripts/redis-cluster.sh start|status|stop [DIR] | run CMD..." >&2; exit 2 ;;
esac
