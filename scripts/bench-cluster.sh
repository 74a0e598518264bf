#!/usr/bin/env bash
# Cluster mode against one local redis-server, in alternating rounds:
#   leased       the default: leases into per-core shards, batched reserves
#   per-request  the classic design: one EVALSHA per purchase request
# Each round runs, per mode, on a fresh node:
#   sale phase   wrk POST purchase with a new user per request while stock
#                lasts (every answer is an order)
#   sold-out     wrk POST purchase on a sold-out sale (every answer is 410)
# and reads Redis's INFO commandstats: script calls (evalsha + script|load)
# per order, and per sold-out request.
#
# Settings (env): ROUNDS=3 DURATION=5s CONNS=64 NODE_CORES=1
#                 OUT=<run dir> (the summary is appended to OUT/bench-cluster.log)
#                 CARGO_TARGET_DIR (where the release build goes)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/cluster.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
NODE_CORES=${NODE_CORES:-1}
TOKEN=bench-token
OUT=${OUT:-bench/runs/$(date -u +%F)-$(hostname)}

apt_install wrk wrk
cluster_build
cluster_workdir
work=$CLUSTER_WORK
cluster_redis "$work"

scripts_called() { # evalsha + script|load calls so far (Redis's INFO)
  redis-cli -p "$CLUSTER_REDIS_PORT" info commandstats | tr -d '\r' |
    sed -n 's/^cmdstat_\(evalsha\|script|load\):calls=\([0-9]*\),.*/\2/p' |
    { n=0; while read -r c; do n=$((n + c)); done; echo "$n"; }
}

# wrk's own "Requests/sec:" line, and the request count bench/wrk/*.lua print.
wrk_run() { SALE=$1 wrk -t1 -c"$CONNS" -d"$DURATION" -s "$2" "$addr" >"$work/wrk.out"; }
wrk_rps() { sed -n 's/^Requests\/sec: *//p' "$work/wrk.out"; }
wrk_requests() { sed -n 's/^status-summary requests=\([0-9]*\).*/\1/p' "$work/wrk.out"; }

rounds=$work/rounds.csv
mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS NODE_CORES=$NODE_CORES scripts/bench-cluster.sh (commit $(git rev-parse --short HEAD 2>/dev/null))" >>"$OUT/bench-cluster.log"
for round in $(seq "$ROUNDS"); do
  for mode in leased per-request; do
    node=$mode-$round
    cluster_node "$work" "$node" --redis "$CLUSTER_REDIS" --node-id 1 --stock-mode "$mode"
    addr=$CLUSTER_ADDR
    sale="s$round-$mode"
    cluster_admin "$addr" PUT "/admin/sales/$sale" '{"stock":100000000,"per_user_limit":1}' >/dev/null
    sleep 0.3
    before=$(scripts_called)
    wrk_run "$sale" bench/wrk/purchase.lua
    echo "$mode,rps,$(wrk_rps)" >>"$rounds"
    sleep 0.3
    echo "$mode,calls,$(($(scripts_called) - before))" >>"$rounds"
    curl -sf "$addr/sales/$sale" >"$work/sale.json"
    cluster_summarize --rows --metric sold "$mode=$work/sale.json" >>"$rounds"
    echo "$mode,secs,${DURATION%s}" >>"$rounds"
    gone="g$round-$mode"
    cluster_sold_out "$addr" "$gone" 0.3
    sleep 0.5
    before=$(scripts_called)
    wrk_run "$gone" bench/wrk/static.lua
    { echo "$mode,soldout_rps,$(wrk_rps)"
      echo "$mode,soldout_requests,$(wrk_requests)"
      echo "$mode,soldout_calls,$(($(scripts_called) - before))"; } >>"$rounds"
    cluster_stop_node "$node"
    echo "round $round $mode done"
  done
done

cluster_summarize "$rounds" \
  --derive orders_per_s=sold/secs --derive calls_per_order=calls/sold \
  --derive calls_per_soldout_request=soldout_calls/soldout_requests \
  --metric orders_per_s --metric rps --metric calls_per_order --metric soldout_rps \
  --metric calls_per_soldout_request \
  --ratio leased/per-request:orders_per_s --ratio leased/per-request:rps \
  --ratio leased/per-request:soldout_rps | tee -a "$OUT/bench-cluster.log"
sed 's/^/round /' "$rounds" >>"$OUT/bench-cluster.log"
