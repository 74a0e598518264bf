#!/usr/bin/env bash
# The node's CPU and thread wakes per order in the cluster sale phase
# (--redis, leased stock, journal), for one or more seckill binaries in
# alternating rounds on one redis-server:
#   wrk POST purchase, a new user per request, on a sale with ample stock
#   (every answer is an order), for DURATION; the node's utime+stime
#   (/proc/PID/stat) and the context switches of all its threads
#   (/proc/PID/task/*/status, voluntary + involuntary) over the run,
#   divided by the orders sold.
#
#   BINS="/tmp/base/seckill target/release/seckill" scripts/bench-hop.sh
#
# Settings (env): BINS (default: this tree's release build) ROUNDS=3
#                 DURATION=5s CONNS=64 NODE_CORES=1
#                 CARGO_TARGET_DIR (where the release build goes)
# Prints the medians per binary (b1, b2, ... in the order of BINS) and the
# ratios of each to b1; on a shared machine compare by ratio, not
# absolutes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/cluster.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
NODE_CORES=${NODE_CORES:-1}
TOKEN=bench-token
TICKS=$(getconf CLK_TCK)

apt_install wrk wrk
cluster_build
BINS=${BINS:-$NODE_BIN}
cluster_workdir
work=$CLUSTER_WORK
cluster_redis "$work"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ {n += $2} END {print n + 0}'
}
per_order() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / (b > 0 ? b : 1)}'; }

rounds="$work/rounds.csv"
ratios=()
for round in $(seq "$ROUNDS"); do
  i=0
  for bin in $BINS; do
    i=$((i + 1))
    NODE_BIN=$bin cluster_node "$work" "b$i-$round" --redis "$CLUSTER_REDIS" --node-id 1
    addr=$CLUSTER_ADDR pid=${CLUSTER_NODE_PID[b$i-$round]}
    sale="h$round-$i"
    cluster_admin "$addr" PUT "/admin/sales/$sale" '{"stock":100000000,"per_user_limit":1}' >/dev/null
    sleep 0.5
    t0=$(cpu_ticks "$pid") s0=$(switches "$pid")
    SALE="$sale" wrk -t1 -c"$CONNS" -d"$DURATION" -s bench/wrk/purchase.lua "$addr" >"$work/wrk.out"
    t1=$(cpu_ticks "$pid") s1=$(switches "$pid")
    sold=$(cluster_admin "$addr" GET "/sales/$sale" | grep -o '"sold":[0-9]*' | cut -d: -f2)
    cluster_stop_node "b$i-$round"
    cpu_us=$(awk -v t=$((t1 - t0)) -v k="$TICKS" 'BEGIN {printf "%.0f", t / k * 1e6}')
    secs=${DURATION%s}
    {
      echo "b$i,cpu_us_per_order,$(per_order "$cpu_us" "$sold")"
      echo "b$i,switches_per_order,$(per_order $((s1 - s0)) "$sold")"
      echo "b$i,orders_per_s,$(per_order "$sold" "$secs")"
    } | tee -a "$rounds"
  done
done
i=0
for bin in $BINS; do
  i=$((i + 1))
  echo "b$i = $bin"
  if [ "$i" -gt 1 ]; then
    for m in cpu_us_per_order switches_per_order orders_per_s; do ratios+=(--ratio "b$i/b1:$m"); done
  fi
done
cluster_summarize "$rounds" "${ratios[@]}"
