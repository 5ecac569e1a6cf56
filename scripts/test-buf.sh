#!/usr/bin/env bash
# Checks proto/ with buf (from the PyPI package buf-bin, in a cached venv):
#   buf lint      STANDARD rules (proto/buf.yaml; vendored third_party excluded)
#   buf format    the files are formatted as buf formats them
#   buf breaking  FILE rules against proto/ of the previous commit (HEAD~1),
#                 skipped with a message when there is no such commit or it
#                 has no proto/ yet (first commit, shallow clone).
# buf.yaml has no deps, so buf never talks to a registry.
set -euo pipefail

BUF_PIN="buf-bin==1.75.0"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CREDIT_CACHE_DIR:-$HOME/.cache/credit-ledger}"
VENV="$CACHE/tools-venv"

[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
if [[ "$(cat "$VENV/.buf-pin" 2>/dev/null || true)" != "$BUF_PIN" ]]; then
  echo "== installing $BUF_PIN into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$BUF_PIN"
  echo "$BUF_PIN" > "$VENV/.buf-pin"
fi
BUF="$VENV/bin/buf"
echo "== buf $("$BUF" --version)"

echo "== buf lint proto"
"$BUF" lint "$ROOT/proto"

echo "== buf format --diff --exit-code proto"
"$BUF" format "$ROOT/proto" --diff --exit-code

PREVIOUS="HEAD~1"
if ! previous_sha="$(git -C "$ROOT" rev-parse --verify --quiet "$PREVIOUS^{commit}")"; then
  echo "== buf breaking: SKIPPED, this clone has no $PREVIOUS (first commit or shallow clone)"
elif ! git -C "$ROOT" cat-file -e "$previous_sha:proto/credit/v1/credit.proto" 2> /dev/null; then
  echo "== buf breaking: SKIPPED, $PREVIOUS ($previous_sha) has no proto/credit/v1/credit.proto yet"
else
  AGAINST="$(mktemp -d)"
  trap 'rm -rf "$AGAINST"' EXIT
  git -C "$ROOT" archive "$previous_sha" proto | tar -x -C "$AGAINST"
  # Both sides get today's config, so a change to buf.yaml alone (e.g. the
  # third_party exclude) is not mistaken for deleted files.
  cp "$ROOT/proto/buf.yaml" "$AGAINST/proto/buf.yaml"
  echo "== buf breaking proto against $PREVIOUS ($previous_sha)"
  "$BUF" breaking "$ROOT/proto" --against "$AGAINST/proto"
fi
echo "buf: all checks passed"
