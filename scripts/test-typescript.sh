#!/usr/bin/env bash
# Builds and tests the TypeScript client (client/typescript) against real
# credit-servers (CREDIT_SERVER_BIN, default target/debug/credit-server):
#   1. dependencies: `npm ci` into $CREDIT_CACHE_DIR/npm/typescript-<hash of
#      the dependencies, package-lock.json and the node version>, linked as
#      node_modules, so a fresh clone reinstalls only when they change (a real node_modules
#      directory from a developer's own `npm install` is kept and used);
#   2. Debian's chromium for the browser test, installed when missing;
#   3. build: buf generate (from ../../proto, local protoc-gen-es) + tsc
#      --strict to dist/esm and dist/cjs; the examples compiled to .build/;
#   4. node --test test/*.test.mjs: unit, examples' strict compile (and the
#      example that must not compile), every RPC, keys and mutual TLS,
#      npm pack + install into an empty project, gRPC-Web from Chromium.
# Extra arguments go to `node --test`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLIENT="$ROOT/client/typescript"
CACHE="${CREDIT_CACHE_DIR:-$HOME/.cache/credit-ledger}"
export CREDIT_SERVER_BIN="${CREDIT_SERVER_BIN:-$ROOT/target/debug/credit-server}"

started=$SECONDS
step() { printf '== [%3ss] %s\n' "$((SECONDS - started))" "$*"; }

if [[ ! -x "$CREDIT_SERVER_BIN" ]]; then
  step "building credit-server ($CREDIT_SERVER_BIN not found)"
  (cd "$ROOT" && cargo build -p credit-server)
fi

if ! command -v chromium > /dev/null; then
  step "installing Debian's chromium (for the gRPC-Web browser test)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null
fi

cd "$CLIENT"
# Reinstall only when the dependencies, the lock or node change.
deps_json="$(node -p 'const p = require("./package.json"); JSON.stringify([p.dependencies, p.devDependencies])')"
lock_hash="$( (echo "$deps_json"; cat package-lock.json; node --version) | sha256sum | cut -c1-16)"
if [[ -d node_modules && ! -L node_modules ]]; then
  # A developer's own install: refresh it in place when the lock changed.
  if [[ "$(cat node_modules/.lock-sha256 2> /dev/null || true)" != "$lock_hash" ]]; then
    step "npm ci in client/typescript"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$lock_hash" > node_modules/.lock-sha256
  fi
else
  deps="$CACHE/npm/typescript-$lock_hash"
  if [[ ! -f "$deps/.complete" ]]; then
    step "npm ci into $deps"
    rm -rf "$deps" "$deps.tmp"
    mkdir -p "$deps.tmp"
    cp package.json package-lock.json "$deps.tmp/"
    (cd "$deps.tmp" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error)
    touch "$deps.tmp/.complete"
    mv "$deps.tmp" "$deps"
  fi
  ln -sfn "$deps/node_modules" node_modules
fi

step "build (buf generate + tsc --strict -> dist/esm, dist/cjs)"
node scripts/build.mjs
step "compile the examples (tsc --strict -> .build/examples)"
rm -rf .build/examples
node node_modules/typescript/bin/tsc -p tsconfig.examples.json

step "tests (server: $CREDIT_SERVER_BIN)"
status=0
node --test --test-timeout=180000 "$@" test/*.test.mjs || status=$?
step "done (exit $status)"
exit "$status"
