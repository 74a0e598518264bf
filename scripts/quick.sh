#!/usr/bin/env bash
# The fast subset of scripts/test.sh, for the edit-compile-test loop and
# before a commit: formatting, clippy, the doc build, every crate's unit
# tests and the integration tests that run in process — no redis-server,
# no Kafka broker, no node processes. Under 2 minutes on a built tree
# (`scripts/test.sh --quick` runs it).
#
#   scripts/quick.sh
#
# What it leaves to scripts/test.sh: the node tests that start `seckill`
# processes (crash, restart, timeouts), the cluster tests on a real
# redis-server, the Kafka tests on a real broker, the harness tests, the
# loom model checks and schemathesis against a running node.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "module cycles (scripts/module-cycles.sh: no two modules of a crate import each other)"
bash scripts/module-cycles.sh

step "cargo clippy (all targets, -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo doc (-D warnings: a broken intra-doc link fails)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --quiet

step "unit tests (every crate's lib)"
cargo test --workspace --lib

step "in-process integration tests"
# stock: the shards under real threads, the embedded authority against
# its model. queue: the journal (a child
# process killed mid-append), KafkaLog on librdkafka's in-process mock
# cluster. seckill: every endpoint's statuses and bodies through
# Core::handle (tests/api.rs), the parser and body property tests
# (tests/fuzz.rs), the journal-order property test on Core::handle.
cargo test -p stock --test stock --test model
cargo test -p queue --test queue --test kafka_mock
cargo test -p seckill --test api --test fuzz
cargo test -p seckill --test node journal_replay::
