"""Charging for work whose cost you learn later: reserve an estimate, capture
the real cost, and let the TTL clean up after a caller that crashed.

    python examples/holds_example.py [HOST:PORT] [API_KEY]
"""

from __future__ import annotations

import sys
import uuid
from datetime import timedelta

from credit_client import CreditClient, HoldExpired, HoldNotActive, InsufficientBalance, pb


def run_llm_job() -> int:
    """Stands in for the work: returns what it really cost."""
    return 37


def main(target: str, api_key: str | None = None) -> None:
    user_id = f"example-{uuid.uuid4().hex[:8]}"
    with CreditClient(target, api_key=api_key) as credits:
        credits.create_user(user_id, f"{user_id}@example.com")
        credits.top_up(user_id, 100)

        # Hold the estimate before starting: refused up front when too little
        # is available, and nobody else can spend it while the work runs.
        try:
            hold = credits.reserve(
                user_id, 50, ttl=timedelta(minutes=15), usage={"graph_exec_id": "run-1"}
            ).hold
        except InsufficientBalance as err:
            print(f"not enough credits: {err.available_balance} available")
            return
        cost = run_llm_job()
        # Charge the real cost: one USAGE transaction; the rest goes back.
        # Capture more than the hold and the excess comes from the balance.
        done = credits.capture(user_id, hold.hold_id, cost)
        print(f"charged {-done.transaction.amount}, balance {done.balance}")
        # If the worker crashed before capturing, nothing is lost: the hold
        # expires after its TTL and its credits are available again.

        # Work that did not happen: give the hold back.
        spare = credits.reserve(user_id, 20).hold
        credits.release(user_id, spare.hold_id, reason="job cancelled")
        try:
            credits.capture(user_id, spare.hold_id, 5)
        except (HoldNotActive, HoldExpired) as err:
            print(f"refused: {err.reason}")

        balance = credits.get_balance(user_id)
        print(f"balance {balance.balance}, held {balance.held}, available {balance.available}")
        for h in credits.iter_holds(user_id, states=[pb.HOLD_STATE_CAPTURED]):
            print(f"  captured {h.captured_amount} of {h.amount}")


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051",
        sys.argv[2] if len(sys.argv) > 2 else None,
    )
