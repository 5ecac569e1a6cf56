"""The caller's story against a real server: user, top-up, spend, errors
with their google.rpc details, idempotent retries and history paging."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from credit_client import (
    CreditClient,
    CreditError,
    IdempotencyKeyReused,
    InsufficientBalance,
    InvalidArgument,
    NotFound,
    pb,
    pb_grpc,
)


@pytest.fixture
def client(server_target):
    with CreditClient(server_target) as credits:
        yield credits


@pytest.fixture
def user_id(client) -> str:
    user_id = f"py-{uuid.uuid4()}"
    client.create_user(user_id, f"{user_id}@example.com", name="Py Test")
    return user_id


def test_create_top_up_spend(client, user_id):
    assert client.get_user(user_id).email == f"{user_id}@example.com"
    assert client.get_balance(user_id) == 0

    top_up = client.top_up(user_id, 100, metadata={"order": "o-1"})
    assert top_up.balance == 100
    assert top_up.transaction.type == pb.TRANSACTION_TYPE_TOP_UP
    assert top_up.transaction.amount == 100
    assert top_up.transaction.sequence == 1
    assert dict(top_up.transaction.metadata) == {"order": "o-1"}

    spend = client.spend(user_id, 30, usage={"graph_id": "g-1", "reason": "run"})
    assert spend.balance == 70
    assert spend.transaction.type == pb.TRANSACTION_TYPE_USAGE
    assert spend.transaction.amount == -30
    assert spend.transaction.running_balance == 70
    assert spend.transaction.usage.graph_id == "g-1"
    assert client.get_balance(user_id) == 70

    fetched = client.get_transaction(user_id, spend.transaction.transaction_id)
    assert fetched == spend.transaction


def test_insufficient_balance_carries_error_info(client, user_id):
    client.top_up(user_id, 70)

    with pytest.raises(InsufficientBalance) as caught:
        client.spend(user_id, 500)
    err = caught.value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.reason == "INSUFFICIENT_BALANCE"
    assert err.domain == "credit.v1"
    assert err.metadata == {"availableBalance": "70", "requestedAmount": "500"}
    assert (err.available_balance, err.requested_amount) == (70, 500)
    assert client.get_balance(user_id) == 70  # a failed spend changes nothing


def test_error_info_read_with_grpcio_status_directly(server_target, client, user_id):
    # What the wrapper does, spelled out on the bare generated stub.
    with grpc.insecure_channel(server_target) as channel:
        stub = pb_grpc.CreditServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Spend(pb.SpendRequest(user_id=user_id, amount=1), timeout=5)
    status = rpc_status.from_call(caught.value)
    assert status is not None
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1, "exactly one ErrorInfo"
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert (info.reason, info.domain) == ("INSUFFICIENT_BALANCE", "credit.v1")
    assert dict(info.metadata) == {"availableBalance": "0", "requestedAmount": "1"}


def test_same_idempotency_key_applies_once(client, user_id):
    client.top_up(user_id, 100)
    key = f"spend-{uuid.uuid4()}"

    first = client.spend(user_id, 40, idempotency_key=key)
    again = client.spend(user_id, 40, idempotency_key=key)
    assert again.transaction.transaction_id == first.transaction.transaction_id
    assert again.transaction.idempotency_key == key
    assert again.balance == first.balance == 60
    assert client.get_balance(user_id) == 60  # charged once

    with pytest.raises(IdempotencyKeyReused) as caught:
        client.spend(user_id, 41, idempotency_key=key)
    assert caught.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert caught.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert client.get_balance(user_id) == 60


class _FakeUnavailable(grpc.RpcError, grpc.Call):
    """What a caller sees when the server applied a write but the reply was lost."""

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "connection reset (simulated)"

    def trailing_metadata(self):
        return ()

    def initial_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False


class _LoseFirstReply(grpc.UnaryUnaryClientInterceptor):
    def __init__(self):
        self.keys = []

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self.keys.append(request.idempotency_key)
        outcome = continuation(client_call_details, request)
        if len(self.keys) > 1:
            return outcome
        outcome.result()  # the server did apply it...
        lost = _FakeUnavailable()

        class _Failed:
            def result(self, timeout=None):
                raise lost  # ...but the caller never hears back

        return _Failed()


def test_retry_after_lost_reply_reuses_the_key(server_target, client, user_id):
    client.top_up(user_id, 50)
    lossy = _LoseFirstReply()
    with CreditClient(server_target, interceptors=[lossy]) as retrying:
        reply = retrying.spend(user_id, 20)

    assert len(lossy.keys) == 2
    first, second = lossy.keys
    assert first and first == second
    assert reply.balance == 30
    assert client.get_balance(user_id) == 30  # applied once despite two sends
    history = list(client.iter_transactions(user_id))
    assert [t.type for t in history] == [pb.TRANSACTION_TYPE_USAGE, pb.TRANSACTION_TYPE_TOP_UP]


def test_history_pages_newest_first(client, user_id):
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
    assert everything[0].running_balance == 1_000 - sum(range(1, 7)) == 979
    assert len({t.transaction_id for t in everything}) == 7

    usage_only = list(client.iter_transactions(user_id, types=[pb.TRANSACTION_TYPE_USAGE]))
    assert [t.amount for t in usage_only] == [-6, -5, -4, -3, -2, -1]


def test_invalid_fields_come_back_as_bad_request(client, user_id):
    with pytest.raises(InvalidArgument) as caught:
        client.spend(user_id, 0)
    err = caught.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in err.field_violations] == ["amount"]

    with pytest.raises(InvalidArgument) as caught:
        client.list_transactions(user_id, page_size=-1)
    assert [field for field, _ in caught.value.field_violations] == ["page_size"]


def test_unknown_user_is_not_found(client):
    with pytest.raises(NotFound) as caught:
        client.get_balance(f"nobody-{uuid.uuid4()}")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "USER_NOT_FOUND"
    assert isinstance(caught.value, CreditError)
