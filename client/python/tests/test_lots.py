"""Lots against a real server, with both clients (each test runs once with
CreditClient and once with AsyncCreditClient): the lot a top-up or grant
makes, the order spends draw in (priority, soonest expiry, oldest), the
allocations that record it, paid and promotional balances, listing and
paging lots, expiry, the typed errors, and retries that reuse the key."""

from __future__ import annotations

import inspect
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import grpc
import pytest

from conftest import Server
from credit_client import (
    AsyncCreditClient,
    CreditClient,
    IdempotencyKeyReused,
    InvalidArgument,
    PermissionDenied,
    RetryPolicy,
    UserNotFound,
    pb,
)

from test_retries import FailFirst, fail_first  # noqa: F401 (the fixture)


def now() -> datetime:
    return datetime.now(timezone.utc)


def seconds(value: datetime) -> float:
    return value.timestamp()


def stamp_seconds(stamp: Any) -> float:
    return float(stamp.seconds) + stamp.nanos / 1e9


def allocations(transaction: pb.Transaction) -> list[tuple[str, int]]:
    return [(a.lot_id, a.amount) for a in transaction.allocations]


@pytest.fixture
def user_id(client: Any) -> str:
    user_id = f"py-{uuid.uuid4()}"
    client.create_user(user_id, f"{user_id}@example.com")
    return user_id


def test_spend_draws_promotional_before_paid(client: Any, user_id: str) -> None:
    top = client.top_up(user_id, 100, metadata={"order": "o-1"})
    paid = top.lot
    assert paid.lot_id and paid.user_id == user_id
    assert (paid.category, paid.priority) == (pb.CREDIT_CATEGORY_PAID, 100)
    assert (paid.granted_amount, paid.remaining, paid.held) == (100, 100, 0)
    assert not paid.HasField("expire_time")
    assert paid.source_transaction_id == top.transaction.transaction_id
    assert allocations(top.transaction) == [(paid.lot_id, 100)]

    tomorrow = now() + timedelta(days=1)
    granted = client.grant(user_id, 50, reason="welcome", expire_time=tomorrow)
    promo = granted.lot
    assert promo.lot_id and promo.lot_id != paid.lot_id
    assert (promo.category, promo.priority) == (pb.CREDIT_CATEGORY_PROMOTIONAL, 50)
    assert (promo.granted_amount, promo.remaining) == (50, 50)
    assert abs(stamp_seconds(promo.expire_time) - seconds(tomorrow)) < 0.001
    assert promo.source_transaction_id == granted.transaction.transaction_id
    assert allocations(granted.transaction) == [(promo.lot_id, 50)]
    assert granted.balance == 150

    balance = client.get_balance(user_id)
    assert (balance.balance, balance.paid, balance.promotional) == (150, 100, 50)
    assert balance.next_expiring_amount == 50
    assert abs(stamp_seconds(balance.next_expire_time) - seconds(tomorrow)) < 0.001

    # Priority 50 (the grant) is drawn before priority 100 (the top-up).
    spent = client.spend(user_id, 70)
    expected = [(promo.lot_id, -50), (paid.lot_id, -20)]
    assert allocations(spent.transaction) == expected
    stored = client.get_transaction(user_id, spent.transaction.transaction_id)
    assert allocations(stored) == expected
    assert sum(amount for _, amount in expected) == stored.amount == -70
    # The top-up's and the grant's allocations are stored too.
    assert allocations(client.get_transaction(user_id, top.transaction.transaction_id)) == [
        (paid.lot_id, 100)
    ]
    assert allocations(client.get_transaction(user_id, granted.transaction.transaction_id)) == [
        (promo.lot_id, 50)
    ]

    balance = client.get_balance(user_id)
    assert (balance.balance, balance.paid, balance.promotional) == (80, 80, 0)
    assert (balance.held, balance.available) == (0, 80)
    # The only credits that expired were spent: nothing expires now.
    assert not balance.HasField("next_expire_time") and balance.next_expiring_amount == 0

    # Only lots with credits left, unless include_empty.
    listed = client.list_lots(user_id)
    assert [(lot.lot_id, lot.remaining) for lot in listed.lots] == [(paid.lot_id, 80)]
    assert listed.next_page_token == ""
    every = client.list_lots(user_id, include_empty=True)
    assert [(lot.lot_id, lot.remaining) for lot in every.lots] == [(promo.lot_id, 0), (paid.lot_id, 80)]
    assert every.lots[0].granted_amount == 50 and every.lots[0].category == pb.CREDIT_CATEGORY_PROMOTIONAL
    assert [lot.lot_id for lot in client.iter_lots(user_id, include_empty=True)] == [
        promo.lot_id,
        paid.lot_id,
    ]
    assert client.verify_ledger(user_id).clean


