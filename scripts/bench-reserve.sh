#!/usr/bin/env bash
# Redis time per order in reserve.lua, this build against another binary in
# the same run: two redis-servers, one leased cluster node on each (this
# tree's release build, and BASELINE_BIN), the sale-phase crowd
# (bench/wrk/purchase.lua) on each in alternating rounds. After each round,
# from INFO commandstats of that node's Redis: the EVALSHA time and calls
# of the round (reserve.lua, plus the few lease calls), the orders sold,
# and so the script time per order and the orders per call.
#
# Settings (env): BASELINE_BIN (required) ROUNDS=3 DURATION=5s CONNS=256
#                 NODE_CORES=1 OUT=<file to append the summary to>
#                 NODE_BIN=<binary> (default: this tree's release build)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/cluster.sh

: "${BASELINE_BIN:?set BASELINE_BIN to the seckill binary to compare with}"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-256}
TOKEN=bench-token
export NODE_CORES=${NODE_CORES:-1}

apt_install wrk wrk
bash scripts/redis.sh
cluster_build_node
cluster_workdir
work=$CLUSTER_WORK

declare -A addr port
for which in this baseline; do
  port[$which]=$(cluster_free_port)
  CLUSTER_PIDS+=("$(bash scripts/redis.sh start "${port[$which]}" "$work/redis-$which")")
  bin=$NODE_BIN
  [ "$which" = baseline ] && bin=$BASELINE_BIN
  NODE_BIN=$bin cluster_node "$work" "$which" --redis "redis://127.0.0.1:${port[$which]}" --node-id 1
  addr[$which]=$CLUSTER_ADDR
done

evalsha() { # port: "usec calls" of EVALSHA so far
  redis-cli -p "$1" info commandstats | tr -d '\r' |
    awk -F'[:=,]' '/^cmdstat_evalsha:/ {print $5, $3}'
}

results=$work/results
for round in $(seq "$ROUNDS"); do
  for which in this baseline; do
    a=${addr[$which]} p=${port[$which]} sale="r$round"
    cluster_admin "$a" PUT "/admin/sales/$sale" '{"stock":100000000,"per_user_limit":1}' >/dev/null
    sleep 0.3
    read -r usec0 calls0 <<<"$(evalsha "$p")"
    sold0=$(redis-cli -p "$p" get "sk:{$sale}:sold")
    SALE=$sale wrk -t1 -c"$CONNS" -d"$DURATION" -s bench/wrk/purchase.lua "$a" >/dev/null
    sleep 0.5
    read -r usec1 calls1 <<<"$(evalsha "$p")"
    sold1=$(redis-cli -p "$p" get "sk:{$sale}:sold")
    echo "$which $((sold1 - ${sold0:-0})) $((usec1 - usec0)) $((calls1 - calls0))"
  done | tee -a "$results"
done

summary=$(python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    which, orders, usec, calls = line.split()
    orders, usec, calls = int(orders), int(usec), int(calls)
    rows.setdefault(which, []).append((orders, usec / max(orders, 1), orders / max(calls, 1), usec / max(calls, 1)))
for which, rs in rows.items():
    med = lambda i: statistics.median(r[i] for r in rs)
    print(f"{which:8s} orders/round {med(0):9.0f}  EVALSHA µs per order {med(1):6.2f} "
          f"(rounds {' '.join(f'{r[1]:.2f}' for r in rs)})  orders per call {med(2):6.1f}  µs per call {med(3):7.1f}")
if "this" in rows and "baseline" in rows:
    per = lambda w: statistics.median(r[1] for r in rows[w])
    print(f"this / baseline, µs per order: {per('this') / per('baseline'):.2f}")
PY
)
echo "$summary"
if [ -n "${OUT:-}" ]; then
  {
    echo "# scripts/bench-reserve.sh $(date -u +%FT%TZ) ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS NODE_CORES=$NODE_CORES BASELINE_BIN=$BASELINE_BIN (commit $(git rev-parse --short HEAD))"
    echo "$summary"
    sed 's/^/round /' "$results"
  } >>"$OUT"
fi
