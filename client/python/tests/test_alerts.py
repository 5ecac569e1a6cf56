"""Balance alerts with both clients (each test runs once with CreditClient and
once with AsyncCreditClient): setting (armed by the balance, the same
threshold or key again, the errors), one event per downward crossing (listed,
and in watches with alert events), re-arming, deleting, roles, the feed
content kept across reconnects, and auto-top-up consumers that top up exactly
once per event however many run and wherever they restart."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import Any

import grpc
import pytest

from conftest import PACKAGE_ROOT, Server
from credit_client import (
    AlertNotFound,
    AsyncCreditClient,
    CreditClient,
    FeedMessage,
    IdempotencyKeyReused,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RetryPolicy,
    TooManyAlerts,
    UserNotFound,
    pb,
)
from credit_client import _requests as req
from test_retries import FailFirst, fail_first  # noqa: F401 (the fixture)
from test_watch import ScriptedStub, beat, hang_guard, run_watch, shutting_down, tx  # noqa: F401

sys.path.insert(0, str(PACKAGE_ROOT / "examples"))
import auto_topup  # noqa: E402  (the example's consumer, run by the tests below)

sys.path.remove(str(PACKAGE_ROOT / "examples"))


def new_user(credits: Any, balance: int) -> str:
    user_id = f"py-{uuid.uuid4()}"
    credits.create_user(user_id, f"{user_id}@example.com")
    if balance:
        credits.top_up(user_id, balance)
    return user_id


def read(feed: Iterator[FeedMessage], count: int) -> list[FeedMessage]:
    """The next ``count`` messages that are not heartbeats."""
    deadline = time.monotonic() + 15
    found: list[FeedMessage] = []
    while len(found) < count:
        assert time.monotonic() < deadline, f"only {len(found)} of {count} messages arrived"
        message = next(feed)
        assert message.cursor
        if not message.is_heartbeat:
            found.append(message)
    return found


def kinds(messages: list[FeedMessage]) -> list[tuple[str, str]]:
    """Each message as ("tx", transaction id) or ("event", event id)."""
    out = []
    for message in messages:
        if message.transaction is not None:
            assert message.alert_event is None
            out.append(("tx", message.transaction.transaction_id))
        else:
            assert message.alert_event is not None
            out.append(("event", message.alert_event.event_id))
    return out


# --- setting -----------------------------------------------------------------


def test_set_is_armed_when_the_balance_is_at_or_above_the_threshold(client: Any) -> None:
    user_id = new_user(client, 100)
    at = client.set_balance_alert(user_id, 100)
    assert isinstance(at, pb.BalanceAlert)
    assert at.alert_id and at.user_id == user_id and at.threshold == 100 and at.armed
    assert at.HasField("created_at") and not at.HasField("deleted_at")
    above = client.set_balance_alert(user_id, 101)
    assert not above.armed
    zero = client.set_balance_alert(user_id, 0)
    assert zero.armed
    # The balance lists them, lowest threshold first.
    alerts = client.get_balance(user_id).alerts
    assert [(a.alert_id, a.threshold, a.armed) for a in alerts] == [
        (zero.alert_id, 0, True),
        (at.alert_id, 100, True),
        (above.alert_id, 101, False),
    ]


def test_the_same_threshold_or_key_again_returns_the_same_alert(client: Any) -> None:
    user_id = new_user(client, 10)
    key = f"alert-{uuid.uuid4()}"
    alert = client.set_balance_alert(user_id, 50, idempotency_key=key)
    # Without a key (the client makes a new one) or with another key: the alert in force.
    assert client.set_balance_alert(user_id, 50) == alert
    assert client.set_balance_alert(user_id, 50, idempotency_key=f"other-{uuid.uuid4()}") == alert
    assert client.set_balance_alert(user_id, 50, idempotency_key=key) == alert
    assert len(client.get_balance(user_id).alerts) == 1

    with pytest.raises(IdempotencyKeyReused) as reused:
        client.set_balance_alert(user_id, 60, idempotency_key=key)
    assert reused.value.idempotency_key == key
    assert reused.value.code == grpc.StatusCode.ALREADY_EXISTS

    # The key keeps naming the alert after it is removed; the threshold alone does not.
    removed = client.delete_balance_alert(user_id, alert.alert_id)
    assert client.set_balance_alert(user_id, 50, idempotency_key=key) == removed
    fresh = client.set_balance_alert(user_id, 50)
    assert fresh.alert_id != alert.alert_id and not fresh.HasField("deleted_at")


def test_set_errors(client: Any) -> None:
    user_id = new_user(client, 0)
    with pytest.raises(InvalidArgument) as negative:
        client.set_balance_alert(user_id, -1)
    assert [v.field for v in negative.value.field_violations] == ["threshold"]
    nobody = f"py-nobody-{uuid.uuid4()}"
    with pytest.raises(UserNotFound) as unknown:
        client.set_balance_alert(nobody, 5)
    assert unknown.value.user_id == nobody

    alerts = [client.set_balance_alert(user_id, threshold) for threshold in range(20)]
    with pytest.raises(TooManyAlerts) as too_many:
        client.set_balance_alert(user_id, 20)
    assert too_many.value.limit == 20
    assert too_many.value.code == grpc.StatusCode.FAILED_PRECONDITION
    # One removed makes room again.
    client.delete_balance_alert(user_id, alerts[0].alert_id)
    assert client.set_balance_alert(user_id, 20).threshold == 20


def test_set_retries_with_the_same_key(
    make_client: Any, client: Any, server_target: str, fail_first: Any
) -> None:
    user_id = new_user(client, 10)
    lossy: FailFirst = fail_first(1, grpc.StatusCode.UNAVAILABLE, reach_server=True)
    retrying = make_client(
        server_target, interceptors=[lossy], retry=RetryPolicy(initial_backoff=0.01)
    )
    alert = retrying.set_balance_alert(user_id, 5)
    assert len(lossy.keys) == 2 and lossy.keys[0] and lossy.keys[0] == lossy.keys[1]
    assert [a.alert_id for a in client.get_balance(user_id).alerts] == [alert.alert_id]


# --- events ------------------------------------------------------------------


def test_each_crossing_records_one_event_listed_and_watched(client: Any) -> None:
    user_id = new_user(client, 100)
    alert = client.set_balance_alert(user_id, 50)
    events_only = client.watch_transactions(user_id, content="ALERT_EVENTS")
    both = client.watch_transactions(
        user_id, content=pb.FEED_CONTENT_TRANSACTIONS_AND_ALERT_EVENTS
    )
    plain = client.watch_transactions(user_id)
    for feed in (events_only, both, plain):
        assert next(feed).is_heartbeat  # from now: where the feed starts

    above = client.spend(user_id, 30).transaction  # 100 -> 70: still above
    crossing = client.spend(user_id, 30).transaction  # 70 -> 40: the crossing
    below = client.spend(user_id, 10).transaction  # 40 -> 30: disarmed, nothing
    listed = client.list_alert_events(user_id)
    assert len(listed.events) == 1 and listed.next_page_token == ""
    event = listed.events[0]
    assert event.event_id
    assert (event.alert_id, event.user_id, event.threshold) == (alert.alert_id, user_id, 50)
    assert (event.balance_before, event.balance_after) == (70, 40)
    assert (event.transaction_id, event.sequence) == (crossing.transaction_id, crossing.sequence)
    assert event.created_at == crossing.created_at
    assert not client.get_balance(user_id).alerts[0].armed

    # Alert events only: the same event, in a message without a transaction.
    [watched] = read(events_only, 1)
    assert watched.alert_event == event and watched.transaction is None
    assert not watched.is_heartbeat
    # Both: the event right after its transaction.
    got = read(both, 4)
    assert kinds(got) == [
        ("tx", above.transaction_id),
        ("tx", crossing.transaction_id),
        ("event", event.event_id),
        ("tx", below.transaction_id),
    ]
    assert got[2].alert_event == event
    # The default feed carries transactions only.
    assert kinds(read(plain, 3)) == [
        ("tx", t.transaction_id) for t in (above, crossing, below)
    ]

    # Back at or above the threshold re-arms; the next crossing is a second event.
    refill = client.top_up(user_id, 20).transaction  # 30 -> 50
    assert client.get_balance(user_id).alerts[0].armed
    again = client.spend(user_id, 1).transaction  # 50 -> 49
    events = list(client.iter_alert_events(user_id, page_size=1))  # newest first
    assert [e.transaction_id for e in events] == [again.transaction_id, crossing.transaction_id]
    second = events[0]
    assert second.event_id != event.event_id and events[1] == event
    assert (second.balance_before, second.balance_after) == (50, 49)
    [watched_again] = read(events_only, 1)
    assert watched_again.alert_event == second
    assert kinds(read(both, 3)) == [
        ("tx", refill.transaction_id),
        ("tx", again.transaction_id),
        ("event", second.event_id),
    ]
    for feed in (events_only, both, plain):
        feed.close()

    # Pages: one event, then the other after the token.
    page = client.list_alert_events(user_id, page_size=1)
    assert list(page.events) == [second] and page.next_page_token
    rest = client.list_alert_events(user_id, page_size=1, page_token=page.next_page_token)
    assert list(rest.events) == [event] and rest.next_page_token == ""
    # Resuming after the first event's cursor gives the second, and with the same content.
    resumed = client.watch_transactions(user_id, start_after=watched.cursor, content="alert_events")
    assert [m.alert_event for m in read(resumed, 1)] == [second]
    resumed.close()


def test_delete_twice_and_an_unknown_alert(client: Any) -> None:
    user_id = new_user(client, 100)
    alert = client.set_balance_alert(user_id, 50)
    deleted = client.delete_balance_alert(user_id, alert.alert_id)
    assert (deleted.alert_id, deleted.threshold) == (alert.alert_id, 50)
    assert deleted.HasField("deleted_at")
    assert client.delete_balance_alert(user_id, alert.alert_id) == deleted
    assert list(client.get_balance(user_id).alerts) == []
    # A removed alert records nothing.
    client.spend(user_id, 80)
    assert list(client.list_alert_events(user_id).events) == []

    absent = str(uuid.uuid4())
    with pytest.raises(AlertNotFound) as not_found:
        client.delete_balance_alert(user_id, absent)
    assert isinstance(not_found.value, NotFound)
    assert (not_found.value.user_id, not_found.value.alert_id) == (user_id, absent)
    assert not_found.value.code == grpc.StatusCode.NOT_FOUND
    # Another user's alert is not this user's.
    other = new_user(client, 0)
    theirs = client.set_balance_alert(other, 10)
    with pytest.raises(AlertNotFound):
        client.delete_balance_alert(user_id, theirs.alert_id)
    with pytest.raises(UserNotFound):
        client.list_alert_events(f"py-nobody-{uuid.uuid4()}")


def test_roles(make_client: Any, keyed_server: Server) -> None:
    target, keys = keyed_server.target, keyed_server.keys
    service = make_client(target, api_key=keys["service"])
    reader = make_client(target, api_key=keys["reader"])
    user_id = new_user(make_client(target, api_key=keys["admin"]), 10)
    with pytest.raises(PermissionDenied):
        reader.set_balance_alert(user_id, 5)
    alert = service.set_balance_alert(user_id, 5)
    with pytest.raises(PermissionDenied):
        reader.delete_balance_alert(user_id, alert.alert_id)
    feed = reader.watch_transactions(user_id, content="ALERT_EVENTS")
    next(feed)
    service.spend(user_id, 6)
    [watched] = read(feed, 1)
    feed.close()
    assert list(reader.list_alert_events(user_id).events) == [watched.alert_event]
    assert service.delete_balance_alert(user_id, alert.alert_id).HasField("deleted_at")


def test_a_bad_content_is_refused_before_sending(client: Any) -> None:
    with pytest.raises(ValueError):
        next(client.watch_transactions("anyone", content="bogus"))
    with pytest.raises(ValueError):
        next(client.watch_transactions("anyone", content=7))


def test_content_names() -> None:
    def content(value: Any) -> int:
        return req.watch_transactions("u", None, None, value).content

    assert content(None) == pb.FEED_CONTENT_UNSPECIFIED
    for name in ("alert_events", "ALERT_EVENTS", "FEED_CONTENT_ALERT_EVENTS"):
        assert content(name) == pb.FEED_CONTENT_ALERT_EVENTS
    assert content("transactions_and_alert_events") == pb.FEED_CONTENT_TRANSACTIONS_AND_ALERT_EVENTS
    assert content(pb.FEED_CONTENT_UNSPECIFIED) == pb.FEED_CONTENT_UNSPECIFIED


# --- the feed message and reconnects, against scripted streams ----------------


def alert_event(sequence: int) -> pb.WatchTransactionsResponse:
    return pb.WatchTransactionsResponse(
        alert_event=pb.AlertEvent(event_id=f"e{sequence}", sequence=sequence),
        cursor=f"c{sequence}e",
    )


def test_content_and_the_last_cursor_are_kept_across_reconnects(client_kind: str) -> None:
    stub = ScriptedStub(
        [beat("c0"), tx(1), alert_event(1), shutting_down()],
        [alert_event(2)],
    )
    outcome = run_watch(
        client_kind,
        stub,
        "watch_transactions",
        "u",
        types=["USAGE"],
        content="TRANSACTIONS_AND_ALERT_EVENTS",
        take=4,
    )
    assert outcome.error is None
    assert [r.start_after for r in stub.requests] == ["", "c1e"]
    for request in stub.requests:
        assert request.content == pb.FEED_CONTENT_TRANSACTIONS_AND_ALERT_EVENTS
        assert list(request.types) == [pb.TRANSACTION_TYPE_USAGE]
    beat_message, transaction, first, second = outcome.messages
    assert beat_message.is_heartbeat and beat_message.alert_event is None
    assert transaction.alert_event is None and not transaction.is_heartbeat
    for message, sequence in ((first, 1), (second, 2)):
        assert message.transaction is None and not message.is_heartbeat
        assert message.alert_event == pb.AlertEvent(event_id=f"e{sequence}", sequence=sequence)
    # Built by hand (as older code does), a message has no event.
    assert FeedMessage(None, "c").is_heartbeat


# --- auto-top-up consumers ---------------------------------------------------

THRESHOLD = 20
AMOUNT = 100


async def consume(
    credits: AsyncCreditClient,
    user_id: str,
    *,
    start_after: str,
    store: Callable[[str], None],
    max_events: int,
) -> list[pb.TopUpResponse]:
    """examples/auto_topup.py's consumer, on the asyncio client."""
    alert = await credits.set_balance_alert(user_id, THRESHOLD)
    done: list[pb.TopUpResponse] = []
    feed = credits.watch_transactions(user_id, start_after=start_after, content="ALERT_EVENTS")
    try:
        async for message in feed:
            event = message.alert_event
            if event is None or event.alert_id != alert.alert_id:
                continue
            done.append(await credits.top_up(user_id, AMOUNT, idempotency_key=event.event_id))
            store(message.cursor)
            if len(done) >= max_events:
                break
    finally:
        await feed.aclose()
    return done


