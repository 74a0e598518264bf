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
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-1}
NODE_CORES=${NODE_CORES:-1}
DRIVER=${DRIVER:-legacy}
SCENARIOS=${SCENARIOS:-healthz soldout purchase}
TOKEN=bench-token

apt_install wrk wrk
cargo build --release -q -p seckill

NODE_BIN=./target/release/seckill
source scripts/lib/cluster.sh
data=$(mktemp -d)
trap 'cluster_stop; rm -rf "$data"' EXIT
cluster_node "$data" node --driver "$DRIVER"
addr=$CLUSTER_ADDR

admin() { curl -sf -X "$1" "$addr$2" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' ${3:+-d "$3"} >/dev/null; }
admin PUT /admin/sales/soldout '{"stock":1,"per_user_limit":1}'
curl -sf -X POST "$addr/sales/soldout/purchase" -d '{"user_id":"first"}' >/dev/null

run() { # name, wrk args...
  local name=$1; shift
  local rps
  rps=$(wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DURATION" "$@" | awk '/Requests\/sec/ {print $2}')
  echo "$name $rps"
}

results=$(mktemp)
for round in $(seq "$ROUNDS"); do
  for scenario in $SCENARIOS; do
    case $scenario in
      healthz) run healthz "$addr/healthz" ;;
      soldout) SALE=soldout run soldout -s bench/wrk/static.lua "$addr" ;;
      purchase)
        admin PUT "/admin/sales/stock$round" '{"stock":100000000,"per_user_limit":1}'
        SALE="stock$round" run purchase -s bench/wrk/purchase.lua "$addr" ;;
      *) echo "unknown scenario $scenario"; exit 2 ;;
    esac
  done | tee -a "$results"
done

summary=$(python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rps = line.split()
    rows.setdefault(name, []).append(float(rps))
med = {k: statistics.median(v) for k, v in rows.items()}
for k in ("healthz", "soldout", "purchase"):
    if k in med:
        print(f"median {k:9s} {med[k]:12.0f} req/s  rounds: {' '.join(f'{x:.0f}' for x in rows[k])}")
for k in ("soldout", "purchase"):
    if k in med and "healthz" in med:
        print(f"ratio {k}/healthz {med[k] / med['healthz']:.3f}")
PY
)
echo "$summary"
echo "(driver=$DRIVER node_cores=$NODE_CORES wrk_threads=$WRK_THREADS conns=$CONNS duration=$DURATION rounds=$ROUNDS)"
if [ -n "${OUT:-}" ]; then
  { echo "# scripts/bench-wrk.sh driver=$DRIVER node_cores=$NODE_CORES wrk_threads=$WRK_THREADS conns=$CONNS duration=$DURATION rounds=$ROUNDS"; cat "$results"; echo "$summary"; } >>"$OUT"
fi
rm -f "$results"
