# A local cluster (or one node) on loopback for the bench scripts, sourced:
# redis-server (scripts/redis.sh), a tansu broker (scripts/kafka.sh), seckill
# nodes and the settler, every process remembered for cluster_stop.
#
#   source scripts/lib/cluster.sh     # from the repository root
#   cluster_backends "$work"          # redis + tansu on free ports: sets
#                                     # CLUSTER_REDIS (redis://...) and
#                                     # CLUSTER_KAFKA (127.0.0.1:PORT)
#   cluster_node "$work" NAME FLAGS...   # a node (--listen 127.0.0.1:0, its
#                                     # data dir under $work/NAME); sets
#                                     # CLUSTER_ADDR (http://127.0.0.1:PORT)
#   cluster_node_at "$work" NAME PORT FLAGS...  # the same on a fixed port, so
#                                     # that it can be restarted where the
#                                     # load's connections point
#   cluster_kill_node "$work" NAME    # SIGKILL it (kill -9: nothing graceful)
#   cluster_restart_node "$work" NAME # start it again, same port and flags
#                                     # (retried for up to 30 s: a node id
#                                     # may still be claimed by the dead one)
#   cluster_settler "$work"           # seckill settle on the same backends
#   trap cluster_stop EXIT            # SIGTERM in reverse order of start
#                                     # (nodes return their leases while
#                                     # Redis is still up), SIGKILL after 5 s
#
# Needs NODE_BIN (the seckill binary) and TOKEN (the admin token); the
# node's cores come from NODE_CORES (default 1). Returns (exits) non-zero
# with the process's log when something does not start.

CLUSTER_PIDS=()
CLUSTER_REDIS=""
CLUSTER_KAFKA=""
CLUSTER_ADDR=""

cluster_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

cluster_backends() { # work dir
  local work=$1 port
  bash scripts/redis.sh
  bash scripts/kafka.sh >/dev/null
  port=$(cluster_free_port)
  CLUSTER_PIDS+=("$(bash scripts/redis.sh start "$port" "$work/redis")")
  CLUSTER_REDIS=redis://127.0.0.1:$port
  port=$(cluster_free_port)
  CLUSTER_PIDS+=("$(bash scripts/kafka.sh start "$port" "$work/kafka")")
  CLUSTER_KAFKA=127.0.0.1:$port
}

cluster_node() { # work dir, name, extra flags...
  local work=$1 name=$2
  shift 2
  mkdir -p "$work/$name"
  "$NODE_BIN" --listen 127.0.0.1:0 --data-dir "$work/$name/data" --admin-token "$TOKEN" \
    --cores "${NODE_CORES:-1}" "$@" >"$work/$name/banner" 2>"$work/$name/node.log" &
  CLUSTER_PIDS+=("$!")
  for _ in $(seq 200); do grep -q 'listening on' "$work/$name/banner" && break; sleep 0.1; done
  CLUSTER_ADDR=$(grep -o 'http://[0-9.:]*' "$work/$name/banner" | head -n1 || true)
  if [ -z "$CLUSTER_ADDR" ]; then
    echo "node $name did not start" >&2
    cat "$work/$name/node.log" >&2
    return 1
  fi
}

# Fixed-port nodes by name: pid, port and flags (one a line in NAME/flags).
declare -A CLUSTER_NODE_PID=()

cluster_node_at() { # work dir, name, port, extra flags...
  local work=$1 name=$2 port=$3
  shift 3
  mkdir -p "$work/$name"
  : >"$work/$name/flags"
  [ $# -eq 0 ] || printf '%s\n' "$@" >"$work/$name/flags"
  echo "$port" >"$work/$name/port"
  cluster_start_at "$work" "$name"
}

cluster_start_at() { # work dir, name: one try; sets CLUSTER_ADDR
  local work=$1 name=$2 port flags=()
  port=$(cat "$work/$name/port")
  mapfile -t flags <"$work/$name/flags"
  : >"$work/$name/banner"
  "$NODE_BIN" --listen "127.0.0.1:$port" --data-dir "$work/$name/data" --admin-token "$TOKEN" \
    --cores "${NODE_CORES:-1}" "${flags[@]}" >"$work/$name/banner" 2>>"$work/$name/node.log" &
  local pid=$!
  CLUSTER_NODE_PID[$name]=$pid
  CLUSTER_PIDS+=("$pid")
  for _ in $(seq 200); do
    grep -q 'listening on' "$work/$name/banner" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  CLUSTER_ADDR=$(grep -o 'http://[0-9.:]*' "$work/$name/banner" | head -n1 || true)
  if [ -z "$CLUSTER_ADDR" ]; then
    echo "node $name did not start on port $port" >&2
    tail -n 5 "$work/$name/node.log" >&2
    kill -9 "$pid" 2>/dev/null || true
    return 1
  fi
}

cluster_kill_node() { # work dir, name
  local pid=${CLUSTER_NODE_PID[$2]:-}
  [ -n "$pid" ] || return 0
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cluster_restart_node() { # work dir, name
  local work=$1 name=$2
  cluster_kill_node "$work" "$name"
  for _ in $(seq 30); do
    cluster_start_at "$work" "$name" 2>>"$work/$name/restarts.log" && return 0
    sleep 1
  done
  echo "node $name did not restart within 30 s" >&2
  return 1
}

cluster_settler() { # work dir, extra flags...
  local work=$1
  shift
  "$NODE_BIN" settle --redis "$CLUSTER_REDIS" --kafka "$CLUSTER_KAFKA" "$@" \
    >"$work/settler.out" 2>"$work/settler.log" &
  CLUSTER_PIDS+=("$!")
}

cluster_stop() {
  local i pid
  for ((i = ${#CLUSTER_PIDS[@]} - 1; i >= 0; i--)); do
    pid=${CLUSTER_PIDS[i]}
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  CLUSTER_PIDS=()
}
