#!/usr/bin/env bash
# The full test suite, as CI runs it (.ci/run calls this script):
#   1. formatting and clippy (warnings are errors),
#   2. every crate's unit and integration tests (the node tests start real
#      `seckill` processes on loopback, kill them and restart them; the
#      property tests: the HTTP parser and JSON bodies, `seckill --test
#      fuzz`, and the embedded authority against its model, `stock --test
#      model`),
#   3. the fault soak, 60 s in each mode (scripts/soak.sh: kill -9,
#      Redis and broker restarts, hostile clients; every invariant audited),
#   4. loom model checks of the stock shards' stealing and sold-out flag.
# Embedded mode needs nothing installed beyond the Rust toolchain; the
# cluster tests need redis-server, which scripts/redis.sh installs (apt-get)
# when missing, the dashboard's browser test Debian's chromium and the
# alert rules' check promtool (scripts/chromium.sh, scripts/prometheus.sh,
# apt-get when missing), and the Kafka tests a Kafka-API broker (tansu), which
# scripts/kafka.sh builds once (~15 minutes) into ~/.cache/seckill and
# reuses. Tests start their own servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

# The fast subset (fmt, clippy, docs, unit and in-process tests; no Redis,
# no Kafka): scripts/quick.sh.
if [ "${1:-}" = "--quick" ]; then exec bash scripts/quick.sh; fi

step() { printf '\n==> %s\n' "$*"; }

step "redis-server (for the cluster tests)"
bash scripts/redis.sh
redis-server --version

# The first build of tansu takes ~15 minutes: it runs in the background
# while the workspace is checked and built, and is waited for before the
# tests (a cached binary returns at once).
step "tansu (the Kafka broker of the Kafka tests), in the background"
# The C compiler first, in the foreground: the workspace build needs it too.
bash scripts/kafka.sh toolchain
tansu_log=$(mktemp)
bash scripts/kafka.sh >"$tansu_log" 2>&1 &
tansu_pid=$!

# apt-get installs overlap with the broker's build.
step "chromium and promtool (the dashboard's browser test, the alert rules)"
bash scripts/chromium.sh
bash scripts/prometheus.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "module cycles (scripts/module-cycles.sh: no two modules of a crate import each other)"
bash scripts/module-cycles.sh

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc (-D warnings: a broken intra-doc link fails)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace

step "cargo test --no-run (build the tests)"
cargo test --workspace --no-run

step "waiting for tansu"
if ! wait "$tansu_pid"; then
  echo "scripts/kafka.sh failed:" >&2
  tail -n 30 "$tansu_log" >&2
  exit 1
fi
tail -n 3 "$tansu_log"
rm -f "$tansu_log"

step "cargo test (workspace)"
cargo test --workspace

# The fault soak, short: both modes, 60 s of load each (then the wait
# for the payment timeout and the settler's grace, and the audit: about
# 2 minutes each). Any invariant FAIL, or the soak's own hard bound
# (timeout(1) inside scripts/soak.sh), fails the suite; the tables go to a
# temporary directory, not bench/runs.
step "the fault soak, 60 s: cluster, then embedded (scripts/soak.sh)"
soak_out=$(mktemp -d)
for mode in cluster embedded; do
  if ! MODE=$mode DURATION=60s OUT="$soak_out" bash scripts/soak.sh; then
    echo "the fault soak (MODE=$mode) failed; its table:" >&2
    cat "$soak_out"/soak-"$mode"-*.md >&2 2>/dev/null || true
    exit 1
  fi
done
rm -rf "$soak_out"

step "schemathesis: a running node against docs/openapi.yaml"
bash scripts/schemathesis.sh

step "loom model checks (stock shards)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p stock --release --test loom
