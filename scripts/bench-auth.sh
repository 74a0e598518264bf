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
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64}
USERS=${USERS:-100000}
TOKEN=bench-token

cargo build --release -q -p seckill -p bench
NODE_BIN=./target/release/seckill
BENCH_BIN=./target/release/seckill-bench
source scripts/lib/cluster.sh
work=$(mktemp -d)
trap 'cluster_stop; rm -rf "$work"' EXIT

key=$(head -c 32 /dev/urandom | base64 | tr -d '=+/\n')
cluster_node "$work" off
off=$CLUSTER_ADDR
export SECKILL_BUYER_KEYS=$key
cluster_node "$work" on
unset SECKILL_BUYER_KEYS
on=$CLUSTER_ADDR

# One sold-out run against a node: prints its answers/s (every answer is a
# 410 once the harness has bought the sale out).
run() { # name, target, node, extra flags...
  local name=$1 target=$2 node=$3
  shift 3
  "$BENCH_BIN" run --target "$target" --admin-token "$TOKEN" --scenario soldout \
    --connections "$CONNS" --duration "$DURATION" --users "$USERS" --sale "$name" \
    --journal "$work/$node/data" --out "$work/runs" --name "$name" --quiet "$@" >/dev/null
  python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["summary"]["throughput_rps"]))' \
    "$work/runs/$name.json"
}

off_rps=()
on_rps=()
for r in $(seq "$ROUNDS"); do
  # Alternate which node goes first, so that drift in the machine's load
  # does not favour one side.
  if ((r % 2)); then
    off_rps+=("$(run "off-$r" "$off" off)")
    on_rps+=("$(run "on-$r" "$on" on --buyer-key "$key")")
  else
    on_rps+=("$(run "on-$r" "$on" on --buyer-key "$key")")
    off_rps+=("$(run "off-$r" "$off" off)")
  fi
  echo "round $r: keys off ${off_rps[-1]} answers/s, keys on ${on_rps[-1]} answers/s"
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
m_off=$(median "${off_rps[@]}")
m_on=$(median "${on_rps[@]}")
summary=$(printf 'bench-auth: sold-out answers/s, median of %s rounds (%s, %s connections, %s node core(s)): keys off %s, keys on %s, on/off %s' \
  "$ROUNDS" "$DURATION" "$CONNS" "${NODE_CORES:-1}" "$m_off" "$m_on" \
  "$(awk -v a="$m_on" -v b="$m_off" 'BEGIN {printf "%.2f", a / b}')")
echo "$summary"
if [ -n "${OUT:-}" ]; then echo "$summary" >>"$OUT"; fi
