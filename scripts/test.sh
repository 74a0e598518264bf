#!/usr/bin/env bash
# The full test suite, as CI runs it (.ci/run calls this script):
#   1. formatting and clippy (warnings are errors),
#   2. every crate's unit and integration tests (the node tests start real
#      `seckill` processes on loopback, kill them and restart them),
#   3. loom model checks of the stock shards' stealing and sold-out flag.
# Embedded mode needs nothing installed beyond the Rust toolchain; the
# cluster tests need redis-server, which scripts/redis.sh installs (apt-get)
# when missing, and the Kafka tests a Kafka-API broker (tansu), which
# scripts/kafka.sh builds once (~15 minutes) into ~/.cache/seckill and
# reuses. Tests start their own servers on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "redis-server (for the cluster tests)"
bash scripts/redis.sh
redis-server --version

step "tansu (the Kafka broker of the Kafka tests)"
bash scripts/kafka.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (workspace)"
cargo test --workspace

step "loom model checks (stock shards)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p stock --release --test loom