def make_lots(client: Any, user_id: str) -> list[str]:
    """Seven lots of 10, made in the order A..G; returns their ids in draw order."""
    t = now()
    made = {
        "A": client.top_up(user_id, 10).lot,  # 100, never
        "B": client.grant(user_id, 10, expire_time=t + timedelta(days=2)).lot,  # 50, +2d
        "C": client.grant(user_id, 10, expire_time=t + timedelta(days=1)).lot,  # 50, +1d
        "D": client.top_up(user_id, 10, expire_time=t + timedelta(days=3)).lot,  # 100, +3d
        "E": client.grant(user_id, 10).lot,  # 50, never
        "F": client.top_up(user_id, 10, priority=0).lot,  # 0, never
        "G": client.top_up(user_id, 10).lot,  # 100, never, after A
    }
    assert made["F"].priority == 0  # 0 is sent, not taken for "unset"
    assert [made[k].priority for k in "ABCDEG"] == [100, 50, 50, 100, 50, 100]
    assert len({lot.lot_id for lot in made.values()}) == 7
    return [made[k].lot_id for k in "FCBEDAG"]


def test_list_lots_pages_in_draw_order(client: Any, user_id: str) -> None:
    order = make_lots(client, user_id)

    whole = client.list_lots(user_id)
    assert [lot.lot_id for lot in whole.lots] == order and whole.next_page_token == ""

    # One lot a page, by hand: every lot once, in draw order.
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = client.list_lots(user_id, page_size=1, page_token=token)
        pages += 1
        assert len(page.lots) <= 1
        seen.extend(lot.lot_id for lot in page.lots)
        token = page.next_page_token
        if not token:
            break
        assert pages < 20, "paging does not end"
    assert seen == order
    assert pages >= len(order)

    assert [lot.lot_id for lot in client.iter_lots(user_id, page_size=1)] == order
    assert [lot.lot_id for lot in client.iter_lots(user_id, page_size=3)] == order
    first = client.list_lots(user_id, page_size=3)
    assert [lot.lot_id for lot in first.lots] == order[:3] and first.next_page_token
    rest = client.list_lots(user_id, page_size=100, page_token=first.next_page_token)
    assert [lot.lot_id for lot in rest.lots] == order[3:] and rest.next_page_token == ""

    # Spends draw in the same order: F (priority 0) first, then C (expires first).
    spent = client.spend(user_id, 15)
    assert allocations(spent.transaction) == [(order[0], -10), (order[1], -5)]
    assert [lot.lot_id for lot in client.iter_lots(user_id, page_size=1)] == order[1:]
    with_empty = list(client.iter_lots(user_id, include_empty=True, page_size=2))
    assert [lot.lot_id for lot in with_empty] == order
    assert [lot.remaining for lot in with_empty] == [0, 5, 10, 10, 10, 10, 10]

    # A token belongs to its user and filter.
    token = client.list_lots(user_id, page_size=1).next_page_token
    with pytest.raises(InvalidArgument) as other_filter:
        client.list_lots(user_id, include_empty=True, page_token=token)
    assert "page_token" in {v.field for v in other_filter.value.field_violations}
    with pytest.raises(InvalidArgument):
        client.list_lots(user_id, page_token="not-a-token")
    with pytest.raises(InvalidArgument) as negative:
        client.list_lots(user_id, page_size=-1)
    assert "page_size" in {v.field for v in negative.value.field_violations}
    with pytest.raises(UserNotFound):
        client.list_lots(f"py-absent-{uuid.uuid4()}")


def test_priority_changes_the_draw_order(client: Any, user_id: str) -> None:
    paid = client.top_up(user_id, 100, priority=10).lot
    promo = client.grant(user_id, 50, expire_time=now() + timedelta(days=1)).lot
    assert (paid.priority, promo.priority) == (10, 50)
    assert [lot.lot_id for lot in client.list_lots(user_id).lots] == [paid.lot_id, promo.lot_id]

    spent = client.spend(user_id, 70)
    assert allocations(spent.transaction) == [(paid.lot_id, -70)]
    balance = client.get_balance(user_id)
    assert (balance.paid, balance.promotional) == (30, 50)

    # A grant may go before everything else.
    first = client.grant(user_id, 5, priority=0).lot
    spent = client.spend(user_id, 40)
    assert allocations(spent.transaction) == [(first.lot_id, -5), (paid.lot_id, -30), (promo.lot_id, -5)]
    balance = client.get_balance(user_id)
    assert (balance.balance, balance.paid, balance.promotional) == (45, 0, 45)


