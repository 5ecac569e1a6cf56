"""Walks through the credit API: python client/python/example.py [HOST:PORT]."""

from __future__ import annotations

import sys
import uuid

from credit_client import CreditClient, InsufficientBalance


def main(target: str) -> None:
    user_id = f"example-{uuid.uuid4().hex[:8]}"
    with CreditClient(target) as credits:
        credits.create_user(user_id, f"{user_id}@example.com", name="Example User")
        print("top up:", credits.top_up(user_id, 100).balance)
        print("spend: ", credits.spend(user_id, 30, usage={"reason": "demo"}).balance)
        try:
            credits.spend(user_id, 500)
        except InsufficientBalance as err:
            print(f"refused: {err.reason}, {err.available_balance} available")
        for tx in credits.iter_transactions(user_id, page_size=10):
            print(f"  #{tx.sequence} {tx.amount:+d} -> {tx.running_balance}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")
