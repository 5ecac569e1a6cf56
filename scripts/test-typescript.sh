#!/usr/bin/env bash
# Runs the Node.js client's tests (client/typescript) against a real
# credit-server. Installs the locked dependencies with `npm ci` (only when
# package-lock.json changed); the tests start the server themselves
# (CREDIT_SERVER_BIN, default target/debug/credit-server).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLIENT="$ROOT/client/typescript"
export CREDIT_SERVER_BIN="${CREDIT_SERVER_BIN:-$ROOT/target/debug/credit-server}"

if [[ ! -x "$CREDIT_SERVER_BIN" ]]; then
  echo "== building credit-server ($CREDIT_SERVER_BIN not found)"
  (cd "$ROOT" && cargo build -p credit-server)
fi

cd "$CLIENT"
want="$( (cat package-lock.json; node --version) | sha256sum | cut -d' ' -f1)"
if [[ "$(cat node_modules/.lock-sha256 2>/dev/null || true)" != "$want" ]]; then
  echo "== npm ci in client/typescript"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$want" > node_modules/.lock-sha256
fi

exec node --test --test-timeout=60000 test/*.test.js "$@"
