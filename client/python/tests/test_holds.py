"""Holds against a real server, with both clients (each test runs once with
CreditClient and once with AsyncCreditClient): reserve, capture, release,
get and list, the typed errors, expiry, and retries that reuse the key."""

from __future__ import annotations

import datetime
import time
import uuid
from typing import Any

import grpc
import pytest

from credit_client import (
    HoldExpired,
    HoldNotActive,
    HoldNotFound,
    IdempotencyKeyReused,
    InsufficientBalance,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    pb,
)

from test_retries import FailFirst, fail_first  # noqa: F401 (the fixture)


@pytest.fixture
def user_id(client: Any) -> str:
    user_id = f"py-{uuid.uuid4()}"
    client.create_user(user_id, f"{user_id}@example.com")
    client.top_up(user_id, 100)
    return user_id


def test_reserve_capture_release(client: Any, user_id: str) -> None:
    reserved = client.reserve(
        user_id,
        60,
        ttl=datetime.timedelta(minutes=10),
        usage={"graph_exec_id": "run-1", "reason": "estimate"},
        idempotency_key="job-1",
        metadata={"model": "small"},
    )
    hold = reserved.hold
    assert hold.state == pb.HOLD_STATE_ACTIVE and hold.amount == 60
    assert hold.idempotency_key == "job-1" and hold.usage.graph_exec_id == "run-1"
    assert dict(hold.metadata) == {"model": "small"}
    assert not hold.HasField("closed_at")
    assert 599 <= hold.expire_time.seconds - hold.created_at.seconds <= 601
    assert (reserved.balance, reserved.available) == (100, 40)

    # The same key again answers with the same hold.
    again = client.reserve(
        user_id,
        60,
        ttl=600,
        usage={"graph_exec_id": "run-1", "reason": "estimate"},
        idempotency_key="job-1",
        metadata={"model": "small"},
    )
    assert again.hold.hold_id == hold.hold_id
    balance = client.get_balance(user_id)
    assert (balance.balance, balance.held, balance.available) == (100, 60, 40)
    with pytest.raises(InsufficientBalance):
        client.spend(user_id, 50)

    captured = client.capture(user_id, hold.hold_id, 45)
    assert captured.transaction.amount == -45
    assert captured.transaction.hold_id == hold.hold_id
    assert captured.transaction.usage.graph_exec_id == "run-1"  # the hold's usage
    assert captured.hold.state == pb.HOLD_STATE_CAPTURED and captured.hold.captured_amount == 45
    assert (captured.balance, captured.available) == (55, 55)
    assert client.get_transaction(user_id, captured.transaction.transaction_id).hold_id == hold.hold_id
    assert client.get_hold(user_id, hold.hold_id) == captured.hold

    second = client.reserve(user_id, 20, expire_time=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5))
    released = client.release(user_id, second.hold.hold_id, reason="job cancelled")
    assert released.hold.state == pb.HOLD_STATE_RELEASED
    assert released.hold.release_reason == "job cancelled"
    assert (released.balance, released.available) == (55, 55)

    third = client.reserve(user_id, 10)
    zero = client.capture(user_id, third.hold.hold_id, 0)
    assert not zero.HasField("transaction") and zero.hold.state == pb.HOLD_STATE_RELEASED