Consumer = tuple[str, list[str], int]  # start after, where its cursors go, events to handle


def run_consumers(
    client_kind: str, target: str, user_id: str, consumers: list[Consumer]
) -> list[list[pb.TopUpResponse]]:
    """Runs the consumers at once, each on its own client of ``client_kind``
    (blocking: the example's, each in a thread; asyncio: tasks on one loop)."""
    if client_kind == "sync":
        clients = [CreditClient(target) for _ in consumers]
        try:
            with ThreadPoolExecutor(max_workers=len(consumers)) as pool:
                futures = [
                    pool.submit(
                        auto_topup.keep_topped_up,
                        credits,
                        user_id,
                        threshold=THRESHOLD,
                        amount=AMOUNT,
                        start_after=start,
                        store=cursors.append,
                        max_events=count,
                        log=False,
                    )
                    for credits, (start, cursors, count) in zip(clients, consumers)
                ]
                return [future.result() for future in futures]
        finally:
            for credits in clients:
                credits.close()

    async def main() -> list[list[pb.TopUpResponse]]:
        clients = [AsyncCreditClient(target) for _ in consumers]
        try:
            return list(
                await asyncio.gather(
                    *(
                        consume(credits, user_id, start_after=start, store=cursors.append, max_events=count)
                        for credits, (start, cursors, count) in zip(clients, consumers)
                    )
                )
            )
        finally:
            for credits in clients:
                await credits.close()

    return asyncio.run(main())


