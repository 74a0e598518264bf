#!/usr/bin/env bash
# Kafka for cluster mode and its tests: tansu 0.6.0, a Kafka-API broker in
# one Rust binary, with sqlite storage (topics, messages and committed
# offsets survive a kill -9).
#
#   scripts/kafka.sh                    install tansu if it is missing, into
#                                       $SECKILL_CACHE/tansu (SECKILL_CACHE
#                                       defaults to ~/.cache/seckill);
#                                       idempotent and quiet; prints the
#                                       binary's path
#   scripts/kafka.sh start PORT DIR     also start a broker on 127.0.0.1:PORT
#                                       with its database and log in DIR, in
#                                       the background; waits until it answers
#                                       a metadata request; prints its pid
#   scripts/kafka.sh topic PORT NAME [PARTITIONS]
#                                       create a topic (default 6 partitions;
#                                       topics are not auto-created)
#   scripts/kafka.sh stop PID           stop a broker started by `start`
#   scripts/kafka.sh toolchain          only make sure the C compiler the
#                                       build needs is there (no build)
#
# SECKILL_TANSU=/path/to/tansu uses that binary and installs nothing.
#
# The install builds tansu from crates.io (cargo install, ~15 minutes on two
# cores) into $SECKILL_CACHE/tansu-target, so an interrupted build resumes
# where it stopped; the build directory is removed once the binary is in
# place. It needs the Rust toolchain (edition 2024: Rust >= 1.85) and a C
# compiler (build-essential, installed with apt-get when `cc` is missing);
# no cmake, protoc, clang or OpenSSL headers (its TLS is aws-lc/ring built
# with cc, sqlite is libsql's bundled amalgamation with pre-made bindings).
#
# Tests do not need the `start` form: they start their own broker on a free
# port (seckill_testkit::kafka::Broker) and kill it on drop.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"

TANSU_VERSION="0.6.0"
SECKILL_CACHE="${SECKILL_CACHE:-$HOME/.cache/seckill}"
TANSU="${SECKILL_TANSU:-$SECKILL_CACHE/tansu/bin/tansu}"

need_cc() {
  apt_install cc build-essential pkg-config
  apt_install c++ build-essential pkg-config
}

install() {
  if [ -x "$TANSU" ]; then
    return
  fi
  if [ -n "${SECKILL_TANSU:-}" ]; then
    echo "kafka.sh: SECKILL_TANSU=$SECKILL_TANSU is not an executable file" >&2
    exit 1
  fi
  command -v cargo >/dev/null 2>&1 || {
    echo "kafka.sh: cargo is not on PATH; install the Rust toolchain first" >&2
    exit 1
  }
  need_cc
  echo "kafka.sh: building tansu $TANSU_VERSION (about 15 minutes; resumes if interrupted)" >&2
  CARGO_TARGET_DIR="$SECKILL_CACHE/tansu-target" \
    cargo install tansu --version "$TANSU_VERSION" --locked \
    --features dynostore,libsql --root "$SECKILL_CACHE/tansu" >&2
  [ -x "$TANSU" ] || {
    echo "kafka.sh: $TANSU still missing after cargo install" >&2
    exit 1
  }
  rm -rf "$SECKILL_CACHE/tansu-target"
}

# Whether something accepts TCP connections on 127.0.0.1:$1.
listening() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
  local port="${1:?usage: scripts/kafka.sh start PORT DIR}"
  local dir="${2:?usage: scripts/kafka.sh start PORT DIR}"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if listening "$port"; then
    echo "kafka.sh: port $port is already in use" >&2
    exit 1
  fi
  # tansu 0.6 resolves the sqlite path against its working directory (even
  # a path with a leading slash), so it runs in DIR. The variables it would
  # otherwise read from the environment are cleared.
  (
    cd "$dir"
    exec env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT -u RUST_LOG \
      "$TANSU" broker --cluster-id seckill \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "sqlite://tansu.db" \
      </dev/null >>"$dir/tansu.log" 2>&1
  ) &
  local pid=$!
  for _ in $(seq 1 400); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "kafka.sh: tansu exited; see $dir/tansu.log" >&2
      tail -n 5 "$dir/tansu.log" >&2 || true
      exit 1
    fi
    # A metadata request (`topic list`) answers once the broker is ready.
    if listening "$port" &&
      "$TANSU" topic list --broker "tcp://127.0.0.1:$port" >/dev/null 2>&1; then
      echo "$pid"
      return
    fi
    sleep 0.05
  done
  echo "kafka.sh: tansu on port $port did not answer within 20 s; see $dir/tansu.log" >&2
  kill -9 "$pid" 2>/dev/null || true
  exit 1
}

topic() {
  local port="${1:?usage: scripts/kafka.sh topic PORT NAME [PARTITIONS]}"
  local name="${2:?usage: scripts/kafka.sh topic PORT NAME [PARTITIONS]}"
  local partitions="${3:-6}"
  if "$TANSU" topic list --broker "tcp://127.0.0.1:$port" |
    grep -q "\"name\":\"$name\""; then
    return
  fi
  "$TANSU" topic create --broker "tcp://127.0.0.1:$port" \
    --partitions "$partitions" "$name" >/dev/null
}

stop() {
  local pid="${1:?usage: scripts/kafka.sh stop PID}"
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
}

if [ "${1:-}" = toolchain ]; then
  need_cc
  exit 0
fi
install
case "${1:-}" in
  "") echo "$TANSU" ;;
  start) shift; start "$@" ;;
  topic) shift; topic "$@" ;;
  stop) shift; stop "$@" ;;
  *) echo "usage: scripts/kafka.sh [start PORT DIR | topic PORT NAME [PARTITIONS] | stop PID | toolchain]" >&2; exit 2 ;;
esac
