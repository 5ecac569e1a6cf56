#!/usr/bin/env bash
# Checks the Python client package (client/python) from scratch on every run:
#
#   1. the pinned requirements (client/python/requirements.txt) as wheels,
#      cached outside the clone in $CREDIT_CACHE_DIR/python-wheels/<hash of
#      the pins and the interpreter>; downloaded only when that changes,
#   2. a fresh venv, with the pins and ./client/python installed from those
#      wheels only (--no-index: no network once cached),
#   3. mypy --strict on the package, the examples and generate.py,
#   4. pytest: the drift check of the generated code against proto/, both
#      clients against real servers (plain, API keys, mutual TLS) started by
#      the tests from $CREDIT_SERVER_BIN, and the examples.
#
# Extra arguments go to pytest, e.g. scripts/test-python.sh -k tls -x
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CREDIT_CACHE_DIR:-$HOME/.cache/credit-ledger}"
PKG="$ROOT/client/python"
REQUIREMENTS="$PKG/requirements.txt"
PYTHON="${PYTHON:-python3}"
export CREDIT_SERVER_BIN="${CREDIT_SERVER_BIN:-$ROOT/target/debug/credit-server}"

if [[ ! -x "$CREDIT_SERVER_BIN" ]]; then
  echo "== building credit-server ($CREDIT_SERVER_BIN not found)"
  (cd "$ROOT" && cargo build -p credit-server)
fi

start=$SECONDS
step() { printf '== [%3ss] %s\n' "$((SECONDS - start))" "$*"; }

# 1. The wheels, keyed by the pins and the interpreter (wheels are per version).
key="$(cat "$REQUIREMENTS" <("$PYTHON" -c 'import sys, sysconfig; print(sys.version, sysconfig.get_platform())') | sha256sum | cut -c1-16)"
WHEELS="$CACHE/python-wheels/$key"
if [[ ! -f "$WHEELS/.complete" ]]; then
  step "downloading the pinned wheels into $WHEELS"
  rm -rf "$WHEELS.partial"
  mkdir -p "$WHEELS.partial"
  # --no-deps: the file pins every transitive dependency itself; one it
  # misses makes the --no-index install below fail instead of drifting.
  "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps \
    --wheel-dir "$WHEELS.partial" -r "$REQUIREMENTS"
  touch "$WHEELS.partial/.complete"
  rm -rf "$WHEELS"
  mv "$WHEELS.partial" "$WHEELS"
fi

# 2. A fresh venv, installed from the cached wheels only.
WORK="$(mktemp -d "${TMPDIR:-/tmp}/credit-python.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
VENV="$WORK/venv"
step "fresh venv in $VENV"
"$PYTHON" -m venv --without-pip "$VENV"
pip_install() {
  "$PYTHON" -m pip --python "$VENV/bin/python" install --quiet --disable-pip-version-check \
    --no-index --find-links "$WHEELS" "$@"
}
pip_install -r "$REQUIREMENTS"
# A copy of the package, so the build leaves nothing in the clone; setuptools
# comes from the pins (no build isolation, no network).
cp -r "$PKG" "$WORK/src"
rm -rf "$WORK/src/build" "$WORK/src/src/"*.egg-info
pip_install --no-build-isolation "$WORK/src"
"$PYTHON" -m pip --python "$VENV/bin/python" check --disable-pip-version-check

# 3. Types.
step "mypy --strict (package, examples, generate.py)"
(cd "$PKG" && "$VENV/bin/python" -m mypy --strict --cache-dir "$WORK/mypy-cache" \
  src/credit_client examples generate.py)

# 4. Tests, from the clone's tests against the installed package.
step "pytest"
cd "$PKG"
set +e
"$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
status=$?
set -e
step "done (pytest exit $status)"
exit "$status"
