#!/usr/bin/env bash
# The node beside its peers on this machine, in alternating rounds: nginx
# `return 200` (the cheapest answer an HTTP server gives) against the same
# wrk scripts the node gets, and the classic per-request Redis design
# against the leased one. Scenarios (wrk -t1, each on its own process):
#   nginx-get         GET / on nginx (`return 200`)
#   nginx-post        the sold-out crowd's POSTs (bench/wrk/static.lua) on nginx
#   nginx-purchase    the sale-phase crowd's POSTs (bench/wrk/purchase.lua) on nginx
#   node-healthz      GET /healthz on an embedded node
#   node-soldout      bench/wrk/static.lua on a sold-out sale of that node (410)
#   embedded-sale     bench/wrk/purchase.lua, a fresh sale of 10^8 units (orders)
#   leased-sale       the same on a cluster node (--redis, leased stock)
#   per-request-sale  the same on a cluster node with --stock-mode per-request
#   base-healthz, base-soldout   node-healthz and node-soldout on a second
#                     embedded node running BASELINE_BIN (a before/after in
#                     the same rounds; added to the defaults when it is set)
# For each: answers/s (and 2xx answers/s), and CPU per request of each
# process involved (utime+stime from /proc/<pid>/stat before and after the
# round: nginx's master and workers, the node, redis-server; wrk's own from
# its rusage). Prints the medians over rounds and the ratios of issue 16:
# node-soldout / nginx-post, node-healthz / nginx-get, leased-sale /
# per-request-sale, and the sale phases against nginx-purchase.
#
# Every node and nginx run with NODE_CORES cores (default: all of them).
# nginx is installed from the distribution's packages when missing.
#
# Settings (env): ROUNDS=3 DURATION=8s CONNS=64 NODE_CORES=$(nproc)
#                 QUICK=1 (DURATION=2s: about a minute in all)
#                 SCENARIOS="..." (any subset of the above, run in that order)
#                 NODE_BIN=<a seckill binary> (default: this tree's release build)
#                 BASELINE_BIN=<another seckill binary, e.g. main's>
#                 OUT=<file.md to write the run to>
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/cluster.sh

if [ "${QUICK:-0}" != 0 ]; then DURATION=${DURATION:-2s}; fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-64}
NODE_CORES=${NODE_CORES:-$(nproc)}
SCENARIOS=${SCENARIOS:-nginx-get nginx-post nginx-purchase node-healthz node-soldout ${BASELINE_BIN:+base-healthz base-soldout }embedded-sale leased-sale per-request-sale}
TOKEN=bench-token
export NODE_CORES

# nginx lives in /usr/sbin, which is not on every user's PATH.
PATH=$PATH:/usr/sbin:/sbin
apt_install wrk wrk
apt_install nginx nginx
bash scripts/redis.sh
given_bin=${NODE_BIN:-}
cluster_build -p seckill -p bench # seckill-bench summarizes the rounds
NODE_BIN=${given_bin:-$NODE_BIN}
cluster_workdir
work=$CLUSTER_WORK

wanted() { [[ " $SCENARIOS " == *" $1 "* ]]; }
need() { for s in "$@"; do wanted "$s" && return 0; done; return 1; }

# --- the servers -----------------------------------------------------------
nginx_pids="" node_pid="" base_pid="" leased_pid="" per_request_pid="" redis_pid=""
if need nginx-get nginx-post nginx-purchase; then
  port=$(cluster_free_port)
  mkdir -p "$work/nginx"
  {
    # Workers run as root only where the master does (here: so that they
    # can reach the private work dir).
    if [ "$(id -u)" -eq 0 ]; then echo "user root;"; fi
    cat <<EOF
worker_processes $NODE_CORES;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000000;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  server {
    listen 127.0.0.1:$port reuseport;
    location / { return 200; }
  }
}
EOF
  } >"$work/nginx/nginx.conf"
  nginx -e "$work/nginx/error.log" -p "$work/nginx" -c "$work/nginx/nginx.conf" &
  CLUSTER_PIDS+=("$!")
  nginx_master=$!
  nginx_addr=http://127.0.0.1:$port
  for _ in $(seq 100); do curl -sf "$nginx_addr/" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -sf "$nginx_addr/" >/dev/null || { echo "nginx did not start" >&2; cat "$work/nginx/error.log" >&2; exit 1; }
  nginx_pids="$nginx_master $(pgrep -P "$nginx_master" | tr '\n' ' ')"
fi
if need node-healthz node-soldout embedded-sale; then
  cluster_node "$work" embedded
  node_addr=$CLUSTER_ADDR node_pid=${CLUSTER_PIDS[-1]}
fi
if need base-healthz base-soldout; then
  NODE_BIN=${BASELINE_BIN:?base-* scenarios need BASELINE_BIN} cluster_node "$work" baseline
  base_addr=$CLUSTER_ADDR base_pid=${CLUSTER_PIDS[-1]}
fi
if need leased-sale per-request-sale; then
  port=$(cluster_free_port)
  redis_pid=$(bash scripts/redis.sh start "$port" "$work/redis")
  CLUSTER_PIDS+=("$redis_pid")
  redis=redis://127.0.0.1:$port
  cluster_node "$work" leased --redis "$redis" --node-id 1 --stock-mode leased
  leased_addr=$CLUSTER_ADDR leased_pid=${CLUSTER_PIDS[-1]}
  cluster_node "$work" per-request --redis "$redis" --node-id 2 --stock-mode per-request
  per_request_addr=$CLUSTER_ADDR per_request_pid=${CLUSTER_PIDS[-1]}
fi

