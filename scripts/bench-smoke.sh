#!/usr/bin/env bash
# A few-second smoke of the load tool: builds the debug binaries, runs
# spend-hot and mixed (4 clients, 2 s each) and reserve-capture (Reserve +
# Capture pairs on one user, service only, 2 s) and spend-lots (spends on
# one user with five lots, service only, 2 s) against a server
# credit-bench starts on SQLite, and on PostgreSQL too when
# CREDIT_TEST_POSTGRES_URL is set. Fails on any failed call or ledger
# invariant violation (for reserve-capture: any hold left uncaptured).
# Real measurements need a release build: see docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --locked -p credit-server -p integration-tests --bin credit-server --bin credit-bench

bench="$target_dir/debug/credit-bench"
export CREDIT_SERVER_BIN="$target_dir/debug/credit-server"
smoke=(--scenario spend-hot,mixed,reserve-capture,spend-lots,feed --watchers 2 --clients 4 --connections 2 --duration 2s --warmup 0s
       --users 50 --no-progress --fail-on-errors)

echo "== credit-bench smoke: sqlite"
"$bench" --database sqlite "${smoke[@]}"

if [[ -n "${CREDIT_TEST_POSTGRES_URL:-}" ]]; then
  echo "== credit-bench smoke: postgres"
  "$bench" --database postgres --database-url "$CREDIT_TEST_POSTGRES_URL" "${smoke[@]}"
fi
echo "== credit-bench smoke passed"
