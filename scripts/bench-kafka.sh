#!/usr/bin/env bash
# Acknowledged orders/s and purchase latency with the Kafka order log vs the
# embedded journal, beside the broker's own ceiling, in one run, on
# loopback:
#
#   ceiling   bench's kafka-ceiling: a plain rdkafka producer with the
#             node's settings writing order_reserved-sized events to the
#             same broker as fast as it can (IN_FLIGHT events in flight)
#   ceiling-read
#             the same with --consume: one plain consumer (the settler's
#             fetch settings and commits) reads the topic while it is
#             written, as the settler does in the cluster; tansu spends
#             about as much per record read as per record written, so this
#             is the broker's ceiling in the deployed shape, the one `kafka`
#             is held to
#   kafka     a node with --redis --kafka, the settler consuming the topic
#             beside it (the whole cluster), closed-loop purchases by
#             unique users while stock lasts
#   alone     the same node with the settler paused (SIGSTOP) for the run:
#             the broker serves the node's produce requests only, as it
#             serves the ceiling's; the settler then resumes and is given
#             CATCHUP seconds to read the backlog before the next run
#   journal   an embedded node (journal, group commit), the same load
#
# They alternate, ROUNDS times; medians and ratios at the end, and where the
# CPU went: microseconds per acknowledged order of each process (Redis,
# tansu, the Kafka node, the settler, the load generator). On a small
# machine every process shares the same cores: what the node, Redis and
# the settler spend is taken from the broker, which is why `alone` is
# reported beside `kafka`.
#
#   ROUNDS=3 DURATION=6s CONNS=512 IN_FLIGHT=1000 NODE_CORES=1 CATCHUP=10 scripts/bench-kafka.sh
#   (CARGO_TARGET_DIR: where the release build goes)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/cluster.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6s}
CONNS=${CONNS:-512}
NODE_CORES=${NODE_CORES:-1}
IN_FLIGHT=${IN_FLIGHT:-1000}
CATCHUP=${CATCHUP:-10}
TOKEN=bench-token
OUT=${OUT:-bench/runs/$(date -u +%F)-$(hostname)}

cluster_build
cluster_workdir
work=$CLUSTER_WORK
cluster_backends "$work"
kafka=$CLUSTER_KAFKA

cluster_node "$work" kafka --redis "$CLUSTER_REDIS" --kafka "$kafka" --node-id 1
kafka_addr=$CLUSTER_ADDR
kafka_node_pid=${CLUSTER_PIDS[-1]}
cluster_settler "$work"
settler_pid=${CLUSTER_PIDS[-1]}
cluster_node "$work" journal
journal_addr=$CLUSTER_ADDR
journal_node_pid=${CLUSTER_PIDS[-1]}

mkdir -p "$OUT"
log=$OUT/bench-kafka.log
echo "# $(date -u +%FT%TZ) ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS NODE_CORES=$NODE_CORES IN_FLIGHT=$IN_FLIGHT CATCHUP=$CATCHUP scripts/bench-kafka.sh (commit $(git rev-parse --short HEAD 2>/dev/null))" | tee -a "$log"

# CPU time of every process of the run, for the per-order split: the
# servers' utime + stime from /proc/PID/stat, the load generator's (a child
# of this shell, reaped) from this shell's cutime + cstime.
tick=$(getconf CLK_TCK)
cpu_names=(redis tansu node settler journal load)
cpu_pids=("${CLUSTER_PIDS[0]}" "${CLUSTER_PIDS[1]}" "$kafka_node_pid" "$settler_pid" "$journal_node_pid")
cpu_ticks() { # pid, first field: field + the next (1-based, after the name)
  local f
  # The name (field 2) of these processes has no blanks.
  read -ra f <"/proc/$1/stat" 2>/dev/null || { echo 0; return; }
  echo $((f[$2 - 1] + f[$2]))
}
cpu_snap() { # array name: one tick count per cpu_names entry
  local -n snap=$1
  local self=$BASHPID
  snap=()
  for pid in "${cpu_pids[@]}"; do snap+=("$(cpu_ticks "$pid" 14)"); done
  snap+=("$(cpu_ticks "$self" 16)")
}
cpu_rows() { # label, before array, after array: label,cpu_NAME_us,... rows
  local label=$1 i total=0 us
  local -n b=$2 a=$3
  for i in "${!cpu_names[@]}"; do
    us=$(((a[i] - b[i]) * 1000000 / tick))
    total=$((total + us))
    echo "$label,cpu_${cpu_names[i]}_us,$us"
  done
  echo "$label,cpu_total_us,$total"
}

