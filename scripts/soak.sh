#!/usr/bin/env bash
# The fault soak: a local cluster under a buyer crowd while its processes
# are killed, paused and restarted on a schedule; then an audit of every
# invariant, from the order log and from the stock authority.
#
#   scripts/soak.sh                  MODE=cluster, DURATION=5m
#   DURATION=60s scripts/soak.sh     the short version (for CI, once green)
#   MODE=embedded scripts/soak.sh    one embedded node, audited on its journal
#
# MODE=cluster: Redis with AOF (appendonly, appendfsync always), a tansu
# broker, NODES=3 nodes `--redis --kafka` on fixed ports, the settler
# (scripts/lib/cluster.sh). Load, for DURATION:
# - the harness's purchase scenario over all nodes (RATE req/s, cold
#   buyers and hot retriers with Idempotency-Keys, `--keys hot`);
# - payers (scripts/lib/soak_clients.py payer): buy with a key, retry it
#   on another node after a 503 or a lost connection, then pay
#   (PAY_SHARE), cancel (CANCEL_SHARE) or leave the order to expire;
# - slow clients (a byte a second; pipelining and never reading) and a
#   fuzz client (mutated and garbage requests).
# Faults, on a schedule from the start (seconds): a second node with node 1's
# id started at 5 (it must refuse to start); SIGKILL and restart on the
# same port of node 1, 2, 3, ... at 10, 10+KILL_EVERY, ...; Redis SIGSTOP
# for 3 s at 15, 75, 135, ...; Redis SIGKILL and restart (AOF) at 25, 115,
# ...; broker SIGKILL and restart at 40, 130, ... (faults.log).
# Then it waits for the sale's payment timeout (PAYMENT_TIMEOUT_S, 20) plus
# the settler's grace (SETTLE_GRACE_MS) and audits:
# - the order topic (seckill-bench's --kafka audit, --audit-after): no
#   oversell, every 200 logged once, per-user limit, one key one order, no
#   200 released by compensation, every order ended, no false sold-out (no
#   410 after units had been unsold on the log's timeline for more than
#   1.5 s before the request);
# - Redis (soak_clients.py redis): no order left reserved, nothing left
#   unlogged, pool + leases + sold == stock with sold == units of reserved
#   and paid orders, every order answered 200 (harness and payers) known
#   and not cancelled unless a payer cancelled it; then, units being back in
#   the pool, a purchase on every node must not be answered 410;
# - the clients' own findings (a retry answered another order, a 5xx other
#   than 503 to garbage, a slow client never closed), a duplicate node id
#   that served, a node's peak RSS over RSS_LIMIT_MB.
# MODE=embedded: one node (journal), SIGKILL + restart at the same times,
# and random pause/resume switches (about every 7 s) and one close at 80%
# of DURATION; audited on the journal and through the node's API.
#
# Prints and keeps a table (faults by kind, requests, 200s, each invariant
# PASS/FAIL with counts, peak node RSS) in $OUT/soak-<mode>-<time>.md with
# the harness's run record beside it; KEEP=1 keeps the work dir (logs).
# Exit status 1 when any check failed, 124 when the run outlived its hard
# bound (SOAK_TIMEOUT_S); interrupted or timed out, it stops every process
# it started (trap).
#
# Settings (env): MODE=cluster|embedded DURATION=5m NODES=3 RATE=300 CONNS=24
#   STOCK=200 PAYMENT_TIMEOUT_S=20 SETTLE_GRACE_MS=15000 KILL_EVERY=20
#   PAYERS=2 PAY_SHARE=0.5 CANCEL_SHARE=0.25 NODE_CORES=1 SEED=1 OUT=<run dir>
#   RSS_LIMIT_MB=256 (a node's peak RSS above it fails the soak)
#   SOAK_TIMEOUT_S=<DURATION + audit wait + 240> (the hard bound, build excluded)
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${MODE:-cluster}
DURATION=${DURATION:-5m}
NODES=${NODES:-3}
RATE=${RATE:-300}
CONNS=${CONNS:-24}
STOCK=${STOCK:-200}
PAYMENT_TIMEOUT_S=${PAYMENT_TIMEOUT_S:-20}
SETTLE_GRACE_MS=${SETTLE_GRACE_MS:-15000}
KILL_EVERY=${KILL_EVERY:-20}
PAYERS=${PAYERS:-2}
PAY_SHARE=${PAY_SHARE:-0.5}
CANCEL_SHARE=${CANCEL_SHARE:-0.25}
SEED=${SEED:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-bench/runs/$(date -u +%F)-$(hostname)}
TOKEN=soak-token
case $MODE in embedded | cluster) ;; *) echo "MODE=$MODE: embedded or cluster" >&2; exit 2 ;; esac
[ "$MODE" = embedded ] && NODES=1

