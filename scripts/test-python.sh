#!/usr/bin/env bash
# Runs the Python client's tests (client/python) against a real credit-server.
# Installs the pinned requirements into a cached venv; the tests start the
# server themselves (CREDIT_SERVER_BIN, default target/debug/credit-server).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CREDIT_CACHE_DIR:-$HOME/.cache/credit-ledger}"
VENV="$CACHE/venv"
REQUIREMENTS="$ROOT/client/python/requirements.txt"
export CREDIT_SERVER_BIN="${CREDIT_SERVER_BIN:-$ROOT/target/debug/credit-server}"

if [[ ! -x "$CREDIT_SERVER_BIN" ]]; then
  echo "== building credit-server ($CREDIT_SERVER_BIN not found)"
  (cd "$ROOT" && cargo build -p credit-server)
fi

# Reinstall only when the pins (or the interpreter) change.
want="$(cat "$REQUIREMENTS" <(python3 --version) | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$VENV/.requirements-sha256" 2>/dev/null || true)" != "$want" ]]; then
  echo "== installing client/python/requirements.txt into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  echo "$want" > "$VENV/.requirements-sha256"
fi

cd "$ROOT/client/python"
"$VENV/bin/python" generate_stubs.py > /dev/null
exec "$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