def test_grant_of_paid_credits(client: Any, user_id: str) -> None:
    sold = client.grant(user_id, 30, reason="reseller order", category=pb.CREDIT_CATEGORY_PAID)
    assert (sold.lot.category, sold.lot.priority) == (pb.CREDIT_CATEGORY_PAID, 50)
    by_name = client.grant(user_id, 7, category="promotional").lot
    assert by_name.category == pb.CREDIT_CATEGORY_PROMOTIONAL
    also_paid = client.grant(user_id, 3, category="CREDIT_CATEGORY_PAID", priority=60).lot
    assert (also_paid.category, also_paid.priority) == (pb.CREDIT_CATEGORY_PAID, 60)
    balance = client.get_balance(user_id)
    assert (balance.balance, balance.paid, balance.promotional) == (40, 33, 7)
    categories = [(lot.lot_id, lot.category) for lot in client.iter_lots(user_id)]
    assert categories == [
        (sold.lot.lot_id, pb.CREDIT_CATEGORY_PAID),  # 50, older
        (by_name.lot_id, pb.CREDIT_CATEGORY_PROMOTIONAL),  # 50, newer
        (also_paid.lot_id, pb.CREDIT_CATEGORY_PAID),  # 60
    ]
    with pytest.raises(ValueError):
        client.grant(user_id, 1, category="bogus")
    with pytest.raises(ValueError):
        client.grant(user_id, 1, category=9)


def test_bad_lot_terms_are_refused(client: Any, user_id: str) -> None:
    for write in (
        lambda: client.top_up(user_id, 10, priority=101),
        lambda: client.grant(user_id, 10, priority=101),
        lambda: client.top_up(user_id, 10, priority=-1),
    ):
        with pytest.raises(InvalidArgument) as bad_priority:
            write()
        assert bad_priority.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_priority.value.reason == "INVALID_ARGUMENT"
        assert [v.field for v in bad_priority.value.field_violations] == ["priority"]

    past = now() - timedelta(minutes=1)
    for write in (
        lambda: client.top_up(user_id, 10, expire_time=past),
        lambda: client.grant(user_id, 10, expire_time=past),
    ):
        with pytest.raises(InvalidArgument) as in_the_past:
            write()
        assert in_the_past.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in in_the_past.value.field_violations] == ["expire_time"]

    with pytest.raises(ValueError):  # naive datetimes are refused before sending
        client.top_up(user_id, 10, expire_time=datetime.now() + timedelta(days=1))
    # Nothing was written.
    balance = client.get_balance(user_id)
    assert (balance.balance, balance.last_sequence) == (0, 0)
    assert list(client.iter_lots(user_id, include_empty=True)) == []

    # Lot terms are part of what an idempotency key stands for.
    client.top_up(user_id, 10, idempotency_key="order-1", priority=20)
    with pytest.raises(IdempotencyKeyReused):
        client.top_up(user_id, 10, idempotency_key="order-1", priority=30)


