"""Keeps a user's credits topped up: watches the balance and tops up by
AMOUNT whenever what is available falls below THRESHOLD.

    python examples/auto_topup.py [HOST:PORT] [API_KEY] [--user USER_ID]
        [--threshold N] [--amount N] [--max-top-ups N]

With --user it watches that user until stopped (or --max-top-ups); the key
needs the service role (top-ups) or admin. Without --user it runs a demo: a
new user whose credits another thread spends, two top-ups, and a replay of
the last one that the server applies once.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

from credit_client import CreditClient, IdempotencyKeyReused, pb


def top_up_key(user_id: str, last_sequence: int) -> str:
    """The idempotency key of the top-up for the balance after ``last_sequence``."""
    return f"auto-top-up:{user_id}:{last_sequence}"


def top_up_after(
    credits: CreditClient, user_id: str, last_sequence: int, amount: int
) -> pb.TopUpResponse:
    # The key names the balance that was too low (the user's state after
    # transaction #last_sequence), not this process or this attempt. Whoever
    # sees that state sends the same key: a retry after a lost reply, this
    # program restarted after a crash (the watch starts again with the current
    # balance, which is that state if the top-up never landed), a second copy
    # running beside it. The server applies one top-up per key and answers the
    # others with the same transaction, so no state is ever topped up twice.
    # Once the top-up lands the sequence moves on, so a balance still too low
    # after it (a big spend) gets a new key and another top-up.
    return credits.top_up(
        user_id,
        amount,
        idempotency_key=top_up_key(user_id, last_sequence),
        metadata={"reason": "auto top-up", "afterSequence": str(last_sequence)},
    )


def keep_topped_up(
    credits: CreditClient,
    user_id: str,
    *,
    threshold: int,
    amount: int,
    max_top_ups: int | None = None,
) -> dict[int, pb.TopUpResponse]:
    """Tops up by ``amount`` whenever the available balance is below
    ``threshold``; returns after ``max_top_ups`` top-ups (never when None),
    each by the sequence of the balance that was too low."""
    done: dict[int, pb.TopUpResponse] = {}
    # The current balance first, then one per change; the watch reconnects by
    # itself when the server restarts. Leaving the loop cancels it.
    for balance in credits.watch_balance(user_id):
        if balance.available >= threshold:
            continue
        try:
            reply = top_up_after(credits, user_id, balance.last_sequence, amount)
        except IdempotencyKeyReused:
            continue  # topped up for this state already, by a run with another amount
        print(
            f"available {balance.available} < {threshold} after #{balance.last_sequence}: "
            f"topped up {amount} -> {reply.balance}"
        )
        done[balance.last_sequence] = reply
        if max_top_ups is not None and len(done) >= max_top_ups:
            break
    return done


def demo(credits: CreditClient, threshold: int, amount: int) -> None:
    user_id = f"example-{uuid.uuid4().hex[:8]}"
    credits.create_user(user_id, f"{user_id}@example.com")
    credits.top_up(user_id, 30)

    def spend_it() -> None:
        credits.spend(user_id, 15)  # 30 -> 15: below the threshold
        deadline = time.monotonic() + 30
        while credits.get_balance(user_id).balance < amount and time.monotonic() < deadline:
            time.sleep(0.02)  # until the top-up lands
        credits.spend(user_id, amount)  # and down again

    spender = threading.Thread(target=spend_it)
    spender.start()
    done = keep_topped_up(credits, user_id, threshold=threshold, amount=amount, max_top_ups=2)
    spender.join()
    print(f"balance {credits.get_balance(user_id).balance} after {len(done)} top-ups")

    # A restart that saw the same low balance again sends the same key.
    sequence, last = list(done.items())[-1]
    again = top_up_after(credits, user_id, sequence, amount)
    print("replayed top-up applied once:", again.transaction == last.transaction)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("api_key", nargs="?", default=None)
    parser.add_argument("--user", help="the user to keep topped up (default: a demo user)")
    parser.add_argument("--threshold", type=int, default=20)
    parser.add_argument("--amount", type=int, default=100)
    parser.add_argument("--max-top-ups", type=int, default=None)
    options = parser.parse_args()
    with CreditClient(options.target, api_key=options.api_key) as credits:
        if options.user is None:
            demo(credits, options.threshold, options.amount)
        else:
            keep_topped_up(
                credits,
                options.user,
                threshold=options.threshold,
                amount=options.amount,
                max_top_ups=options.max_top_ups,
            )


if __name__ == "__main__":
    main()
