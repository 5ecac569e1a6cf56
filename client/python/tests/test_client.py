"""Every RPC, filter and error against a real server, with both clients
(each test runs once with CreditClient and once with AsyncCreditClient)."""

from __future__ import annotations

import datetime
import time
import uuid
from typing import Any

import grpc
import pytest

import credit_client
from credit_client import (
    BalanceOverflow,
    CreditError,
    EmailAlreadyExists,
    IdempotencyKeyReused,
    InsufficientBalance,
    InvalidArgument,
    NotFound,
    NotRefundable,
    RefundExceedsOriginal,
    TransactionNotFound,
    UserAlreadyExists,
    UserNotFound,
    pb,
)


@pytest.fixture
def user_id(client: Any) -> str:
    user_id = f"py-{uuid.uuid4()}"
    client.create_user(user_id, f"{user_id}@example.com", name="Py Test")
    return user_id


def test_users(client: Any) -> None:
    user_id = f"py-{uuid.uuid4()}"
    email = f"{user_id}@example.com"
    created = client.create_user(user_id, email, name="Ada")
    assert (created.user_id, created.email, created.name) == (user_id, email, "Ada")
    assert created.created_at.seconds > 0
    assert client.get_user(user_id) == created
    # The same user again is answered with the existing one: retries are safe.
    assert client.create_user(user_id, email, name="Ada") == created

    with pytest.raises(UserAlreadyExists) as caught:
        client.create_user(user_id, f"other-{email}")
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.user_id == user_id

    with pytest.raises(EmailAlreadyExists) as caught_email:
        client.create_user(f"other-{user_id}", email)
    assert caught_email.value.email == email
    assert isinstance(caught_email.value, credit_client.AlreadyExists)

    nobody = f"nobody-{uuid.uuid4()}"
    with pytest.raises(UserNotFound) as missing:
        client.get_user(nobody)
    err = missing.value
    assert (err.code, err.reason, err.user_id) == (grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND", nobody)
    assert isinstance(err, NotFound) and isinstance(err, CreditError)
    assert not err.retryable


def test_top_up_spend_grant_and_balance(client: Any, user_id: str) -> None:
    balance = client.get_balance(user_id)
    assert (balance.user_id, balance.balance, balance.last_sequence) == (user_id, 0, 0)

    top_up = client.top_up(user_id, 100, metadata={"order": "o-1", "cents": 999})
    assert top_up.balance == 100
    tx = top_up.transaction
    assert (tx.type, tx.amount, tx.sequence, tx.running_balance) == (
        pb.TRANSACTION_TYPE_TOP_UP,
        100,
        1,
        100,
    )
    assert dict(tx.metadata) == {"order": "o-1", "cents": 999}
    assert tx.created_by == "anonymous"  # the server runs without keys

    spend = client.spend(
        user_id, 30, usage={"graph_id": "g-1", "graph_exec_id": "ge-1", "reason": "run"}
    )
    assert spend.balance == 70
    assert spend.transaction.type == pb.TRANSACTION_TYPE_USAGE
    assert spend.transaction.amount == -30
    assert spend.transaction.usage.graph_id == "g-1"
    usage = pb.UsageDetails(node_id="n-1", block_id="b-1")
    assert client.spend(user_id, 5, usage=usage).transaction.usage == usage

    grant = client.grant(user_id, 10, reason="welcome bonus")
    assert grant.balance == 75
    assert (grant.transaction.type, grant.transaction.reason) == (
        pb.TRANSACTION_TYPE_GRANT,
        "welcome bonus",
    )

    balance = client.get_balance(user_id)
    assert (balance.balance, balance.last_sequence) == (75, 4)
    assert client.get_transaction(user_id, spend.transaction.transaction_id) == spend.transaction

    missing = str(uuid.uuid4())
    with pytest.raises(TransactionNotFound) as caught:
        client.get_transaction(user_id, missing)
    assert caught.value.transaction_id == missing

    report = client.verify_ledger(user_id)
    assert report.clean and report.users_checked == 1 and report.transactions_checked == 4
    assert client.verify_ledger().clean


def test_refunds(client: Any, user_id: str) -> None:
    client.top_up(user_id, 100)
    spend = client.spend(user_id, 40).transaction

    partial = client.refund(user_id, spend.transaction_id, amount=15, reason="partial")
    assert partial.balance == 75
    refund_tx = partial.transaction
    assert refund_tx.type == pb.TRANSACTION_TYPE_REFUND
    assert (refund_tx.amount, refund_tx.refunded_transaction_id) == (15, spend.transaction_id)
    assert client.get_transaction(user_id, spend.transaction_id).refunded_amount == 15

    with pytest.raises(RefundExceedsOriginal) as caught:
        client.refund(user_id, spend.transaction_id, amount=100)
    err = caught.value
    assert (err.refundable_amount, err.requested_amount) == (25, 100)
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION

    rest = client.refund(user_id, spend.transaction_id)  # everything left
    assert (rest.transaction.amount, rest.balance) == (25, 100)

    with pytest.raises(NotRefundable) as not_refundable:
        client.refund(user_id, refund_tx.transaction_id)
    assert not_refundable.value.transaction_id == refund_tx.transaction_id
    assert not_refundable.value.transaction_type


def test_insufficient_balance(client: Any, user_id: str) -> None:
    client.top_up(user_id, 70)
    with pytest.raises(InsufficientBalance) as caught:
        client.spend(user_id, 500)
    err = caught.value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert (err.reason, err.domain) == ("INSUFFICIENT_BALANCE", "credit.v1")
    assert err.metadata == {"availableBalance": "70", "requestedAmount": "500"}
    assert (err.available_balance, err.requested_amount) == (70, 500)
    assert err.retryable is False
    assert client.get_balance(user_id).balance == 70  # a failed spend changes nothing


def test_invalid_arguments_carry_field_violations(client: Any, user_id: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        client.spend(user_id, 0)
    err = caught.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in err.field_violations] == ["amount"]
    assert err.field_violations[0].description

    with pytest.raises(InvalidArgument) as caught:
        client.list_transactions(user_id, page_size=-1)
    assert [v.field for v in caught.value.field_violations] == ["page_size"]


def test_balance_overflow(client: Any, user_id: str) -> None:
    top = 2**63 - 1
    client.top_up(user_id, top)
    with pytest.raises(BalanceOverflow) as caught:
        client.grant(user_id, 1)
    assert (caught.value.balance, caught.value.delta) == (top, 1)


def test_idempotency_keys(client: Any, user_id: str) -> None:
    client.top_up(user_id, 100)
    # A key is made per call when none is given: a fresh UUID4 each time.
    made = client.spend(user_id, 1).transaction.idempotency_key
    assert uuid.UUID(made).version == 4
    assert client.spend(user_id, 1).transaction.idempotency_key != made

    key = credit_client.new_idempotency_key()
    first = client.spend(user_id, 40, idempotency_key=key)
    again = client.spend(user_id, 40, idempotency_key=key)
    assert again.transaction.transaction_id == first.transaction.transaction_id
    assert again.transaction.idempotency_key == key
    assert client.get_balance(user_id).balance == 58  # charged once

    with pytest.raises(IdempotencyKeyReused) as caught:
        client.spend(user_id, 41, idempotency_key=key)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.idempotency_key == key
    assert client.get_balance(user_id).balance == 58


def test_pages_and_iteration(client: Any, user_id: str) -> None:
    client.top_up(user_id, 1_000)
    for amount in range(1, 7):
        client.spend(user_id, amount)

    pages = []
    token = ""
    while True:
        page = client.list_transactions(user_id, page_size=3, page_token=token)
        pages.append([t.sequence for t in page.transactions])
        token = page.next_page_token
        if not token:
            break
    assert pages == [[7, 6, 5], [4, 3, 2], [1]]

    everything = list(client.iter_transactions(user_id, page_size=2))
    assert [t.sequence for t in everything] == [7, 6, 5, 4, 3, 2, 1]
    assert everything[0].running_balance == 979
    # Iteration may start from a page token.
    second = client.list_transactions(user_id, page_size=3).next_page_token
    assert [t.sequence for t in client.iter_transactions(user_id, page_size=3, page_token=second)] == [
        4, 3, 2, 1,
    ]
    empty = f"py-empty-{uuid.uuid4()}"
    client.create_user(empty, f"{empty}@example.com")
    assert list(client.iter_transactions(empty)) == []
    with pytest.raises(UserNotFound):
        list(client.iter_transactions(f"nobody-{uuid.uuid4()}"))


def test_filters(client: Any, user_id: str) -> None:
    top_up = client.top_up(user_id, 100).transaction
    client.spend(user_id, 1, usage={"graph_exec_id": "exec-a"})
    client.spend(user_id, 2, usage={"graph_exec_id": "exec-b"})
    grant = client.grant(user_id, 5).transaction
    time.sleep(0.01)
    client.spend(user_id, 3, usage={"graph_exec_id": "exec-a"})

    def amounts(**filters: Any) -> list[int]:
        return [t.amount for t in client.iter_transactions(user_id, page_size=2, **filters)]

    assert amounts(types=[pb.TRANSACTION_TYPE_USAGE]) == [-3, -2, -1]
    assert amounts(types=["GRANT", "TRANSACTION_TYPE_TOP_UP"]) == [5, 100]
    assert amounts(graph_exec_id="exec-a") == [-3, -1]
    assert amounts(created_by="anonymous") == [-3, 5, -2, -1, 100]
    assert amounts(created_by="someone-else") == []

    grant_time = grant.created_at.ToDatetime(tzinfo=datetime.timezone.utc)
    assert amounts(created_after=grant_time) == [-3, 5]
    assert amounts(created_before=grant_time) == [-2, -1, 100]
    assert amounts(created_after=top_up.created_at, created_before=grant.created_at) == [-2, -1, 100]
    assert amounts(created_after=grant.created_at, types=["USAGE"]) == [-3]
    page = client.list_transactions(user_id, types=["USAGE"], graph_exec_id="exec-a", page_size=1)
    assert [t.amount for t in page.transactions] == [-3] and page.next_page_token

    with pytest.raises(ValueError):
        client.list_transactions(user_id, created_after=datetime.datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        client.list_transactions(user_id, types=["NOT_A_TYPE"])


def test_unreachable_server_is_retried_then_unavailable(make_client: Any) -> None:
    with socket_closed_port() as target:
        policy = credit_client.RetryPolicy(max_attempts=3, initial_backoff=0.05)
        credits = make_client(target, retry=policy, deadline=2.0)
        started = time.monotonic()
        with pytest.raises(credit_client.Unavailable) as caught:
            credits.get_balance("anyone")
        elapsed = time.monotonic() - started
    assert caught.value.retryable
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    # Two waits of at least half of 0.05 s and 0.1 s.
    assert elapsed >= 0.075


def socket_closed_port() -> Any:
    """A context manager yielding "127.0.0.1:PORT" where nothing listens."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def closed() -> Any:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        yield f"127.0.0.1:{port}"

    return closed()