def test_unspent_credits_expire(client: Any, user_id: str) -> None:
    paid = client.top_up(user_id, 10).lot
    soon = now() + timedelta(seconds=1.5)
    promo = client.grant(user_id, 30, expire_time=soon).lot
    balance = client.get_balance(user_id)
    assert (balance.balance, balance.promotional, balance.next_expiring_amount) == (40, 30, 30)
    time.sleep(max(0.0, seconds(soon) - time.time()) + 0.5)

    # As of now, without any write since.
    balance = client.get_balance(user_id)
    assert (balance.balance, balance.paid, balance.promotional) == (10, 10, 0)
    assert not balance.HasField("next_expire_time")
    assert [lot.lot_id for lot in client.list_lots(user_id).lots] == [paid.lot_id]
    # The expired lot is still stored with credits (no write since), so a page
    # of one that reaches it comes back short, here empty, with a token after
    # it (AIP-158); iter_lots goes on to the end.
    first = client.list_lots(user_id, page_size=1)
    assert list(first.lots) == [] and first.next_page_token
    second = client.list_lots(user_id, page_size=1, page_token=first.next_page_token)
    assert [lot.lot_id for lot in second.lots] == [paid.lot_id]
    assert [lot.lot_id for lot in client.iter_lots(user_id, page_size=1)] == [paid.lot_id]
    expired = {lot.lot_id: lot for lot in client.iter_lots(user_id, include_empty=True)}
    assert set(expired) == {paid.lot_id, promo.lot_id}
    assert (expired[promo.lot_id].remaining, expired[promo.lot_id].granted_amount) == (0, 30)

    # The next write writes the EXPIRATION down, dated the lot's expire_time.
    client.spend(user_id, 1)
    expirations = list(client.iter_transactions(user_id, types=["EXPIRATION"]))
    assert [t.amount for t in expirations] == [-30]
    assert abs(stamp_seconds(expirations[0].created_at) - seconds(soon)) < 0.001
    stored = client.get_transaction(user_id, expirations[0].transaction_id)
    assert stored.type == pb.TRANSACTION_TYPE_EXPIRATION
    assert allocations(stored) == [(promo.lot_id, -30)]
    assert client.get_balance(user_id).balance == 9
    assert client.verify_ledger(user_id).clean


@pytest.mark.parametrize("write", ["top_up", "grant"])
def test_lot_writes_retry_with_the_same_key(
    make_client: Any, client: Any, server_target: str, fail_first: Any, user_id: str, write: str
) -> None:
    expire_time = now() + timedelta(days=7)
    lossy: FailFirst = fail_first(1, grpc.StatusCode.UNAVAILABLE, reach_server=True)
    retrying = make_client(server_target, interceptors=[lossy], retry=RetryPolicy(initial_backoff=0.01))
    if write == "top_up":
        reply = retrying.top_up(user_id, 40, expire_time=expire_time, priority=5)
    else:
        reply = retrying.grant(user_id, 40, expire_time=expire_time, priority=5, category="paid")
    assert len(lossy.keys) == 2 and lossy.keys[0] and lossy.keys[0] == lossy.keys[1]
    assert reply.transaction.idempotency_key == lossy.keys[0]
    # The retry is answered with the original result, lot included.
    assert reply.lot.lot_id and reply.lot.priority == 5
    assert reply.lot.category == pb.CREDIT_CATEGORY_PAID
    assert reply.lot.source_transaction_id == reply.transaction.transaction_id
    assert allocations(reply.transaction) == [(reply.lot.lot_id, 40)]
    lots = list(client.iter_lots(user_id, include_empty=True))
    assert [lot.lot_id for lot in lots] == [reply.lot.lot_id]  # applied once despite two sends
    assert client.get_balance(user_id).balance == 40


def test_lots_with_api_keys(make_client: Any, keyed_server: Server) -> None:
    admin = make_client(keyed_server.target, api_key=keyed_server.keys["admin"])
    service = make_client(keyed_server.target, api_key=keyed_server.keys["service"])
    reader = make_client(keyed_server.target, api_key=keyed_server.keys["reader"])
    user_id = f"py-{uuid.uuid4()}"
    admin.create_user(user_id, f"{user_id}@example.com")
    paid = service.top_up(user_id, 20, priority=70).lot
    promo = admin.grant(user_id, 5, expire_time=now() + timedelta(hours=1)).lot
    # ListLots needs only the reader role.
    assert [lot.lot_id for lot in reader.iter_lots(user_id)] == [promo.lot_id, paid.lot_id]
    with pytest.raises(PermissionDenied):
        reader.top_up(user_id, 1, priority=1)


def test_both_clients_have_the_lot_methods() -> None:
    for name in ("list_lots", "iter_lots"):
        sync_params = list(inspect.signature(getattr(CreditClient, name)).parameters)
        async_params = list(inspect.signature(getattr(AsyncCreditClient, name)).parameters)
        assert sync_params == async_params == [
            "self",
            "user_id",
            "include_empty",
            "page_size",
            "page_token",
        ]
    assert inspect.iscoroutinefunction(AsyncCreditClient.list_lots)
    assert inspect.isasyncgenfunction(AsyncCreditClient.iter_lots)
    assert inspect.isgeneratorfunction(CreditClient.iter_lots)
    for cls in (CreditClient, AsyncCreditClient):
        assert {"expire_time", "priority"} <= set(inspect.signature(cls.top_up).parameters)
        assert {"expire_time", "priority", "category"} <= set(inspect.signature(cls.grant).parameters)
