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
#   ROUNDS=3 DURATION=6s CONNS=512 IN_FLIGHT=1000 NODE_CORES=1 scripts/bench-kafka.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-6s}
CONNS=${CONNS:-512}
NODE_CORES=${NODE_CORES:-1}
IN_FLIGHT=${IN_FLIGHT:-1000}
CATCHUP=${CATCHUP:-10}
TOKEN=bench-token
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-bench/runs/$(date -u +%F)-$(hostname)}

cargo build --release -q -p seckill -p bench
NODE_BIN=$TARGET_DIR/release/seckill
bench_bin=$TARGET_DIR/release/seckill-bench
ceiling_bin=$TARGET_DIR/release/kafka-ceiling
source scripts/lib/cluster.sh

work=$(mktemp -d)
trap 'cluster_stop; rm -rf "$work"' EXIT
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
# servers from /proc (utime + stime), the load generator (a child of this
# shell) from `times`.
tick=$(getconf CLK_TCK)
cpu_names=(redis tansu node settler journal)
cpu_pids=("${CLUSTER_PIDS[0]}" "${CLUSTER_PIDS[1]}" "$kafka_node_pid" "$settler_pid" "$journal_node_pid")
cpu_snap() { # file
  local pid
  for pid in "${cpu_pids[@]}"; do
    awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0
  done >"$1"
  times >"$1.load"
}
cpu_split() { # before, after, acknowledged count: "cpu_us_per_order name=us,..."
  python3 - "$1" "$2" "$3" "$tick" "${cpu_names[@]}" <<'PY'
import re, sys
before, after, n, tick, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:]
def ticks(f):
    return [int(x) for x in open(f).read().split()]
def load(f):  # the children line of `times`: 0m1.230s 0m0.450s
    secs = [int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", open(f).read().splitlines()[1])]
    return sum(secs)
us = {name: (a - b) / tick * 1e6 / max(n, 1) for name, b, a in zip(names, ticks(before), ticks(after))}
us["load"] = (load(after + ".load") - load(before + ".load")) * 1e6 / max(n, 1)
us["total"] = sum(us.values())
print("cpu_us_per_order " + ",".join(f"{k}={v:.1f}" for k, v in us.items()))
PY
}

purchase() { # name, addr, round, extra flags...
  local name=$1 addr=$2 round=$3
  shift 3
  cpu_snap "$work/cpu0"
  "$bench_bin" run --target "$addr" --admin-token "$TOKEN" --scenario purchase \
    --sale "$name-$round" --stock 100000000 --hot-users 0 --connections "$CONNS" \
    --duration "$DURATION" --out "$work/runs" --name "$name-$round" --quiet "$@" >/dev/null || true
  cpu_snap "$work/cpu1"
  local run=$work/runs/$name-$round.json n
  n=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["summary"]["by_status"].get("200", 0))' "$run")
  python3 - "$run" "$name" "$round" "$(cpu_split "$work/cpu0" "$work/cpu1" "$n")" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
ok = s["rps_by_status"].get("200", 0.0)
lat = s["latency_ms"]
line = f"round {sys.argv[3]} {sys.argv[2]} orders/s {ok:.0f} p50_ms {lat['p50']:.2f} p99_ms {lat['p99']:.2f} other {s['completed'] - s['by_status'].get('200', 0)}"
if sys.argv[3] != "audit":
    line += " " + sys.argv[4]
else:
    audit = json.load(open(sys.argv[1])).get("audit") or []
    failed = [c["name"] for c in audit if c["verdict"] == "FAIL"]
    line += " audit " + ("FAIL:" + ",".join(failed) if failed else "PASS")
print(line)
PY
}

ceiling() { # name, round, extra flags...
  local name=$1 round=$2 c
  shift 2
  cpu_snap "$work/cpu0"
  "$ceiling_bin" --brokers "$kafka" --topic "bench.ceiling" --duration-s "$secs" \
    --in-flight "$IN_FLIGHT" "$@" >"$work/ceiling.out"
  cpu_snap "$work/cpu1"
  c=$(tail -n1 "$work/ceiling.out")
  python3 - "$c" "$name" "$round" "$(cpu_split "$work/cpu0" "$work/cpu1" \
    "$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["delivered"])' "$c")")" <<'PY'
import json, sys
c = json.loads(sys.argv[1])
line = f"round {sys.argv[3]} {sys.argv[2]} orders/s {c['msgs_per_s']:.0f} p50_ms {c['p50_us']/1000:.2f} p99_ms {c['p99_us']/1000:.2f} other {c['failed']} {sys.argv[4]}"
if c.get("consume"):
    line += f" consumed_per_s {c['consumed_per_s']:.0f} caught_up {str(c['caught_up']).lower()}"
print(line)
PY
}

results=$work/results
secs=${DURATION%s}
for round in $(seq "$ROUNDS"); do
  ceiling ceiling "$round" | tee -a "$results"
  ceiling ceiling-read "$round" --consume | tee -a "$results"
  purchase kafka "$kafka_addr" "$round" --no-audit | tee -a "$results"
  kill -STOP "$settler_pid"
  purchase alone "$kafka_addr" "$round" --no-audit | tee -a "$results"
  kill -CONT "$settler_pid"
  sleep "$CATCHUP"
  purchase journal "$journal_addr" "$round" --no-audit | tee -a "$results"
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
purchase kafka "$CLUSTER_ADDR" audit --kafka "$kafka" --kafka-topic bench.audit \
  | tee -a "$work/audits"
purchase journal "$journal_addr" audit --journal "$work/journal/data" | tee -a "$work/audits"
kill -CONT "$settler_pid"

python3 - "$results" <<'PY' | tee -a "$log"
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[2], []).append((float(f[4]), float(f[6]), float(f[8])))
med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in rows.items()}
for k, (ops, p50, p99) in med.items():
    print(f"median {k:12s} {ops:9.0f} orders/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  ({len(rows[k])} rounds)")
# CPU microseconds per acknowledged order (event, for the ceilings), by
# process, medians over the rounds: `node` is the Kafka node, `journal`
# the embedded one, `load` the load generator (seckill-bench, or
# kafka-ceiling's own producer and reader).
cpu = {}
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) > 12 and f[11] == "cpu_us_per_order":
        for kv in f[12].split(","):
            name, us = kv.split("=")
            cpu.setdefault(f[2], {}).setdefault(name, []).append(float(us))
for k, split in cpu.items():
    print(f"cpu/order {k:12s} " + "  ".join(f"{n} {statistics.median(v):5.1f}" for n, v in split.items()) + " us")
if "kafka" in med and "ceiling" in med:
    print(f"kafka node, settler consuming / broker ceiling: {med['kafka'][0] / med['ceiling'][0]:.2f} (target >= 0.70)")
if "kafka" in med and "ceiling-read" in med:
    print(f"kafka node, settler consuming / broker ceiling with a reader: {med['kafka'][0] / med['ceiling-read'][0]:.2f} (target >= 0.70)")
if "alone" in med and "ceiling" in med:
    print(f"kafka node, settler paused / broker ceiling: {med['alone'][0] / med['ceiling'][0]:.2f} (target >= 0.70)")
if "kafka" in med and "journal" in med:
    print(f"kafka node / embedded journal node: {med['kafka'][0] / med['journal'][0]:.2f}")
PY
cat "$results" "$work/audits" >>"$log"
if grep -q "audit FAIL" "$work/audits"; then
  echo "the audit of a node run failed: see $log" >&2
  exit 1
fi
