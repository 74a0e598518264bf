#!/usr/bin/env bash
# The operator's dashboard during a bench run, as a screenshot: a cluster
# node (Redis + the tansu broker + the settler) under a wrk purchase crowd
# that sells a sale out, and a second sale refused to a sold-out crowd;
# headless Chromium opens /dashboard, signs in with the admin token and
# captures the page mid-run.
#
# Settings (env): DURATION=30s (the crowd) SHOT_AFTER_S=16 CONNS=32
#                 STOCK=150000 OUT=<run dir> (writes OUT/dashboard-bench.png)
#                 CARGO_TARGET_DIR (where the release build goes)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/cluster.sh

DURATION=${DURATION:-30s}
SHOT_AFTER_S=${SHOT_AFTER_S:-16}
CONNS=${CONNS:-32}
STOCK=${STOCK:-150000}
TOKEN=bench-token
OUT=${OUT:-bench/runs/$(date -u +%F)-$(hostname)}
mkdir -p "$OUT"

apt_install wrk wrk
chromium=$(bash scripts/chromium.sh)
cluster_build
work=$(mktemp -d)
trap 'cluster_stop; rm -rf "$work"' EXIT
cluster_backends "$work"
cluster_node "$work" n1 --redis "$CLUSTER_REDIS" --kafka "$CLUSTER_KAFKA" --node-id 1
addr=$CLUSTER_ADDR
cluster_settler "$work"
cluster_admin "$addr" PUT /admin/sales/big "{\"stock\":$STOCK,\"per_user_limit\":1}" >/dev/null
cluster_admin "$addr" PUT /admin/sales/small '{"stock":10,"per_user_limit":1}' >/dev/null

SALE=big wrk -t1 -c"$CONNS" -d"$DURATION" -s bench/wrk/purchase.lua "$addr" >"$work/wrk-big.out" &
CLUSTER_PIDS+=("$!")
SALE=small wrk -t1 -c8 -d"$DURATION" -s bench/wrk/purchase.lua "$addr" >"$work/wrk-small.out" &
CLUSTER_PIDS+=("$!")

devtools=$(cluster_free_port)
"$chromium" --headless=new --no-sandbox --disable-gpu --user-data-dir="$work/chromium" \
  --remote-debugging-port="$devtools" about:blank >"$work/chromium.log" 2>&1 &
CLUSTER_PIDS+=("$!")
# The page opens 2 s into the run and is captured SHOT_AFTER_S in (its
# charts draw what the page itself has seen).
sleep 2
python3 scripts/lib/cdp_shot.py "$devtools" "$addr/dashboard" "$TOKEN" "$OUT/dashboard-bench.png" \
  "$((SHOT_AFTER_S > 5 ? SHOT_AFTER_S - 4 : 1))"
wait "${CLUSTER_PIDS[-3]}" "${CLUSTER_PIDS[-2]}" 2>/dev/null || true
echo "sold: $(cluster_admin "$addr" GET /sales/big | tr -d '\n')"
