#!/usr/bin/env bash
# One command for a capacity scenario on loopback: builds the release node
# and the harness, starts a node on a temp data dir (or, with MODE=cluster, a
# local cluster), runs the scenario with seckill-bench, stops everything.
# Results go to bench/runs/<date>-<host>/.
#
#   scripts/bench.sh capacity        find-max of the purchase path and of the
#                                    sold-out path at p99 <= $SLO: the capacity report
#   scripts/bench.sh spike           a sale-start spike (0 -> $RATE in 500 ms) on a
#                                    sale of $STOCK units with hot retriers; audited
#   scripts/bench.sh healthz-vs-wrk  harness vs wrk on /healthz, alternating rounds, medians
#   scripts/bench.sh cluster         MODE=cluster and a purchase run at $RATE on a sale
#                                    of $STOCK units with hot retriers, spread over the
#                                    $NODES nodes, audited against the Kafka topic
#   scripts/bench.sh run ARGS...     seckill-bench run ARGS (target, token, order log filled in)
#   scripts/bench.sh find-max ARGS...
#
# MODE=cluster (any scenario): redis-server, a tansu broker (scripts/redis.sh,
# scripts/kafka.sh; installed when missing), NODES=2 nodes with --redis
# --kafka --node-id 1..NODES and `seckill settle`, all on loopback and free
# ports (scripts/lib/cluster.sh); the harness spreads its connections over
# the nodes (--target A,B) and audits the order topic (--kafka). Not pinned.
#
# Settings (env): NODE_CORES=1 LOAD_THREADS=1 DRIVER=legacy PIN=0 SLO=5ms RATE=20000
#   STOCK=1000 DURATION=5s ROUNDS=3 CONNS=64 PLAN_RATE=500000 OUT=<run dir>
#   MODE=embedded|cluster NODES=2 KEEP=1 (keep the temp dir with the logs)
#   CARGO_TARGET_DIR (where the release build goes)
# Cores: with PIN=1 (and enough cores) the node is pinned to the first
# NODE_CORES cores and the harness to the next LOAD_THREADS (taskset). Off by
# default: on a shared machine pinning keeps the scheduler from moving either
# away from someone else's busy core.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/cluster.sh

scenario=${1:-capacity}
shift || true
NODE_CORES=${NODE_CORES:-1}
LOAD_THREADS=${LOAD_THREADS:-1}
DRIVER=${DRIVER:-legacy}
SLO=${SLO:-5ms}
RATE=${RATE:-20000}
STOCK=${STOCK:-1000}
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
PLAN_RATE=${PLAN_RATE:-500000}
TOKEN=bench-token
OUT=${OUT:-bench/runs/$(date -u +%F)-$(hostname)}
MODE=${MODE:-embedded}
NODES=${NODES:-2}
[ "$scenario" = cluster ] && MODE=cluster
case $MODE in embedded|cluster) ;; *) echo "MODE=$MODE: embedded or cluster"; exit 2 ;; esac

cluster_build
# What was built, for the run records (the harness reads SECKILL_COMMIT).
if [ -z "${SECKILL_COMMIT:-}" ] && git rev-parse HEAD >/dev/null 2>&1; then
  SECKILL_COMMIT=$(git rev-parse --short=12 HEAD)
  git diff --quiet HEAD -- seckill stock queue Cargo.lock || SECKILL_COMMIT="$SECKILL_COMMIT-dirty"
fi
export SECKILL_COMMIT=${SECKILL_COMMIT:-unknown}
bench_bin=$BENCH_BIN

node_pin=() load_pin=()
if [ "${PIN:-0}" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -ge $((NODE_CORES + LOAD_THREADS)) ]; then
  node_pin=(taskset -c "0-$((NODE_CORES - 1))")
  load_pin=(taskset -c "$NODE_CORES-$((NODE_CORES + LOAD_THREADS - 1))")
fi