def test_hold_errors(client: Any, user_id: str) -> None:
    absent = str(uuid.uuid4())
    with pytest.raises(HoldNotFound) as not_found:
        client.get_hold(user_id, absent)
    assert isinstance(not_found.value, NotFound)
    assert (not_found.value.user_id, not_found.value.hold_id) == (user_id, absent)
    assert not_found.value.code == grpc.StatusCode.NOT_FOUND

    hold = client.reserve(user_id, 30).hold
    client.capture(user_id, hold.hold_id, 30)
    with pytest.raises(HoldNotActive) as not_active:
        client.release(user_id, hold.hold_id)
    assert (not_active.value.hold_id, not_active.value.state) == (hold.hold_id, "CAPTURED")
    assert not_active.value.code == grpc.StatusCode.FAILED_PRECONDITION

    with pytest.raises(InsufficientBalance):
        client.reserve(user_id, 71)
    with pytest.raises(InvalidArgument):
        client.reserve(user_id, 1, ttl=datetime.timedelta(days=30))
    with pytest.raises(ValueError):
        client.reserve(user_id, 1, ttl=60, expire_time=datetime.datetime.now(datetime.timezone.utc))
    client.reserve(user_id, 5, idempotency_key="k")
    with pytest.raises(IdempotencyKeyReused):
        client.reserve(user_id, 6, idempotency_key="k")


def test_expired_hold(client: Any, user_id: str) -> None:
    hold = client.reserve(user_id, 100, ttl=1).hold
    assert client.get_balance(user_id).available == 0
    time.sleep(1.6)
    balance = client.get_balance(user_id)
    assert (balance.held, balance.available) == (0, 100)
    assert client.get_hold(user_id, hold.hold_id).state == pb.HOLD_STATE_EXPIRED
    with pytest.raises(HoldExpired) as expired:
        client.capture(user_id, hold.hold_id, 5)
    assert expired.value.hold_id == hold.hold_id
    assert expired.value.expire_time.tzinfo is not None
    assert abs(expired.value.expire_time.timestamp() - hold.expire_time.ToDatetime().replace(tzinfo=datetime.timezone.utc).timestamp()) <= 1


def test_list_and_iter_holds(client: Any, user_id: str) -> None:
    ids = [client.reserve(user_id, 3).hold.hold_id for _ in range(5)]
    client.capture(user_id, ids[0], 2)
    client.release(user_id, ids[1])

    assert [h.hold_id for h in client.iter_holds(user_id, page_size=2)] == ids[::-1]
    page = client.list_holds(user_id, page_size=2)
    assert len(page.holds) == 2 and page.next_page_token
    rest = client.list_holds(user_id, page_size=10, page_token=page.next_page_token)
    assert [h.hold_id for h in rest.holds] == ids[2::-1] and rest.next_page_token == ""

    active = list(client.iter_holds(user_id, states=["active"]))
    assert [h.hold_id for h in active] == ids[:1:-1]
    closed = client.list_holds(user_id, states=[pb.HOLD_STATE_CAPTURED, "HOLD_STATE_RELEASED"])
    assert {h.hold_id for h in closed.holds} == set(ids[:2])
    with pytest.raises(ValueError):
        client.list_holds(user_id, states=["bogus"])


@pytest.mark.parametrize("write", ["reserve", "capture", "release"])
def test_hold_writes_retry_with_the_same_key(
    make_client: Any, client: Any, server_target: str, fail_first: Any, user_id: str, write: str
) -> None:
    hold_id = "" if write == "reserve" else client.reserve(user_id, 40).hold.hold_id
    lossy: FailFirst = fail_first(1, grpc.StatusCode.UNAVAILABLE, reach_server=True)
    retrying = make_client(server_target, interceptors=[lossy], retry=RetryPolicy(initial_backoff=0.01))
    if write == "reserve":
        reply = retrying.reserve(user_id, 40)
        assert reply.hold.idempotency_key == lossy.keys[0]
    elif write == "capture":
        reply = retrying.capture(user_id, hold_id, 25)
        assert reply.hold.state == pb.HOLD_STATE_CAPTURED
    else:
        reply = retrying.release(user_id, hold_id)
        assert reply.hold.state == pb.HOLD_STATE_RELEASED
    assert len(lossy.keys) == 2 and lossy.keys[0] and lossy.keys[0] == lossy.keys[1]
    balance = client.get_balance(user_id)
    expected = {"reserve": (100, 40), "capture": (75, 0), "release": (100, 0)}[write]
    assert (balance.balance, balance.held) == expected  # applied once despite two sends
