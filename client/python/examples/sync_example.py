"""Walks through every call with the blocking client.

    python examples/sync_example.py [HOST:PORT] [API_KEY]
"""

from __future__ import annotations

import sys
import uuid
from datetime import datetime, timedelta, timezone

from credit_client import CreditClient, InsufficientBalance, RefundExceedsOriginal, pb


def main(target: str, api_key: str | None = None) -> None:
    user_id = f"example-{uuid.uuid4().hex[:8]}"
    with CreditClient(target, api_key=api_key) as credits:
        # Users and balances.
        credits.create_user(user_id, f"{user_id}@example.com", name="Example User")
        print("user:", credits.get_user(user_id).email)

        # Writes: each gets an idempotency key (made here when not given).
        print("top up:", credits.top_up(user_id, 100, metadata={"order": "o-1"}).balance)
        spend = credits.spend(user_id, 30, usage={"graph_exec_id": "run-1", "reason": "demo"})
        print("spend:", spend.balance)
        print("grant:", credits.grant(user_id, 10, reason="welcome").balance)
        refund = credits.refund(user_id, spend.transaction.transaction_id, amount=5)
        print("refund:", refund.balance)
        print("balance:", credits.get_balance(user_id).balance)

        # The same idempotency key again: applied once, same transaction.
        first = credits.top_up(user_id, 1, idempotency_key=f"order-{user_id}")
        again = credits.top_up(user_id, 1, idempotency_key=f"order-{user_id}")
        assert again.transaction.transaction_id == first.transaction.transaction_id

        # Errors are typed, with the server's details as attributes.
        try:
            credits.spend(user_id, 500)
        except InsufficientBalance as err:
            print(f"refused: {err.reason}, {err.available_balance} available")
        try:
            credits.refund(user_id, spend.transaction.transaction_id, amount=100)
        except RefundExceedsOriginal as err:
            print(f"refused: {err.reason}, {err.refundable_amount} refundable")

        # History: one transaction, one raw page, or every page.
        print("transaction:", credits.get_transaction(user_id, spend.transaction.transaction_id).amount)
        page = credits.list_transactions(user_id, page_size=2)
        print("first page:", len(page.transactions), "next token:", bool(page.next_page_token))
        hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
        for tx in credits.iter_transactions(
            user_id, page_size=2, types=[pb.TRANSACTION_TYPE_USAGE], created_after=hour_ago
        ):
            print(f"  #{tx.sequence} {tx.amount:+d} -> {tx.running_balance} ({tx.usage.graph_exec_id})")

        # Operations (admin role when the server uses keys).
        print("ledger clean:", credits.verify_ledger(user_id).clean)

        # Watches: transactions as they happen. From now, the first message is a
        # heartbeat (no transaction) carrying the cursor where the feed starts.
        feed = credits.watch_transactions(user_id, types=["GRANT"])
        start = next(feed)
        credits.grant(user_id, 3, reason="watched")
        for message in feed:
            if message.transaction is not None:
                print("watched grant:", message.transaction.amount)
                break
        feed.close()  # cancels the call
        # Later (after a crash, in another process): everything after a cursor, once.
        resumed = credits.watch_transactions(user_id, start_after=start.cursor)
        replayed = next(m for m in resumed if m.transaction is not None)
        resumed.close()
        print("resumed at the grant:", replayed.transaction == message.transaction)


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051",
        sys.argv[2] if len(sys.argv) > 2 else None,
    )