data=$(mktemp -d)
trap 'cluster_stop; [ -n "${KEEP:-}" ] || rm -rf "$data"' EXIT
if [ "$MODE" = cluster ]; then
  cluster_backends "$data"
  targets=()
  for i in $(seq "$NODES"); do
    cluster_node "$data" "node$i" --redis "$CLUSTER_REDIS" --kafka "$CLUSTER_KAFKA" \
      --node-id "$i" --driver "$DRIVER"
    targets+=("$CLUSTER_ADDR")
  done
  cluster_settler "$data"
  addr=${targets[0]}
  target=$(IFS=,; echo "${targets[*]}")
  order_log=(--kafka "$CLUSTER_KAFKA")
  node_pin=() load_pin=()
else
  CLUSTER_WRAP=("${node_pin[@]}")
  cluster_node "$data" node --driver "$DRIVER"
  addr=$CLUSTER_ADDR
  target=$addr
  order_log=(--journal "$data/node/data")
fi

mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) scripts/bench.sh $scenario $* (MODE=$MODE$([ "$MODE" = cluster ] && echo " NODES=$NODES") NODE_CORES=$NODE_CORES LOAD_THREADS=$LOAD_THREADS DRIVER=$DRIVER pinned=${node_pin[*]:-no}/${load_pin[*]:-no})" >>"$OUT/bench.sh.log"

harness() { # subcommand, args...
  local sub=$1; shift
  "${load_pin[@]}" "$bench_bin" "$sub" --target "$target" --admin-token "$TOKEN" \
    "${order_log[@]}" --threads "$LOAD_THREADS" --out "$OUT" "$@" | tee -a "$OUT/bench.sh.log"
}

case $scenario in
  capacity)
    # The purchase path: a sale with more stock than the run can sell, so
    # every request reaches reserve + journal; fresh sale per step.
    harness find-max --scenario purchase --stock 100000000 --hot-users 0 \
      --slo-p99 "$SLO" --start-rate 500 --factor 1.5 --duration "$DURATION" \
      --connections "$CONNS" --node-cores "$NODE_CORES" --plan-rate "$PLAN_RATE" --quiet \
      --name "capacity-purchase-$(date -u +%H%M%S)" "$@"
    # The sold-out path: every request is answered 410.
    harness find-max --scenario soldout --stock 1 --hot-users 0 \
      --slo-p99 "$SLO" --start-rate 5000 --factor 1.5 --duration "$DURATION" \
      --connections "$CONNS" --node-cores "$NODE_CORES" --plan-rate "$PLAN_RATE" --quiet \
      --name "capacity-soldout-$(date -u +%H%M%S)" "$@"
    ;;
  cluster)
    harness run --scenario purchase --stock "$STOCK" --rate "$RATE" \
      --duration "$DURATION" --connections "$CONNS" --hot-users 200 --hot-share 0.2 \
      --keys hot --name "cluster-$NODES-nodes-$(date -u +%H%M%S)" "$@"
    ;;
  spike)
    harness run --scenario purchase --stock "$STOCK" --rate "$RATE" --ramp 500ms \
      --duration "$DURATION" --connections "$CONNS" --hot-users 200 --hot-share 0.2 \
      --keys hot --name "spike-$(date -u +%H%M%S)" "$@"
    ;;
  healthz-vs-wrk)
    apt_install wrk wrk
    rounds=$data/rounds.csv
    for round in $(seq "$ROUNDS"); do
      "${load_pin[@]}" "$bench_bin" run --target "$addr" --scenario healthz --threads "$LOAD_THREADS" \
        --connections "$CONNS" --duration "$DURATION" --out "$data/runs" --name "healthz-$round" \
        --quiet >/dev/null
      "$bench_bin" summarize --rows --metric throughput_rps \
        "seckill-bench=$data/runs/healthz-$round.json" >>"$rounds"
      w=$("${load_pin[@]}" wrk -t"$LOAD_THREADS" -c"$CONNS" -d"$DURATION" "$addr/healthz" |
        sed -n 's/^Requests\/sec: *//p')
      echo "wrk,throughput_rps,$w" >>"$rounds"
      echo "round $round done"
    done
    "$bench_bin" summarize "$rounds" --ratio seckill-bench/wrk:throughput_rps |
      tee -a "$OUT/bench.sh.log"
    cat "$rounds" >>"$OUT/bench.sh.log"
    ;;
  run|find-max)
    harness "$scenario" "$@"
    ;;
  *) echo "unknown scenario $scenario (capacity, spike, cluster, healthz-vs-wrk, run, find-max)"; exit 2 ;;
esac