if need node-soldout; then cluster_sold_out "$node_addr" gone; fi
if need base-soldout; then cluster_sold_out "$base_addr" gone; fi

# --- one measured wrk run --------------------------------------------------
ticks() { # pids...: utime+stime in clock ticks, summed
  local t=0 pid
  for pid in "$@"; do
    t=$((t + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
  done
  echo "$t"
}

measure() { # name, server pids ("" none), redis pid ("" none), wrk args...
  local name=$1 server=$2 rpid=$3
  shift 3
  local s0 r0 s1 r1 out
  # shellcheck disable=SC2086
  s0=$(ticks $server) r0=$(ticks $rpid)
  out=$(python3 -c '
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True, text=True, check=True)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(p.stdout)
print("wrk-cpu-s", r.ru_utime + r.ru_stime)' wrk -t1 -c"$CONNS" -d"$DURATION" "$@")
  # shellcheck disable=SC2086
  s1=$(ticks $server) r1=$(ticks $rpid)
  local rps requests non2xx wrk_cpu
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  wrk_cpu=$(awk '/wrk-cpu-s/ {print $2}' <<<"$out")
  # One round's rows for `seckill-bench summarize`: answers/s, 2xx/s, and
  # µs of CPU per request of the server, Redis and wrk.
  awk -v n="$name" -v rps="$rps" -v reqs="$requests" -v bad="${non2xx:-0}" \
    -v server=$((s1 - s0)) -v redis=$((r1 - r0)) -v wrk="$wrk_cpu" -v hz="$(getconf CLK_TCK)" '
    BEGIN {
      if (reqs < 1) reqs = 1
      printf "%s,rps,%.1f\n", n, rps
      printf "%s,ok_rps,%.1f\n", n, rps * (reqs - bad) / reqs
      printf "%s,server_us_per_req,%.2f\n", n, server * 1e6 / hz / reqs
      if (redis > 0) printf "%s,redis_us_per_req,%.2f\n", n, redis * 1e6 / hz / reqs
      printf "%s,wrk_us_per_req,%.2f\n", n, wrk * 1e6 / reqs
    }'
}

results=$work/rounds.csv
for round in $(seq "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    case $scenario in
      nginx-get) measure "$scenario" "$nginx_pids" "" "$nginx_addr/" ;;
      nginx-post) SALE=gone measure "$scenario" "$nginx_pids" "" -s bench/wrk/static.lua "$nginx_addr" ;;
      nginx-purchase) SALE="n$round" measure "$scenario" "$nginx_pids" "" -s bench/wrk/purchase.lua "$nginx_addr" ;;
      node-healthz) measure "$scenario" "$node_pid" "" "$node_addr/healthz" ;;
      node-soldout) SALE=gone measure "$scenario" "$node_pid" "" -s bench/wrk/static.lua "$node_addr" ;;
      base-healthz) measure "$scenario" "$base_pid" "" "$base_addr/healthz" ;;
      base-soldout) SALE=gone measure "$scenario" "$base_pid" "" -s bench/wrk/static.lua "$base_addr" ;;
      embedded-sale)
        cluster_admin "$node_addr" PUT "/admin/sales/e$round" '{"stock":100000000,"per_user_limit":1}' >/dev/null
        SALE="e$round" measure "$scenario" "$node_pid" "" -s bench/wrk/purchase.lua "$node_addr" ;;
      leased-sale)
        cluster_admin "$leased_addr" PUT "/admin/sales/l$round" '{"stock":100000000,"per_user_limit":1}' >/dev/null
        sleep 0.3
        SALE="l$round" measure "$scenario" "$leased_pid" "$redis_pid" -s bench/wrk/purchase.lua "$leased_addr" ;;
      per-request-sale)
        cluster_admin "$per_request_addr" PUT "/admin/sales/p$round" '{"stock":100000000,"per_user_limit":1}' >/dev/null
        sleep 0.3
        SALE="p$round" measure "$scenario" "$per_request_pid" "$redis_pid" -s bench/wrk/purchase.lua "$per_request_addr" ;;
      *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
  done | tee -a "$results"
done

summary=$(cluster_summarize "$results" \
  --ratio node-soldout/nginx-post:rps \
  --ratio node-healthz/nginx-get:rps \
  --ratio node-soldout/node-healthz:rps \
  --ratio base-soldout/nginx-post:rps \
  --ratio node-soldout/base-soldout:rps \
  --ratio leased-sale/per-request-sale:ok_rps \
  --ratio leased-sale/nginx-purchase:ok_rps \
  --ratio embedded-sale/nginx-purchase:ok_rps)
settings="ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS NODE_CORES=$NODE_CORES"
echo
echo "$summary"
echo "($settings; wrk -t1; commit $(git rev-parse --short HEAD 2>/dev/null))"
if [ -n "${OUT:-}" ]; then
  {
    echo "# scripts/bench-peers.sh, $(date -u +%FT%TZ)"
    echo
    echo "Command: \`${QUICK:+QUICK=$QUICK }$settings ${BASELINE_BIN:+BASELINE_BIN=$BASELINE_BIN }scripts/bench-peers.sh\` (commit $(git rev-parse --short HEAD 2>/dev/null), node binary $NODE_BIN)"
    echo
    echo "Machine: $(nproc) cores, $(uname -sr), $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2), redis $(redis-server --version | grep -o 'v=[0-9.]*')"
    echo
    echo "$summary"
    echo
    echo "Targets: node-soldout/nginx-post >= 1.1; leased-sale/per-request-sale (ok_rps) >= 1.5."
    echo
    echo "Rounds (scenario, metric, value):"
    echo
    echo '```'
    cat "$results"
    echo '```'
  } >"$OUT"
fi