seconds() { # 90, 90s, 5m -> seconds
  case $1 in
    *m) echo $((${1%m} * 60)) ;;
    *s) echo "${1%s}" ;;
    *) echo "$1" ;;
  esac
}
duration_s=$(seconds "$DURATION")

audit_after=$((PAYMENT_TIMEOUT_S + SETTLE_GRACE_MS / 1000 + 10))
# Built first, then the run itself again under a hard bound
# (SOAK_TIMEOUT_S, default the load + the wait for the audit + 4 minutes
# for starts, restarts and the audit): past it, timeout(1) sends SIGTERM
# to the soak's process group (every process it started: none is
# detached), the trap below stops the cluster, and the exit status is 124;
# SIGKILL 60 s later if stuck.
if [ -z "${SOAK_BOUNDED:-}" ]; then
  cargo build --release -q -p seckill -p bench
  export SOAK_BOUNDED=1
  exec timeout --kill-after=60s "${SOAK_TIMEOUT_S:-$((duration_s + audit_after + 240))}s" bash "$0" "$@"
fi
NODE_BIN=$TARGET_DIR/release/seckill
bench_bin=$TARGET_DIR/release/seckill-bench
clients="python3 scripts/lib/soak_clients.py"
if [ -z "${SECKILL_COMMIT:-}" ] && git rev-parse HEAD >/dev/null 2>&1; then
  SECKILL_COMMIT=$(git rev-parse --short=12 HEAD)
  git diff --quiet HEAD -- seckill stock queue Cargo.lock || SECKILL_COMMIT="$SECKILL_COMMIT-dirty"
fi
export SECKILL_COMMIT=${SECKILL_COMMIT:-unknown}

