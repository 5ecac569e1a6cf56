"""Retries: which failures are retried, how long the client waits, and that
every retry of a write carries the same idempotency key (so a write whose
reply was lost is applied once)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from credit_client import (
    RETRYABLE_CODES,
    Conflict,
    DeadlineExceeded,
    InsufficientBalance,
    Overloaded,
    RetryPolicy,
    pb,
)

FAST = RetryPolicy(initial_backoff=0.01)


def _failure(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    # AioRpcError is a grpc.RpcError and a call (code(), details(), trailers),
    # which is all either client reads.
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="injected")


class FailFirst:
    """Fails the first ``failures`` attempts of each call with ``code``.

    With ``reach_server`` each failed attempt is sent first and its reply
    dropped (the server applied it; the caller hears ``code``).
    """

    def __init__(self, failures: int, code: grpc.StatusCode, reach_server: bool) -> None:
        self.failures, self.code, self.reach_server = failures, code, reach_server
        self.keys: list[str] = []

    def fail(self, request: Any) -> bool:
        self.keys.append(getattr(request, "idempotency_key", ""))
        return len(self.keys) <= self.failures


class SyncFailFirst(FailFirst, grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if not self.fail(request):
            return continuation(details, request)
        if self.reach_server:
            continuation(details, request).result()
        raise _failure(self.code)


class AsyncFailFirst(FailFirst, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if not self.fail(request):
            return await continuation(details, request)
        if self.reach_server:
            await (await continuation(details, request))
        raise _failure(self.code)


@pytest.fixture
def fail_first(client_kind: str) -> Callable[..., FailFirst]:
    def make(failures: int, code: grpc.StatusCode, reach_server: bool = False) -> FailFirst:
        cls = SyncFailFirst if client_kind == "sync" else AsyncFailFirst
        return cls(failures, code, reach_server)

    return make


def test_lost_reply_is_retried_with_the_same_key(
    make_client: Any, client: Any, server_target: str, fail_first: Any
) -> None:
    user_id = f"py-{uuid.uuid4()}"
    client.create_user(user_id, f"{user_id}@example.com")
    client.top_up(user_id, 50)

    lossy = fail_first(1, grpc.StatusCode.UNAVAILABLE, reach_server=True)
    retrying = make_client(server_target, interceptors=[lossy], retry=FAST)
    reply = retrying.spend(user_id, 20)

    assert len(lossy.keys) == 2
    first, second = lossy.keys
    assert first and first == second == reply.transaction.idempotency_key
    assert reply.balance == 30
    assert client.get_balance(user_id).balance == 30  # applied once despite two sends
    history = list(client.iter_transactions(user_id))
    assert [t.type for t in history] == [pb.TRANSACTION_TYPE_USAGE, pb.TRANSACTION_TYPE_TOP_UP]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded),
        (grpc.StatusCode.ABORTED, Conflict),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
    ],
)
def test_transient_codes_use_the_whole_budget(
    make_client: Any, server_target: str, fail_first: Any, code: grpc.StatusCode, error: type
) -> None:
    # Three failures then success: the fourth attempt (the default budget) wins.
    recovering = fail_first(3, code)
    user_id = f"py-{uuid.uuid4()}"
    credits = make_client(server_target, interceptors=[recovering], retry=FAST)
    assert credits.create_user(user_id, f"{user_id}@example.com").user_id == user_id
    assert len(recovering.keys) == 4

    # Always failing: four attempts, then the typed, retryable error.
    failing = fail_first(10, code)
    credits = make_client(server_target, interceptors=[failing], retry=FAST)
    with pytest.raises(error) as caught:
        credits.top_up(user_id, 1)
    assert caught.value.retryable and caught.value.code == code
    assert len(failing.keys) == 4
    assert len(set(failing.keys)) == 1  # one key for every attempt


def test_other_failures_are_not_retried(make_client: Any, server_target: str, fail_first: Any) -> None:
    counting = fail_first(0, grpc.StatusCode.OK)
    credits = make_client(server_target, interceptors=[counting], retry=FAST)
    user_id = f"py-{uuid.uuid4()}"
    credits.create_user(user_id, f"{user_id}@example.com")
    with pytest.raises(InsufficientBalance):
        credits.spend(user_id, 1)
    assert len(counting.keys) == 2  # create_user + one spend attempt


def test_deadline_applies_to_each_attempt(make_client: Any) -> None:
    # A listener that accepts connections and never answers.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            listener.settimeout(0.1)
            while not stop.is_set():
                try:
                    accepted.append(listener.accept()[0])
                except OSError:
                    pass

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            target = "127.0.0.1:%d" % listener.getsockname()[1]
            credits = make_client(target, deadline=0.3, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01))
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded) as caught:
                credits.get_balance("anyone")
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            thread.join()
            for conn in accepted:
                conn.close()
    assert caught.value.retryable
    assert 0.6 <= elapsed < 5.0  # two attempts of 0.3 s each


def test_backoff_is_equal_jitter_within_bounds() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff) == (4, 0.1, 2.0)
    assert [policy.ceiling(n) for n in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.4])
    assert policy.ceiling(100) == 2.0
    assert policy.ceiling(10_000) == 2.0
    for retry in range(1, 12):
        ceiling = policy.ceiling(retry)
        for _ in range(50):
            assert ceiling / 2 <= policy.backoff(retry) <= ceiling
    assert RetryPolicy.none().max_attempts == 1
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    assert RETRYABLE_CODES == {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
