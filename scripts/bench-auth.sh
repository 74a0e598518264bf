#!/usr/bin/env bash
# The cost of buyer-token verification on the sold-out path, in one run:
# two embedded release nodes on loopback, one with `buyer_keys` and one
# without, and the same sold-out crowd from seckill-bench against each in
# alternating rounds (the keyed node's buyers carry tokens minted with
# --buyer-key). Prints answers/s per round and node, the medians, and the
# ratio keys on / keys off (the target is >= 0.9).
#
# Settings (env): ROUNDS=3 DURATION=5s CONNS=64 NODE_CORES=1 USERS=100000
#                 OUT=<file to append the summary to>
#                 CARGO_TARGET_DIR (where the release build goes)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/cluster.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
USERS=${USERS:-100000}
TOKEN=bench-token

cluster_build
cluster_workdir
work=$CLUSTER_WORK

key=$(head -c 32 /dev/urandom | base64 | tr -d '=+/\n')
cluster_node "$work" off
off=$CLUSTER_ADDR
export SECKILL_BUYER_KEYS=$key
cluster_node "$work" on
unset SECKILL_BUYER_KEYS
on=$CLUSTER_ADDR

# One sold-out run against a node (every answer is a 410 once the harness
# has bought the sale out); its record is runs/NAME.json.
runs=()
run() { # label, round, target, node, extra flags...
  local label=$1 round=$2 target=$3 node=$4 name=$1-$2
  shift 4
  "$BENCH_BIN" run --target "$target" --admin-token "$TOKEN" --scenario soldout \
    --connections "$CONNS" --duration "$DURATION" --users "$USERS" --sale "$name" \
    --journal "$work/$node/data" --out "$work/runs" --name "$name" --quiet "$@" >/dev/null
  runs+=("$label=$work/runs/$name.json")
  echo "round $round: keys $label done"
}

for r in $(seq "$ROUNDS"); do
  # Alternate which node goes first, so that drift in the machine's load
  # does not favour one side.
  if ((r % 2)); then
    run off "$r" "$off" off
    run on "$r" "$on" on --buyer-key "$key"
  else
    run on "$r" "$on" on --buyer-key "$key"
    run off "$r" "$off" off
  fi
done

summary=$(cluster_summarize "${runs[@]}" --metric throughput_rps --ratio on/off:throughput_rps)
echo "bench-auth: sold-out answers/s over $ROUNDS rounds ($DURATION, $CONNS connections, ${NODE_CORES:-1} node core(s)):"
echo "$summary"
if [ -n "${OUT:-}" ]; then
  { echo "# scripts/bench-auth.sh ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS NODE_CORES=${NODE_CORES:-1}"; echo "$summary"; } >>"$OUT"
fi
