"""Tops a user up whenever a write takes the balance below THRESHOLD, driven
by the ledger's balance alert events: sets an alert, watches the user's alert
events and tops up by AMOUNT once for every event.

    python examples/auto_topup.py [HOST:PORT] [API_KEY] [--user USER_ID]
        [--threshold N] [--amount N] [--cursor-file PATH] [--max-events N]

With --user it keeps that user topped up until stopped (or --max-events
events). With --cursor-file it starts right after the cursor stored there
(from now when the file does not exist yet) and stores the cursor of every
event it handled, so a restart goes on where it stopped. The key needs the
service role (alerts, top-ups). Without --user it runs a demo: a new user,
two consumers at once on the same events, two crossings, and a consumer
restarted from an older cursor; the user is topped up once per crossing.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

from credit_client import CreditClient, IdempotencyKeyReused, RetryPolicy, pb

#: Rides out a server restart: a watch reconnects for about half a minute.
PATIENT = RetryPolicy(max_attempts=30, max_backoff=1.0)


def top_up_for(credits: CreditClient, event: pb.AlertEvent, amount: int) -> pb.TopUpResponse:
    # The key is the event's id, which the ledger made when it recorded the
    # crossing (in the same transaction as the write that crossed): it names
    # the crossing, not this process or this attempt. The client sends it
    # again on every retry of this call (a lost reply); a consumer that
    # crashed after the top-up but before it stored the cursor sees the event
    # again when it restarts and sends it again; a second copy running beside
    # this one sends it too. The server applies one top-up per key and answers
    # the others with the original transaction, so each crossing is topped up
    # exactly once. A top-up that lifts the balance back to the threshold or
    # above re-arms the alert: the next crossing is a new event, with a new id.
    return credits.top_up(
        event.user_id,
        amount,
        idempotency_key=event.event_id,
        metadata={"reason": "auto top-up", "alertEventId": event.event_id},
    )


def keep_topped_up(
    credits: CreditClient,
    user_id: str,
    *,
    threshold: int,
    amount: int,
    start_after: str | None = None,
    store: Callable[[str], None] = lambda cursor: None,
    max_events: int | None = None,
    log: bool = True,
) -> list[pb.TopUpResponse]:
    """Sets an alert at ``threshold`` and tops up by ``amount`` once for every
    event of it, from right after ``start_after`` (a stored cursor) or from
    now; ``store`` keeps the cursor of each event handled. Returns the top-ups
    after ``max_events`` events (never when None)."""
    done: list[pb.TopUpResponse] = []
    handled = 0
    # Alert events only; the watch reconnects by itself (a server restart)
    # right after the last cursor it yielded. Closing it cancels the call.
    with closing(
        credits.watch_transactions(
            user_id, start_after=start_after, content=pb.FEED_CONTENT_ALERT_EVENTS
        )
    ) as feed:
        if start_after is None:
            # From now, the first message is a heartbeat with the cursor where
            # the feed starts: read it before setting the alert, so every
            # event of the alert comes after that start.
            store(next(feed).cursor)
        # A threshold the user already has an alert for returns that alert,
        # so every copy of this consumer, and every restart, gets the same one.
        alert = credits.set_balance_alert(user_id, threshold)
        for message in feed:
            event = message.alert_event
            if event is None or event.alert_id != alert.alert_id:
                continue  # a heartbeat, or an event of another alert of this user
            try:
                reply: pb.TopUpResponse | None = top_up_for(credits, event, amount)
            except IdempotencyKeyReused:
                reply = None  # this event was topped up before, by a run with another amount
            # Stored only now, after the top-up: a crash before this line
            # replays the event, which its key makes harmless; storing the
            # cursor first could lose the event.
            store(message.cursor)
            if reply is not None:
                done.append(reply)
                if log:
                    print(
                        f"{event.balance_before} -> {event.balance_after} (below {event.threshold}) "
                        f"at #{event.sequence}: topped up {amount} -> {reply.balance}"
                    )
            handled += 1
            if max_events is not None and handled >= max_events:
                break
    return done


def load_cursor(path: Path) -> str | None:
    """The cursor stored in ``path``, or None (start from now) when there is none."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def save_cursor(path: Path, cursor: str) -> None:
    # A new file renamed over the old one: a crash leaves the old cursor or
    # the new one, never half of one.
    new = path.with_name(path.name + ".new")
    new.write_text(cursor + "\n")
    os.replace(new, path)


