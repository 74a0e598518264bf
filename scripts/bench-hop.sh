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
# Settings (env): BINS (default target/release/seckill) ROUNDS=3 DURATION=5s
#                 CONNS=64 NODE_CORES=1 PORT=6398
# Prints one line per run and the medians per binary; on a shared machine
# compare the binaries by ratio, not absolutes.
set -euo pipefail
cd "$(dirname "$0")/.."

BINS=${BINS:-target/release/seckill}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
NODE_CORES=${NODE_CORES:-1}
PORT=${PORT:-6398}
TOKEN=bench-token
TICKS=$(getconf CLK_TCK)

bash scripts/redis.sh
work=$(mktemp -d)
redis_pid=$(bash scripts/redis.sh start "$PORT" "$work/redis")
node_pid=""
cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
  kill "$redis_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ {n += $2} END {print n + 0}'
}

results="$work/results"
for round in $(seq "$ROUNDS"); do
  for bin in $BINS; do
    out="$work/node.out"
    : >"$out"
    "$bin" --listen 127.0.0.1:0 --data-dir "$work/data-$RANDOM" --admin-token "$TOKEN" \
      --cores "$NODE_CORES" --redis "redis://127.0.0.1:$PORT" --node-id 1 \
      >"$out" 2>"$work/node.log" &
    node_pid=$!
    for _ in $(seq 100); do grep -q 'listening on' "$out" && break; sleep 0.1; done
    addr=$(grep -o 'http://[0-9.:]*' "$out" | head -n1)
    [ -n "$addr" ] || { echo "node did not start"; cat "$work/node.log"; exit 1; }
    sale="h$round-$RANDOM"
    curl -sf -X PUT "$addr/admin/sales/$sale" -H "Authorization: Bearer $TOKEN" \
      -H 'Content-Type: application/json' -d '{"stock":100000000,"per_user_limit":1}' >/dev/null
    sleep 0.5
    t0=$(cpu_ticks "$node_pid"); s0=$(switches "$node_pid")
    rps=$(SALE="$sale" wrk -t1 -c"$CONNS" -d"$DURATION" -s bench/wrk/purchase.lua "$addr" |
      awk '/Requests\/sec/ {print $2}')
    t1=$(cpu_ticks "$node_pid"); s1=$(switches "$node_pid")
    sold=$(curl -s "$addr/sales/$sale" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sold"])')
    kill "$node_pid"; wait "$node_pid" 2>/dev/null || true; node_pid=""
    echo "$bin $sold $((t1 - t0)) $((s1 - s0)) $rps ${DURATION%s}" | tee -a "$results"
  done
done

python3 - "$results" "$TICKS" <<'PY'
import statistics, sys
rows, ticks = {}, int(sys.argv[2])
for line in open(sys.argv[1]):
    b, sold, cpu, sw, rps, secs = line.split()
    sold = max(int(sold), 1)
    rows.setdefault(b, []).append((int(cpu) / ticks * 1e6 / sold, int(sw) / sold, sold / float(secs)))
med = {b: [statistics.median(r[i] for r in rs) for i in range(3)] for b, rs in rows.items()}
for b, (cpu, sw, ops) in med.items():
    print(f"{b}: node CPU {cpu:.1f} us/order, {sw:.2f} context switches/order, {ops:.0f} orders/s (medians of {len(rows[b])})")
bins = list(med)
for b in bins[1:]:
    print(f"ratio {b} / {bins[0]}: CPU/order {med[b][0] / med[bins[0]][0]:.2f}, "
          f"switches/order {med[b][1] / med[bins[0]][1]:.2f}, orders/s {med[b][2] / med[bins[0]][2]:.2f}")
PY
