#!/usr/bin/env bash
# Checks a running node against its own OpenAPI document (docs/openapi.yaml,
# served at GET /openapi.json) with schemathesis: a few hundred generated
# requests, fixed seed, one worker, so a run is the same every time.
# Checked on every answer: no 5xx other than the documented 503s, the
# status is one the spec lists for that path, the content type and the
# headers (Retry-After, Idempotent-Replayed) are the documented ones, and
# the body matches its schema; requests the schema forbids are refused
# (4xx), and a method a path does not serve is 405 with a true Allow.
#
#   scripts/schemathesis.sh            # builds the node (debug) and runs
#   NODE_BIN=path/to/seckill scripts/schemathesis.sh
#   MAX_EXAMPLES=100 SEED=7 scripts/schemathesis.sh
#
# schemathesis comes from PyPI, pinned, into a venv under ~/.cache/seckill
# made on the first run (needs python3 with venv and pip). The node runs on
# the embedded default with the demo sale, on a free loopback port, in a
# temp dir, and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=4.32.5
VENV=${SCHEMATHESIS_VENV:-$HOME/.cache/seckill/schemathesis-$ST_VERSION}
SEED=${SEED:-20261202}
MAX_EXAMPLES=${MAX_EXAMPLES:-40}
TOKEN=schemathesis-admin-token

if [ ! -x "$VENV/bin/st" ]; then
  echo "installing schemathesis $ST_VERSION into $VENV" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi

if [ -z "${NODE_BIN:-}" ]; then
  cargo build --quiet -p seckill --bin seckill
  NODE_BIN=${CARGO_TARGET_DIR:-target}/debug/seckill
fi

source scripts/lib/cluster.sh
work=$(mktemp -d)
trap 'cluster_stop; rm -rf "$work"' EXIT
cluster_node "$work" node --demo
addr=$CLUSTER_ADDR

# The header authorises the admin calls; the public ones ignore it.
# The HOME of the run is the temp dir: schemathesis keeps no state between
# runs (no example database), so the seed alone decides the cases.
status=0
(cd "$work" && "$VENV/bin/st" run "$addr/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,unsupported_method,allow_header_conformance \
  --phases examples,coverage,fuzzing,stateful \
  --seed "$SEED" --max-examples "$MAX_EXAMPLES" --workers 1 \
  --generation-database none --suppress-health-check all \
  --request-timeout 10 --no-color \
  -H "Authorization: Bearer $TOKEN") || status=$?
if [ "$status" -ne 0 ]; then
  echo "schemathesis found answers that break docs/openapi.yaml (node log: last lines)" >&2
  tail -n 20 "$work/node/node.log" >&2
fi
exit "$status"