def event_top_ups(credits: CreditClient, user_id: str) -> tuple[int, int]:
    """How many alert events the user has, and how many top-ups were made for them."""
    events = list(credits.iter_alert_events(user_id))
    keys = Counter(t.idempotency_key for t in credits.iter_transactions(user_id, types=["TOP_UP"]))
    return len(events), sum(keys[event.event_id] for event in events)


def wait_for_write_after(credits: CreditClient, user_id: str, sequence: int) -> None:
    """Returns once the user has a transaction after ``sequence`` (a consumer's top-up)."""
    with closing(credits.watch_balance(user_id)) as balances:
        for balance in balances:
            if balance.last_sequence > sequence:
                return


def demo(credits: CreditClient, threshold: int, amount: int) -> None:
    user_id = f"example-{uuid.uuid4().hex[:8]}"
    credits.create_user(user_id, f"{user_id}@example.com")
    credits.top_up(user_id, threshold + 10)
    alert = credits.set_balance_alert(user_id, threshold)
    print(f"alert below {threshold}: armed {alert.armed}")

    # Where the user's alert events stand now: both consumers start right
    # after it, as if they had stored it on an earlier run.
    with closing(credits.watch_transactions(user_id, content="ALERT_EVENTS")) as feed:
        start = next(feed).cursor
    stored: dict[str, list[str]] = {"a": [], "b": []}
    with ThreadPoolExecutor(max_workers=2) as pool:
        consumers = [
            pool.submit(
                keep_topped_up,
                credits,
                user_id,
                threshold=threshold,
                amount=amount,
                start_after=start,
                store=cursors.append,
                max_events=2,
                log=False,
            )
            for cursors in stored.values()
        ]
        first = credits.spend(user_id, 15)  # threshold + 10 -> threshold - 5: a crossing
        wait_for_write_after(credits, user_id, first.transaction.sequence)  # topped up, re-armed
        second = credits.spend(user_id, amount)  # down to threshold - 5 again: another
        wait_for_write_after(credits, user_id, second.transaction.sequence)
        a, b = (consumer.result() for consumer in consumers)
    events, top_ups = event_top_ups(credits, user_id)
    balance = credits.get_balance(user_id).balance
    print(f"alert events: {events}, top-ups for them: {top_ups}, balance {balance}")
    print("both consumers got the same top-ups:", [r.transaction for r in a] == [r.transaction for r in b])

    # A consumer that crashed before it stored its last cursor starts from the
    # one before: it sees the second event again, and tops up nothing new.
    replayed = keep_topped_up(
        credits,
        user_id,
        threshold=threshold,
        amount=amount,
        start_after=stored["a"][0],
        max_events=1,
        log=False,
    )
    print(
        f"restarted from an older cursor: {len(replayed)} event again, "
        f"top-ups for them still {event_top_ups(credits, user_id)[1]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("api_key", nargs="?", default=None)
    parser.add_argument("--user", help="the user to keep topped up (default: a demo user)")
    parser.add_argument("--threshold", type=int, default=20)
    parser.add_argument("--amount", type=int, default=100)
    parser.add_argument("--cursor-file", type=Path, help="where to keep the feed cursor")
    parser.add_argument("--max-events", type=int, default=None)
    options = parser.parse_args()
    if options.user is None:
        with CreditClient(options.target, api_key=options.api_key) as credits:
            demo(credits, options.threshold, options.amount)
        return
    path: Path | None = options.cursor_file

    def store(cursor: str) -> None:
        if path is not None:
            save_cursor(path, cursor)

    with CreditClient(options.target, api_key=options.api_key, retry=PATIENT) as credits:
        keep_topped_up(
            credits,
            options.user,
            threshold=options.threshold,
            amount=options.amount,
            start_after=None if path is None else load_cursor(path),
            store=store,
            max_events=options.max_events,
        )


if __name__ == "__main__":
    main()