def wait_for_write_after(credits: CreditClient, user_id: str, sequence: int) -> None:
    deadline = time.monotonic() + 15
    while credits.get_balance(user_id).last_sequence <= sequence:
        assert time.monotonic() < deadline, "no consumer topped up"
        time.sleep(0.02)


def top_ups_by_key(credits: CreditClient, user_id: str) -> Counter[str]:
    return Counter(t.idempotency_key for t in credits.iter_transactions(user_id, types=["TOP_UP"]))


def test_consumers_top_up_exactly_once_per_event(client_kind: str, server_target: str) -> None:
    with CreditClient(server_target) as credits:  # writes and checks; the consumers have their own
        user_id = new_user(credits, THRESHOLD + 10)
        credits.set_balance_alert(user_id, THRESHOLD)
        with closing(credits.watch_transactions(user_id, content="ALERT_EVENTS")) as feed:
            start = next(feed).cursor
        a: list[str] = []
        b: list[str] = []
        with ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(
                run_consumers, client_kind, server_target, user_id, [(start, a, 2), (start, b, 2)]
            )
            first = credits.spend(user_id, 15).transaction  # 30 -> 15: a crossing
            wait_for_write_after(credits, user_id, first.sequence)  # topped up to 115: re-armed
            second = credits.spend(user_id, AMOUNT).transaction  # 115 -> 15: another
            wait_for_write_after(credits, user_id, second.sequence)
            replies_a, replies_b = running.result(timeout=30)

        events = list(credits.iter_alert_events(user_id))[::-1]  # oldest first
        assert [e.transaction_id for e in events] == [first.transaction_id, second.transaction_id]
        keys = top_ups_by_key(credits, user_id)
        assert [keys[e.event_id] for e in events] == [1, 1]
        assert sum(keys.values()) == 3  # the first top-up, and one per event
        assert credits.get_balance(user_id).balance == 15 + AMOUNT
        # Both consumers topped up for both events, and got the same two transactions.
        originals = [r.transaction for r in replies_a]
        assert [t.idempotency_key for t in originals] == [e.event_id for e in events]
        assert [r.transaction for r in replies_b] == originals
        assert len(a) == len(b) == 2

        # Restarted: one from an older stored cursor (it crashed before storing
        # its last one), and one from the very start, at once.
        replayed = run_consumers(
            client_kind, server_target, user_id, [(a[0], [], 1), (start, [], 2)]
        )
        assert [r.transaction for r in replayed[0]] == originals[1:]
        assert [r.transaction for r in replayed[1]] == originals
        assert top_ups_by_key(credits, user_id) == keys
        assert credits.get_balance(user_id).balance == 15 + AMOUNT
