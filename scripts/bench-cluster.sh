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
# Settings (env): ROUNDS=3 DURATION=5s CONNS=64 NODE_CORES=1 PORT=6399
#                 OUT=<run dir> (the summary is appended to OUT/bench-cluster.log)
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
NODE_CORES=${NODE_CORES:-1}
PORT=${PORT:-6399}
TOKEN=bench-token
OUT=${OUT:-bench/runs/$(date -u +%F)-$(hostname)}

bash scripts/redis.sh
apt_install wrk wrk
cargo build --release -q -p seckill

work=$(mktemp -d)
redis_pid=$(bash scripts/redis.sh start "$PORT" "$work/redis")
node_pid=""
cleanup() {
  [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null
  kill "$redis_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

scripts_called() { # evalsha + script|load calls so far
  redis-cli -p "$PORT" info commandstats | tr -d '\r' | awk -F'[=,:]' \
    '/^cmdstat_evalsha:/ || /^cmdstat_script\|load:/ {n += $3} END {print n + 0}'
}

start_node() { # mode
  local out="$work/node.out"
  : >"$out"
  ./target/release/seckill --listen 127.0.0.1:0 --data-dir "$work/data-$1-$RANDOM" \
    --admin-token "$TOKEN" --cores "$NODE_CORES" --redis "redis://127.0.0.1:$PORT" \
    --node-id 1 --stock-mode "$1" >"$out" 2>"$work/node.log" &
  node_pid=$!
  for _ in $(seq 100); do grep -q 'listening on' "$out" && break; sleep 0.1; done
  addr=$(grep -o 'http://[0-9.:]*' "$out" | head -n1)
  [ -n "$addr" ] || { echo "node did not start"; cat "$work/node.log"; exit 1; }
}

stop_node() {
  kill "$node_pid"; wait "$node_pid" 2>/dev/null || true; node_pid=""
}

admin() {
  curl -sf -X "$1" "$addr$2" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' ${3:+-d "$3"} >/dev/null
}

results="$work/results"
mkdir -p "$OUT"
echo "# $(date -u +%FT%TZ) ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS NODE_CORES=$NODE_CORES scripts/bench-cluster.sh (commit $(git rev-parse --short HEAD 2>/dev/null))" >>"$OUT/bench-cluster.log"
for round in $(seq "$ROUNDS"); do
  for mode in leased per-request; do
    start_node "$mode"
    sale="s$round-$mode"
    admin PUT "/admin/sales/$sale" '{"stock":100000000,"per_user_limit":1}'
    sleep 0.3
    before=$(scripts_called)
    rps=$(SALE="$sale" wrk -t1 -c"$CONNS" -d"$DURATION" -s bench/wrk/purchase.lua "$addr" | awk '/Requests\/sec/ {print $2}')
    sleep 0.3
    calls=$(( $(scripts_called) - before ))
    sold=$(curl -s "$addr/sales/$sale" | python3 -c 'import json,sys; print(json.load(sys.stdin)["sold"])')
    gone="g$round-$mode"
    admin PUT "/admin/sales/$gone" '{"stock":1,"per_user_limit":1}'
    sleep 0.3
    curl -sf -X POST "$addr/sales/$gone/purchase" -d '{"user_id":"first"}' >/dev/null
    sleep 0.5
    before=$(scripts_called)
    wrk_out=$(SALE="$gone" wrk -t1 -c"$CONNS" -d"$DURATION" -s bench/wrk/static.lua "$addr")
    so_rps=$(echo "$wrk_out" | awk '/Requests\/sec/ {print $2}')
    so_reqs=$(echo "$wrk_out" | awk -F'requests=' '/status-summary/ {split($2,a," "); print a[1]}')
    so_calls=$(( $(scripts_called) - before ))
    stop_node
    echo "$mode $rps $sold $calls $so_rps $so_reqs $so_calls ${DURATION%s}" | tee -a "$results"
  done
done

{
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    mode, rps, sold, calls, so_rps, so_reqs, so_calls, secs = line.split()
    rows.setdefault(mode, []).append((float(rps), int(sold), int(calls), float(so_rps), int(so_reqs), int(so_calls), int(sold) / float(secs)))
med = lambda xs: statistics.median(xs)
for mode, rs in rows.items():
    print(f"{mode:11s} sale phase {med([r[6] for r in rs]):9.0f} orders/s (rounds {' '.join(f'{r[6]:.0f}' for r in rs)}), {med([r[0] for r in rs]):9.0f} req/s; "
          f"script calls per order {med([r[2] / max(r[1], 1) for r in rs]):.3f}; "
          f"sold-out {med([r[3] for r in rs]):9.0f} req/s, script calls per sold-out request {med([r[5] / max(r[4], 1) for r in rs]):.4f}")
if "leased" in rows and "per-request" in rows:
    ratio = lambda i: med([r[i] for r in rows["leased"]]) / med([r[i] for r in rows["per-request"]])
    print(f"ratio leased/per-request: sale phase {ratio(6):.2f}x orders/s ({ratio(0):.2f}x req/s), sold-out phase {ratio(3):.2f}x")
PY
} | tee -a "$OUT/bench-cluster.log"
sed 's/^/round /' "$results" >>"$OUT/bench-cluster.log"
