# A local cluster (or one node) on loopback for the bench scripts, sourced:
# the release build, redis-server (scripts/redis.sh), a tansu broker
# (scripts/kafka.sh), seckill nodes and the settler, every process
# remembered for cluster_stop; the admin calls and the summaries.
#
#   source scripts/lib/cluster.sh     # from the repository root
#   cluster_build [-p PKG]...         # cargo build --release (default: -p
#                                     # seckill -p bench), curl installed
#                                     # (lib/apt.sh); sets NODE_BIN,
#                                     # BENCH_BIN and CEILING_BIN under
#                                     # ${CARGO_TARGET_DIR:-target}
#   cluster_build_node                # NODE_BIN as given, else cluster_build
#                                     # -p seckill (curl installed either way)
#   cluster_workdir                   # a temp dir in CLUSTER_WORK, and the
#                                     # EXIT trap: cluster_stop, then rm -rf
#   cluster_redis "$work"             # redis-server on a free port: sets
#                                     # CLUSTER_REDIS (redis://...) and
#                                     # CLUSTER_REDIS_PORT
#   cluster_backends "$work"          # redis + tansu on free ports: also
#                                     # sets CLUSTER_KAFKA (127.0.0.1:PORT)
#   cluster_node "$work" NAME FLAGS...   # a node (--listen 127.0.0.1:0, its
#                                     # data dir under $work/NAME); sets
#                                     # CLUSTER_ADDR (http://127.0.0.1:PORT)
#                                     # and CLUSTER_NODE_PID[NAME]
#   cluster_node_at "$work" NAME PORT FLAGS...  # the same on a fixed port, so
#                                     # that it can be restarted where the
#                                     # load's connections point
#   cluster_stop_node NAME            # SIGTERM, wait (leases go back)
#   cluster_kill_node "$work" NAME    # SIGKILL it (kill -9: nothing graceful)
#   cluster_restart_node "$work" NAME # start it again, same port and flags
#                                     # (retried for up to 30 s: a node id
#                                     # may still be claimed by the dead one)
#   cluster_settler "$work"           # seckill settle on the same backends
#   cluster_admin ADDR METHOD PATH [JSON]  # an admin call with $TOKEN; fails
#                                     # on a non-2xx answer
#   cluster_sold_out ADDR SALE [WAIT] # SALE created with one unit and bought
#                                     # (WAIT seconds between), so that every
#                                     # later purchase is answered 410
#   cluster_summarize ARGS...         # seckill-bench summarize (medians,
#                                     # ratios: no parsing of output here)
#   trap cluster_stop EXIT            # SIGTERM in reverse order of start
#                                     # (nodes return their leases while
#                                     # Redis is still up), SIGKILL after 5 s
#
# Needs TOKEN (the admin token); the node's cores come from NODE_CORES
# (default 1); CLUSTER_WRAP (an array, e.g. (taskset -c 0)) prefixes every
# node's command line. Returns (exits) non-zero with the process's log when
# something does not start.

source scripts/lib/apt.sh

CLUSTER_PIDS=()
CLUSTER_REDIS=""
CLUSTER_REDIS_PORT=""
CLUSTER_KAFKA=""
CLUSTER_ADDR=""
CLUSTER_WRAP=()
# Nodes by name: pid, port and flags (one a line in NAME/flags).
declare -A CLUSTER_NODE_PID=()

cluster_build() { # cargo package flags (default -p seckill -p bench)
  local target=${CARGO_TARGET_DIR:-target}
  if [ $# -eq 0 ]; then set -- -p seckill -p bench; fi
  apt_install curl curl
  cargo build --release -q "$@"
  NODE_BIN=$target/release/seckill
  BENCH_BIN=$target/release/seckill-bench
  CEILING_BIN=$target/release/kafka-ceiling
}

cluster_build_node() { # NODE_BIN as given, else this tree's release build
  if [ -n "${NODE_BIN:-}" ]; then
    apt_install curl curl
  else
    cluster_build -p seckill
  fi
}

cluster_workdir() { # CLUSTER_WORK, removed on exit after cluster_stop
  CLUSTER_WORK=$(mktemp -d)
  trap 'cluster_stop; rm -rf "$CLUSTER_WORK"' EXIT
}

# A loopback port nothing listens on (a random one, checked with a
# connect): bash only.
cluster_free_port() {
  local port
  for _ in $(seq 100); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "cluster_free_port: no free port found" >&2
  return 1
}

cluster_redis() { # work dir
  local work=$1
  bash scripts/redis.sh
  CLUSTER_REDIS_PORT=$(cluster_free_port)
  CLUSTER_PIDS+=("$(bash scripts/redis.sh start "$CLUSTER_REDIS_PORT" "$work/redis")")
  CLUSTER_REDIS=redis://127.0.0.1:$CLUSTER_REDIS_PORT
}

cluster_backends() { # work dir
  local work=$1 port
  cluster_redis "$work"
  bash scripts/kafka.sh >/dev/null
  port=$(cluster_free_port)
  CLUSTER_PIDS+=("$(bash scripts/kafka.sh start "$port" "$work/kafka")")
  CLUSTER_KAFKA=127.0.0.1:$port
}

cluster_node() { # work dir, name, extra flags...
  local work=$1 name=$2
  shift 2
  cluster_node_at "$work" "$name" 0 "$@"
}

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
  "${CLUSTER_WRAP[@]}" "$NODE_BIN" --listen "127.0.0.1:$port" --data-dir "$work/$name/data" \
    --admin-token "$TOKEN" --cores "${NODE_CORES:-1}" "${flags[@]}" \
    >"$work/$name/banner" 2>>"$work/$name/node.log" &
  local pid=$!
  CLUSTER_NODE_PID[$name]=$pid
  CLUSTER_PIDS+=("$pid")
  cluster_wait_banner "$work/$name/banner" "$pid" || {
    echo "node $name did not start on port $port" >&2
    tail -n 20 "$work/$name/node.log" >&2
    kill -9 "$pid" 2>/dev/null || true
    return 1
  }
}

# The one banner wait: up to 20 s for `seckill listening on http://ADDR` in
# FILE while PID lives; sets CLUSTER_ADDR.
cluster_wait_banner() { # banner file, pid
  local file=$1 pid=$2
  CLUSTER_ADDR=""
  for _ in $(seq 200); do
    grep -q 'listening on' "$file" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  CLUSTER_ADDR=$(grep -o 'http://[0-9.:]*' "$file" | head -n1 || true)
  [ -n "$CLUSTER_ADDR" ]
}

cluster_stop_node() { # name: SIGTERM, then wait for the exit
  local pid=${CLUSTER_NODE_PID[$1]:-}
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
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

cluster_admin() { # addr, method, path, [JSON body]: the answer on stdout
  local addr=$1 method=$2 path=$3
  curl -sf -X "$method" "$addr$path" -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' ${4:+-d "$4"}
}

cluster_sold_out() { # addr, sale, [seconds between the sale and the buy]
  cluster_admin "$1" PUT "/admin/sales/$2" '{"stock":1,"per_user_limit":1}' >/dev/null
  sleep "${3:-0}"
  curl -sf -X POST "$1/sales/$2/purchase" -d '{"user_id":"first"}' >/dev/null
}

cluster_summarize() { # seckill-bench summarize ARGS...
  "$BENCH_BIN" summarize "$@"
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