rounds=$work/rounds.csv
metrics=(--metric orders_per_s --metric ok --metric other --metric p50_ms --metric p99_ms
  --metric consumed_per_s --metric caught_up)

purchase() { # label, addr, round, extra flags...
  local label=$1 addr=$2 round=$3 before after status=0
  shift 3
  cpu_snap before
  "$BENCH_BIN" run --target "$addr" --admin-token "$TOKEN" --scenario purchase \
    --sale "$label-$round" --stock 100000000 --hot-users 0 --connections "$CONNS" \
    --duration "$DURATION" --out "$work/runs" --name "$label-$round" --quiet "$@" \
    >/dev/null || status=$?
  cpu_snap after
  if [ "$round" = audit ]; then
    echo "audit $label: $([ "$status" = 0 ] && echo PASS || echo FAIL)"
    return
  fi
  cluster_summarize --rows "${metrics[@]}" "$label=$work/runs/$label-$round.json" >>"$rounds"
  cpu_rows "$label" before after >>"$rounds"
  echo "round $round $label done"
}

ceiling() { # label, round, extra flags...
  local label=$1 round=$2 before after
  shift 2
  cpu_snap before
  "$CEILING_BIN" --brokers "$kafka" --topic "bench.ceiling" --duration-s "${DURATION%s}" \
    --in-flight "$IN_FLIGHT" "$@" >"$work/ceiling.out" || true
  cpu_snap after
  # Its last line is its result as one JSON object.
  tail -n1 "$work/ceiling.out" >"$work/ceiling.json"
  cluster_summarize --rows "${metrics[@]}" "$label=$work/ceiling.json" >>"$rounds"
  cpu_rows "$label" before after >>"$rounds"
  echo "round $round $label done"
}

for round in $(seq "$ROUNDS"); do
  ceiling ceiling "$round"
  ceiling ceiling-read "$round" --consume
  purchase kafka "$kafka_addr" "$round" --no-audit
  kill -STOP "$settler_pid"
  purchase alone "$kafka_addr" "$round" --no-audit
  kill -CONT "$settler_pid"
  sleep "$CATCHUP"
  purchase journal "$journal_addr" "$round" --no-audit
done

# Outside the measured rounds (the audit's reading would count in their
# CPU): one more run of each node, audited (every 200 in the log once, no
# oversell, limits and keys held). The Kafka one on a fresh node and topic,
# so that the audit reads this run's events only; the settler, which reads
# the other topic, is paused meanwhile (else it would reconcile this
# sale's orders as never logged).
kill -STOP "$settler_pid"
cluster_node "$work" audit --redis "$CLUSTER_REDIS" --kafka "$kafka" --node-id 2 \
  --kafka-topic bench.audit
purchase kafka "$CLUSTER_ADDR" audit --kafka "$kafka" --kafka-topic bench.audit |
  tee -a "$work/audits"
purchase journal "$journal_addr" audit --journal "$work/journal/data" | tee -a "$work/audits"
kill -CONT "$settler_pid"

# Medians over the rounds; CPU microseconds per acknowledged order (event,
# for the ceilings) by process: `node` is the Kafka node, `journal` the
# embedded one, `load` the load generator (seckill-bench, or
# kafka-ceiling's own producer and reader).
derive=()
for name in "${cpu_names[@]}" total; do
  derive+=(--derive "cpu_${name}_us_per_order=cpu_${name}_us/ok")
done
cpu_metrics=()
for name in "${cpu_names[@]}" total; do cpu_metrics+=(--metric "cpu_${name}_us_per_order"); done
{
  cluster_summarize "$rounds" "${derive[@]}" "${cpu_metrics[@]}"
  cluster_summarize "$rounds" \
    --metric orders_per_s --metric p50_ms --metric p99_ms --metric other \
    --metric consumed_per_s --metric caught_up \
    --ratio kafka/ceiling:orders_per_s --ratio kafka/ceiling-read:orders_per_s \
    --ratio alone/ceiling:orders_per_s --ratio kafka/journal:orders_per_s
  echo "(targets: kafka/ceiling and kafka/ceiling-read orders_per_s >= 0.70)"
} | tee -a "$log"
cat "$rounds" "$work/audits" >>"$log"
if grep -q "FAIL" "$work/audits"; then
  echo "the audit of a node run failed: see $log" >&2
  exit 1
fi
