#!/usr/bin/env bash
# wrk against one embedded node on loopback, in alternating rounds:
#   healthz   GET /healthz
#   soldout   POST /sales/<sold-out sale>/purchase  (the 410 path)
#   purchase  POST /sales/<sale with stock>/purchase, a new user per request
# Prints requests/s per round, the medians, and soldout/healthz.
#
# Settings (env): ROUNDS=3 DURATION=5s CONNS=64 WRK_THREADS=1 NODE_CORES=1
#                 DRIVER=legacy|uring|auto OUT=<file to append the summary to>
#                 SCENARIOS="healthz soldout purchase" (any subset, in that order)
#                 CARGO_TARGET_DIR (where the release build goes)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/cluster.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-1}
NODE_CORES=${NODE_CORES:-1}
DRIVER=${DRIVER:-legacy}
SCENARIOS=${SCENARIOS:-healthz soldout purchase}
TOKEN=bench-token

apt_install wrk wrk
cluster_build
cluster_workdir
work=$CLUSTER_WORK
cluster_node "$work" node --driver "$DRIVER"
addr=$CLUSTER_ADDR

cluster_sold_out "$addr" soldout

# wrk's own "Requests/sec:" line.
wrk_rps() { wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" "$@" | sed -n 's/^Requests\/sec: *//p'; }

rounds=$work/rounds.csv
for round in $(seq "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    case $scenario in
      healthz) rps=$(wrk_rps "$addr/healthz") ;;
      soldout) rps=$(SALE=soldout wrk_rps -s bench/wrk/static.lua "$addr") ;;
      purchase)
        cluster_admin "$addr" PUT "/admin/sales/stock$round" \
          '{"stock":100000000,"per_user_limit":1}' >/dev/null
        rps=$(SALE="stock$round" wrk_rps -s bench/wrk/purchase.lua "$addr") ;;
      *) echo "unknown scenario $scenario"; exit 2 ;;
    esac
    echo "round $round $scenario $rps req/s"
    echo "$scenario,rps,$rps" >>"$rounds"
  done
done

summary=$(cluster_summarize "$rounds" --ratio soldout/healthz:rps --ratio purchase/healthz:rps)
echo "$summary"
settings="driver=$DRIVER node_cores=$NODE_CORES wrk_threads=$WRK_THREADS conns=$CONNS duration=$DURATION rounds=$ROUNDS"
echo "($settings)"
if [ -n "${OUT:-}" ]; then
  { echo "# scripts/bench-wrk.sh $settings"; cat "$rounds"; echo "$summary"; } >>"$OUT"
fi