redis_port="" redis_pid="" kafka_port="" kafka_pid=""
work=$(mktemp -d /tmp/seckill-soak.XXXXXX)
source scripts/lib/cluster.sh
bg_pids=()
cleanup() {
  local pid
  for pid in "${bg_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # A Redis paused by the fault schedule must run again to stop.
  [ -z "$redis_pid" ] || kill -CONT "$redis_pid" 2>/dev/null || true
  cluster_stop
  if [ -n "${KEEP:-}" ]; then echo "soak: work dir kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
# Interrupted (Ctrl-C, timeout(1), CI cancelling): exit, so that the EXIT
# trap stops everything this soak started.
trap 'exit 130' INT
trap 'exit 143' TERM
fault() { echo "$(date -u +%s) $*" >>"$work/faults.log"; echo "soak: t=$((SECONDS - t0))s fault: $*"; }

# ---- the cluster ----------------------------------------------------------
redis_start() {
  mkdir -p "$work/redis"
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" \
    --appendonly yes --appendfsync always --save "" --daemonize no \
    --logfile "$work/redis/redis.log" </dev/null >/dev/null 2>&1 &
  redis_pid=$!
  CLUSTER_PIDS+=("$redis_pid")
  for _ in $(seq 200); do
    redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.05
  done
  echo "soak: redis-server did not answer on $redis_port" >&2
  return 1
}
kafka_start() {
  for _ in $(seq 20); do
    if kafka_pid=$(bash scripts/kafka.sh start "$kafka_port" "$work/kafka" 2>>"$work/kafka-restarts.log"); then
      CLUSTER_PIDS+=("$kafka_pid")
      return 0
    fi
    sleep 1
  done
  echo "soak: the broker did not restart on $kafka_port" >&2
  return 1
}

ports=()
for i in $(seq "$NODES"); do ports+=("$(cluster_free_port)"); done
targets=()
for i in $(seq "$NODES"); do targets+=("http://127.0.0.1:${ports[i - 1]}"); done
target=$(IFS=,; echo "${targets[*]}")
if [ "$MODE" = cluster ]; then
  bash scripts/redis.sh
  bash scripts/kafka.sh >/dev/null
  redis_port=$(cluster_free_port)
  kafka_port=$(cluster_free_port)
  redis_start
  kafka_start
  CLUSTER_REDIS=redis://127.0.0.1:$redis_port
  CLUSTER_KAFKA=127.0.0.1:$kafka_port
  for i in $(seq "$NODES"); do
    cluster_node_at "$work" "node$i" "${ports[i - 1]}" --redis "$CLUSTER_REDIS" \
      --kafka "$CLUSTER_KAFKA" --node-id "$i"
  done
  cluster_settler "$work" --grace-ms "$SETTLE_GRACE_MS"
  order_log=(--kafka "$CLUSTER_KAFKA")
else
  cluster_node_at "$work" node1 "${ports[0]}"
  order_log=(--journal "$work/node1/data")
fi

# ---- the load -------------------------------------------------------------
sale=soak-$(date -u +%H%M%S)
name=soak-$MODE-$(date -u +%H%M%S)
mkdir -p "$OUT"
"$bench_bin" run --target "$target" --admin-token "$TOKEN" "${order_log[@]}" \
  --scenario purchase --sale "$sale" --stock "$STOCK" --per-user-limit 1 \
  --payment-timeout-s "$PAYMENT_TIMEOUT_S" --rate "$RATE" --duration "${duration_s}s" \
  --connections "$CONNS" --hot-users 50 --hot-share 0.3 --retry 0.5 --keys hot \
  --timeout-ms 2000 --grace 5s --seed "$SEED" --audit-after "${audit_after}s" \
  --acked-out "$work/harness-acked.txt" --out "$OUT" --name "$name" --quiet \
  >"$work/harness.out" 2>&1 &
harness_pid=$!
bg_pids+=("$harness_pid")
# The clients need the sale: wait until the harness has made it.
for _ in $(seq 100); do
  curl -fs "${targets[0]}/sales/$sale" >/dev/null 2>&1 && break
  sleep 0.2
done
t0=$SECONDS
until_s=$(($(date +%s) + duration_s))
for p in $(seq "$PAYERS"); do
  $clients payer --targets "$target" --sale "$sale" --token "$TOKEN" --until "$until_s" \
    --out "$work" --seed "$p" --pay-share "$PAY_SHARE" --cancel-share "$CANCEL_SHARE" --pause 0.1 \
    2>>"$work/clients.log" &
  bg_pids+=("$!")
done
$clients slow --targets "$target" --sale "$sale" --until "$until_s" --out "$work" 2>>"$work/clients.log" &
bg_pids+=("$!")
$clients fuzz --targets "$target" --sale "$sale" --until "$until_s" --out "$work" --seed "$SEED" --pause 0.05 \
  2>>"$work/clients.log" &
bg_pids+=("$!")

# ---- the faults -----------------------------------------------------------
rss() { # peak RSS sampling of every node (kB)
  local n pid kb
  for n in $(seq "$NODES"); do
    pid=${CLUSTER_NODE_PID[node$n]:-}
    kb=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$kb" ] && echo "node$n $kb" >>"$work/rss.log"
  done
  return 0
}
duplicate_node() { # starts a node with node 1's id; records whether it served
  local port pid served=false
  port=$(cluster_free_port)
  mkdir -p "$work/duplicate"
  "$NODE_BIN" --listen "127.0.0.1:$port" --data-dir "$work/duplicate/data" --admin-token "$TOKEN" \
    --cores 1 --redis "$CLUSTER_REDIS" --kafka "$CLUSTER_KAFKA" --node-id 1 \
    >"$work/duplicate/banner" 2>"$work/duplicate/node.log" &
  pid=$!
  for _ in $(seq 100); do
    grep -q 'listening on' "$work/duplicate/banner" && { served=true; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "{\"started\": 1, \"served\": $served}" >"$work/duplicate.json"
}
RANDOM=$SEED
kills=0 paused_until=0 closed=0
# The next time (s from the start) each fault is due; a fault that takes
# long (a restart) delays the others, it does not skip them.
next_kill=10 next_redis_pause=15 next_redis_restart=25 next_broker_restart=40
next_duplicate=5
while ((SECONDS - t0 < duration_s)); do
  t=$((SECONDS - t0))
  rss
  if ((t >= next_kill)); then
    next_kill=$((next_kill + KILL_EVERY))
    n=$((kills % NODES + 1))
    kills=$((kills + 1))
    fault "node_kill_restart node$n"
    cluster_restart_node "$work" "node$n" || fault "node_restart_failed node$n"
  fi
  if [ "$MODE" = cluster ]; then
    if ((t >= next_duplicate)); then
      # A second live node with node 1's id must refuse to start.
      next_duplicate=$((duration_s + 1))
      fault "duplicate_node_id node1"
      duplicate_node
    fi
    if ((t >= next_redis_pause)); then
      next_redis_pause=$((next_redis_pause + 60))
      fault "redis_pause 3s"
      kill -STOP "$redis_pid"
      sleep 3
      kill -CONT "$redis_pid"
    fi
    if ((t >= next_redis_restart)); then
      next_redis_restart=$((next_redis_restart + 90))
      fault "redis_kill_restart"
      kill -9 "$redis_pid"
      wait "$redis_pid" 2>/dev/null || true
      redis_start || fault "redis_restart_failed"
    fi
    if ((t >= next_broker_restart)); then
      next_broker_restart=$((next_broker_restart + 90))
      fault "broker_kill_restart"
      kill -9 "$kafka_pid"
      wait "$kafka_pid" 2>/dev/null || true
      kafka_start || fault "broker_restart_failed"
    fi
  else
    now=$(date +%s)
    if ((closed == 0 && t >= duration_s * 4 / 5)); then
      fault "switch_close"
      closed=1
      cluster_admin "${targets[0]}" POST "/admin/sales/$sale/close" >/dev/null || true
    elif ((closed == 0 && paused_until > 0 && now >= paused_until)); then
      fault "switch_resume"
      paused_until=0
      cluster_admin "${targets[0]}" POST "/admin/sales/$sale/resume" >/dev/null || true
    elif ((closed == 0 && paused_until == 0 && RANDOM % 7 == 0)); then
      fault "switch_pause"
      paused_until=$((now + 1 + RANDOM % 3))
      cluster_admin "${targets[0]}" POST "/admin/sales/$sale/pause" >/dev/null || true
    fi
  fi
  sleep 1
done
if ((paused_until > 0 && closed == 0)); then
  cluster_admin "${targets[0]}" POST "/admin/sales/$sale/resume" >/dev/null || true
fi
echo "soak: load over after ${duration_s}s; the audit runs ${audit_after}s later (payment timeout + settler's grace)"

# ---- the audit ------------------------------------------------------------
for pid in "${bg_pids[@]}"; do
  [ "$pid" = "$harness_pid" ] && continue
  wait "$pid" 2>/dev/null || true
done
while kill -0 "$harness_pid" 2>/dev/null; do rss; sleep 2; done
wait "$harness_pid" || true
bg_pids=()
cat "$work/harness.out" >"$OUT/$name.harness.txt"
payer_acked=("$work"/payer-acked-*.txt)
payer_cancelled=("$work"/payer-cancelled-*.txt)
if [ "$MODE" = cluster ]; then
  $clients redis --sale "$sale" --redis-port "$redis_port" --out "$work" \
    --acked "$work/harness-acked.txt" "${payer_acked[@]}" --cancelled "${payer_cancelled[@]}" \
    >"$work/authority.out" 2>&1 || true
  # After the audits (it buys): units are back in the pool, every node must sell.
  $clients probe --targets "$target" --sale "$sale" --out "$work" >>"$work/authority.out" 2>&1 || true
else
  $clients orders --targets "$target" --sale "$sale" --token "$TOKEN" --out "$work" \
    --acked "$work/harness-acked.txt" "${payer_acked[@]}" --cancelled "${payer_cancelled[@]}" \
    >"$work/authority.out" 2>&1 || true
fi
status=0
$clients report --sale "$sale" --out "$work" --record "$OUT/$name.json" --rss-limit-mb "${RSS_LIMIT_MB:-256}" \
  --table "$OUT/$name.md" \
  --title "MODE=$MODE NODES=$NODES DURATION=$DURATION RATE=$RATE STOCK=$STOCK PAYMENT_TIMEOUT_S=$PAYMENT_TIMEOUT_S commit $SECKILL_COMMIT" ||
  status=$?
cp "$work/faults.log" "$OUT/$name.faults.log" 2>/dev/null || true
[ -s "$work/authority.out" ] && grep -v '^PASS\|^FAIL' "$work/authority.out" >&2 || true
exit "$status"
