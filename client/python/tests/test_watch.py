"""Watches (watch_transactions, watch_balance) with both clients: against real
servers (order, cursors, resume, heartbeats, balances, a server restart, roles,
limits), and the reconnect rules against scripted streams (which ends resume,
the attempt count, what is raised, what is sent)."""

from __future__ import annotations

import asyncio
import faulthandler
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from conftest import Server, _free_port, start_server
from credit_client import (
    AsyncCreditClient,
    CreditClient,
    FeedMessage,
    InvalidArgument,
    PermissionDenied,
    RetryPolicy,
    ShuttingDown,
    SlowConsumer,
    TooManyStreams,
    Unauthenticated,
    Unavailable,
    UserNotFound,
    pb,
)
from test_errors import failed_call

HEARTBEAT = ("--stream-heartbeat-secs", "1")
#: Rides out a server restart: up to ~5 s of reconnect attempts without a message.
PATIENT = RetryPolicy(max_attempts=30, initial_backoff=0.05, max_backoff=0.2)
#: The channel's own reconnect backoff (1 s at first by default), shortened.
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 200)]


@pytest.fixture(autouse=True)
def hang_guard() -> Iterator[None]:
    """A watch that never yields would block forever: fail loudly instead."""
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def watch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A plain server whose streams send a heartbeat every second."""
    server = start_server(tmp_path_factory.mktemp("watch"), *HEARTBEAT)
    try:
        yield server
    finally:
        server.stop()


def new_user(credits: Any) -> str:
    user_id = f"py-{uuid.uuid4()}"
    credits.create_user(user_id, f"{user_id}@example.com")
    return user_id


def read_transactions(feed: Iterator[FeedMessage], count: int) -> list[FeedMessage]:
    """The next ``count`` messages that carry a transaction (heartbeats skipped;
    they come every second, so this cannot block for long)."""
    deadline = time.monotonic() + 15
    found: list[FeedMessage] = []
    while len(found) < count:
        assert time.monotonic() < deadline, f"only {len(found)} of {count} transactions arrived"
        message = next(feed)
        assert message.cursor
        if message.transaction is None:
            assert message.is_heartbeat
        else:
            found.append(message)
    return found


def ids(messages: list[FeedMessage]) -> list[str]:
    return [m.transaction.transaction_id for m in messages if m.transaction is not None]


def sequences(messages: list[FeedMessage]) -> list[int]:
    return [m.transaction.sequence for m in messages if m.transaction is not None]


# --- against real servers ---------------------------------------------------


def test_a_user_watch_sees_each_write_in_order(make_client: Any, watch_server: Server) -> None:
    credits = make_client(watch_server.target)
    user_id = new_user(credits)
    feed = credits.watch_transactions(user_id)
    # From now, the first message is a heartbeat: where the stream starts.
    start = next(feed)
    assert isinstance(start, FeedMessage)
    assert start.transaction is None and start.is_heartbeat and start.cursor

    written = [
        credits.top_up(user_id, 100).transaction,
        credits.spend(user_id, 30).transaction,
        credits.top_up(user_id, 5).transaction,
    ]
    seen = read_transactions(feed, 3)
    feed.close()
    assert ids(seen) == [t.transaction_id for t in written]
    first = written[0].sequence
    assert sequences(seen) == [first, first + 1, first + 2]
    got = [m.transaction for m in seen if m.transaction is not None]
    assert [t.type for t in got] == [
        pb.TRANSACTION_TYPE_TOP_UP,
        pb.TRANSACTION_TYPE_USAGE,
        pb.TRANSACTION_TYPE_TOP_UP,
    ]
    assert [(t.amount, t.running_balance) for t in got] == [(100, 100), (-30, 70), (5, 75)]
    assert all(t.user_id == user_id for t in got)
    cursors = [start.cursor] + [m.cursor for m in seen]
    assert len(set(cursors)) == len(cursors)


def test_resume_after_the_last_cursor_repeats_nothing(
    make_client: Any, watch_server: Server
) -> None:
    credits = make_client(watch_server.target)
    user_id = new_user(credits)
    feed = credits.watch_transactions(user_id)
    next(feed)
    first = [credits.top_up(user_id, 10 + i).transaction for i in range(5)]
    seen = read_transactions(feed, 3)
    assert ids(seen) == [t.transaction_id for t in first[:3]]
    feed.close()

    later = [credits.spend(user_id, 1 + i).transaction for i in range(2)]
    resumed = credits.watch_transactions(user_id, start_after=seen[-1].cursor)
    rest = read_transactions(resumed, 4)
    assert ids(rest) == [t.transaction_id for t in first[3:] + later]
    # Nothing more: the next message is the heartbeat of a quiet feed.
    assert next(resumed).is_heartbeat
    resumed.close()


def test_heartbeats_on_a_quiet_feed_and_resuming_from_one(
    make_client: Any, watch_server: Server
) -> None:
    credits = make_client(watch_server.target)
    user_id = new_user(credits)
    feed = credits.watch_transactions(user_id)
    began = time.monotonic()
    beats = [next(feed), next(feed)]
    elapsed = time.monotonic() - began
    feed.close()
    assert all(b.is_heartbeat and b.cursor for b in beats)
    # The first right away, the next after the server's heartbeat interval (1 s).
    assert 0.5 < elapsed < 5, elapsed

    # A heartbeat's cursor is a position too: what comes after it is not missed.
    top_up = credits.top_up(user_id, 7).transaction
    resumed = credits.watch_transactions(user_id, start_after=beats[-1].cursor)
    assert ids(read_transactions(resumed, 1)) == [top_up.transaction_id]
    resumed.close()


def test_types_keep_only_those_transactions(make_client: Any, watch_server: Server) -> None:
    credits = make_client(watch_server.target)
    user_id = new_user(credits)
    feed = credits.watch_transactions(user_id, types=["USAGE"])
    next(feed)
    credits.top_up(user_id, 50)
    spends = [credits.spend(user_id, 10).transaction]
    credits.grant(user_id, 5)
    spends.append(credits.spend(user_id, 3).transaction)
    seen = read_transactions(feed, 2)
    feed.close()
    assert ids(seen) == [t.transaction_id for t in spends]


def test_watch_balance_current_value_then_each_change(
    make_client: Any, watch_server: Server
) -> None:
    credits = make_client(watch_server.target)
    user_id = new_user(credits)
    credits.top_up(user_id, 100)
    balances = credits.watch_balance(user_id)
    current = next(balances)
    assert isinstance(current, pb.GetBalanceResponse)
    assert (current.user_id, current.balance, current.available) == (user_id, 100, 100)

    credits.spend(user_id, 30)
    after_spend = next(balances)
    assert (after_spend.balance, after_spend.available) == (70, 70)
    assert after_spend.last_sequence == current.last_sequence + 1
    # A hold changes what is available without a transaction.
    credits.reserve(user_id, 20)
    after_hold = next(balances)
    assert (after_hold.balance, after_hold.held, after_hold.available) == (70, 20, 50)
    balances.close()
    assert credits.get_balance(user_id) == after_hold


def test_watch_balance_of_an_unknown_user_raises_at_once(
    make_client: Any, watch_server: Server
) -> None:
    credits = make_client(watch_server.target, retry=RetryPolicy(initial_backoff=2.0))
    began = time.monotonic()
    with pytest.raises(UserNotFound):
        next(credits.watch_balance(f"py-nobody-{uuid.uuid4()}"))
    assert time.monotonic() - began < 1.5


def test_a_bad_cursor_is_an_invalid_argument(make_client: Any, watch_server: Server) -> None:
    credits = make_client(watch_server.target)
    user_id = new_user(credits)
    # Not a cursor at all, and one from a longer ledger than this one.
    for cursor in ("not-a-cursor", "f1.999999999999"):
        with pytest.raises(InvalidArgument) as caught:
            next(credits.watch_transactions(user_id, start_after=cursor))
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in caught.value.field_violations] == ["start_after"]


class CountWatches:
    """Counts the stream calls a client makes."""

    def __init__(self) -> None:
        self.calls = 0


class SyncCountWatches(CountWatches, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls += 1
        return continuation(details, request)


class AsyncCountWatches(CountWatches, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls += 1
        return await continuation(details, request)


def test_auto_resume_across_a_server_restart(
    make_client: Any, client_kind: str, tmp_path: Path
) -> None:
    port = _free_port()
    server = start_server(tmp_path, *HEARTBEAT, port=port)
    counted = SyncCountWatches() if client_kind == "sync" else AsyncCountWatches()
    try:
        credits = make_client(
            server.target, retry=PATIENT, options=FAST_RECONNECT, interceptors=[counted]
        )
        user_id = new_user(credits)
        feed = credits.watch_transactions(user_id)
        next(feed)
        before = [credits.top_up(user_id, 10 + i).transaction for i in range(3)]
        seen = read_transactions(feed, 2)  # one left unread when the server goes

        server.stop()  # SIGTERM: the server ends the stream with SHUTTING_DOWN
        assert server.process.returncode is not None
        server = start_server(tmp_path, *HEARTBEAT, port=port)  # same port, same database
        after = [credits.spend(user_id, 1 + i).transaction for i in range(2)]

        seen += read_transactions(feed, 3)
        assert ids(seen) == [t.transaction_id for t in before + after]
        assert sequences(seen) == [1, 2, 3, 4, 5]
        assert next(feed).is_heartbeat  # and nothing twice
        feed.close()
        assert counted.calls >= 2  # the iterator reconnected by itself
    finally:
        server.stop()


def test_every_user_needs_the_admin_role(make_client: Any, keyed_server: Server) -> None:
    target, keys = keyed_server.target, keyed_server.keys
    reader = make_client(target, api_key=keys["reader"])
    with pytest.raises(PermissionDenied) as denied:
        next(reader.watch_transactions())
    assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(Unauthenticated):
        next(make_client(target).watch_transactions("anyone"))

    # The key goes with the stream: the admin watches everyone, the reader one user.
    admin = make_client(target, api_key=keys["admin"])
    everyone = admin.watch_transactions()
    next(everyone)
    user_id = new_user(admin)
    one_user = reader.watch_transactions(user_id)
    next(one_user)
    top_up = make_client(target, api_key=keys["service"]).top_up(user_id, 5).transaction
    assert ids(read_transactions(one_user, 1)) == [top_up.transaction_id]
    mine = [m for m in read_transactions(everyone, 1) if m.transaction is not None]
    assert ids(mine) == [top_up.transaction_id]
    everyone.close()
    one_user.close()


def test_stream_limit_raises_at_once_and_closing_frees_a_slot(
    make_client: Any, tmp_path: Path
) -> None:
    server = start_server(tmp_path, "--max-streams-per-key", "2")
    try:
        # A retry would wait at least a second: the refusal must come sooner.
        credits = make_client(server.target, retry=RetryPolicy(initial_backoff=2.0))
        user_id = new_user(credits)
        balances = credits.watch_balance(user_id)
        next(balances)
        feed = credits.watch_transactions(user_id)
        next(feed)
        began = time.monotonic()
        with pytest.raises(TooManyStreams) as refused:
            next(credits.watch_transactions(user_id))
        assert time.monotonic() - began < 1.0
        assert (refused.value.resource, refused.value.limit) == ("streamsPerKey", 2)
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED

        # Closing the iterator cancels its call, and the server frees the slot.
        balances.close()
        deadline = time.monotonic() + 5
        while True:
            try:
                third = credits.watch_transactions(user_id)
                assert next(third).is_heartbeat
                break
            except TooManyStreams:
                assert time.monotonic() < deadline, "closing a watch did not free its stream"
                time.sleep(0.05)
        third.close()
        feed.close()
    finally:
        server.stop()


# --- the reconnect rules, against scripted streams --------------------------


@dataclass(frozen=True)
class RecordingPolicy(RetryPolicy):
    """Records which retry each wait was for, and does not wait."""

    waits: list[int] = field(default_factory=list)

    def backoff(self, retry: int) -> float:
        self.waits.append(retry)
        return 0.0


def tx(sequence: int) -> pb.WatchTransactionsResponse:
    return pb.WatchTransactionsResponse(
        transaction=pb.Transaction(transaction_id=f"t{sequence}", sequence=sequence),
        cursor=f"c{sequence}",
    )


def beat(cursor: str) -> pb.WatchTransactionsResponse:
    return pb.WatchTransactionsResponse(cursor=cursor)


def balance(amount: int) -> pb.WatchBalanceResponse:
    return pb.WatchBalanceResponse(balance=pb.GetBalanceResponse(user_id="u", balance=amount))


def shutting_down() -> grpc.aio.AioRpcError:
    return failed_call(grpc.StatusCode.UNAVAILABLE, reason="SHUTTING_DOWN")


def slow_consumer() -> grpc.aio.AioRpcError:
    return failed_call(
        grpc.StatusCode.RESOURCE_EXHAUSTED, reason="SLOW_CONSUMER", metadata={"waitedSeconds": "1"}
    )


def too_many_streams() -> grpc.aio.AioRpcError:
    return failed_call(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        reason="TOO_MANY_STREAMS",
        metadata={"resource": "streams", "limit": "1"},
    )


def transport_failure() -> grpc.aio.AioRpcError:
    return failed_call(grpc.StatusCode.UNAVAILABLE, "Socket closed")


class ScriptedStream:
    """One call: its messages, then the error that ends it (if any); works as
    the blocking stub's iterator and as the asyncio stub's call."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.cancelled = False

    def _next(self) -> Any:
        if not self.items:
            return None
        item = self.items.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def __iter__(self) -> Iterator[Any]:
        while (item := self._next()) is not None:
            yield item

    def __aiter__(self) -> Any:
        async def messages() -> Any:
            while (item := self._next()) is not None:
                yield item

        return messages()

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class ScriptedStub:
    """Answers each Watch call with the next script; records what was sent."""

    def __init__(self, *scripts: list[Any]) -> None:
        self.scripts = list(scripts)
        self.streams: list[ScriptedStream] = []
        self.requests: list[Any] = []
        self.kwargs: list[dict[str, Any]] = []

    def _call(self, request: Any, **kwargs: Any) -> ScriptedStream:
        assert self.scripts, "the watch connected more often than scripted"
        self.requests.append(request)
        self.kwargs.append(kwargs)
        stream = ScriptedStream(self.scripts.pop(0))
        self.streams.append(stream)
        return stream

    WatchTransactions = _call
    WatchBalance = _call


@dataclass
class Outcome:
    messages: list[Any]
    error: BaseException | None


def run_watch(
    client_kind: str,
    stub: ScriptedStub,
    method: str,
    *args: Any,
    take: int | None = None,
    retry: RetryPolicy | None = None,
    **kwargs: Any,
) -> Outcome:
    """Reads ``method``'s iterator (all of it, or ``take`` messages and then
    closes it) with a client of ``client_kind`` whose stub is ``stub``."""
    messages: list[Any] = []
    error: BaseException | None = None
    options: dict[str, Any] = {"api_key": "ck_test", "retry": retry or RecordingPolicy()}
    if client_kind == "sync":
        client = CreditClient("127.0.0.1:9", **options)
        client._stub = stub  # type: ignore[assignment]
        iterator = getattr(client, method)(*args, **kwargs)
        try:
            for message in iterator:
                messages.append(message)
                if take is not None and len(messages) == take:
                    iterator.close()
                    break
        except Exception as err:
            error = err
        client.close()
        return Outcome(messages, error)

    async def main() -> Outcome:
        nonlocal error
        client = AsyncCreditClient("127.0.0.1:9", **options)
        client._stub = stub  # type: ignore[assignment]
        iterator = getattr(client, method)(*args, **kwargs)
        try:
            async for message in iterator:
                messages.append(message)
                if take is not None and len(messages) == take:
                    await iterator.aclose()
                    break
        except Exception as err:
            error = err
        await client.close()
        return Outcome(messages, error)

    return asyncio.run(main())


def test_every_resumable_end_reconnects_after_the_last_cursor(client_kind: str) -> None:
    stub = ScriptedStub(
        [beat("c0"), tx(1), shutting_down()],
        [tx(2), slow_consumer()],
        [transport_failure()],  # no message: the next wait is longer
        [tx(3), beat("c3b")],  # ends without an error
        [tx(4), too_many_streams()],  # not resumed
    )
    policy = RecordingPolicy()
    outcome = run_watch(client_kind, stub, "watch_transactions", "u", retry=policy)
    assert isinstance(outcome.error, TooManyStreams)
    assert [(m.transaction.sequence if m.transaction else None, m.cursor) for m in outcome.messages] == [
        (None, "c0"),
        (1, "c1"),
        (2, "c2"),
        (3, "c3"),
        (None, "c3b"),
        (4, "c4"),
    ]
    # Each connection starts right after the last cursor yielded (a heartbeat's too).
    assert [r.start_after for r in stub.requests] == ["", "c1", "c2", "c2", "c3b"]
    assert all(r.user_id == "u" for r in stub.requests)
    # The count starts again after every message.
    assert policy.waits == [1, 1, 2, 1]
    # The key goes with every call, and no deadline does.
    for kwargs in stub.kwargs:
        assert kwargs.get("metadata") == (("authorization", "Bearer ck_test"),)
        assert kwargs.get("timeout") is None
    assert all(s.cancelled for s in stub.streams)


def test_attempts_used_up_without_a_message_raise_the_last_error(client_kind: str) -> None:
    stub = ScriptedStub(
        [tx(1), transport_failure()],
        [transport_failure()],
        [shutting_down()],
    )
    policy = RecordingPolicy(max_attempts=3)
    outcome = run_watch(client_kind, stub, "watch_transactions", "u", retry=policy)
    assert isinstance(outcome.error, ShuttingDown)
    assert isinstance(outcome.error, Unavailable)
    assert [m.cursor for m in outcome.messages] == ["c1"]
    assert [r.start_after for r in stub.requests] == ["", "c1", "c1"]
    assert policy.waits == [1, 2]


def test_the_original_start_and_filters_are_kept_until_a_message(client_kind: str) -> None:
    stub = ScriptedStub([shutting_down()], [tx(8)])
    outcome = run_watch(
        client_kind,
        stub,
        "watch_transactions",
        start_after="c7",
        types=["USAGE", pb.TRANSACTION_TYPE_GRANT],
        take=1,
    )
    assert outcome.error is None
    assert [r.start_after for r in stub.requests] == ["c7", "c7"]
    for request in stub.requests:
        assert request.user_id == ""  # every user
        assert list(request.types) == [pb.TRANSACTION_TYPE_USAGE, pb.TRANSACTION_TYPE_GRANT]
    assert stub.streams[-1].cancelled  # closed early: the call is cancelled


def test_without_resume_every_end_is_final(client_kind: str) -> None:
    stub = ScriptedStub([tx(1), slow_consumer()])
    outcome = run_watch(client_kind, stub, "watch_transactions", "u", resume=False)
    assert isinstance(outcome.error, SlowConsumer)
    assert outcome.error.waited_seconds == 1
    assert len(outcome.messages) == 1 and len(stub.requests) == 1

    ended = ScriptedStub([tx(1)])
    outcome = run_watch(client_kind, ended, "watch_transactions", "u", resume=False)
    assert outcome.error is None and len(outcome.messages) == 1


def test_other_failures_raise_at_once(client_kind: str) -> None:
    denied = failed_call(grpc.StatusCode.PERMISSION_DENIED, reason="PERMISSION_DENIED")
    stub = ScriptedStub([denied])
    outcome = run_watch(client_kind, stub, "watch_transactions")
    assert isinstance(outcome.error, PermissionDenied)
    assert len(stub.requests) == 1
    # A RESOURCE_EXHAUSTED that is not SLOW_CONSUMER is not resumed either.
    stub = ScriptedStub([too_many_streams()])
    assert isinstance(run_watch(client_kind, stub, "watch_balance", "u").error, TooManyStreams)
    assert len(stub.requests) == 1


def test_watch_balance_reconnects_and_starts_with_the_current_value(client_kind: str) -> None:
    stub = ScriptedStub(
        [balance(100), shutting_down()],
        [transport_failure()],
        [balance(100), balance(70)],
    )
    policy = RecordingPolicy()
    outcome = run_watch(client_kind, stub, "watch_balance", "u", take=3, retry=policy)
    assert outcome.error is None
    assert [b.balance for b in outcome.messages] == [100, 100, 70]
    assert all(isinstance(b, pb.GetBalanceResponse) for b in outcome.messages)
    assert [r.user_id for r in stub.requests] == ["u", "u", "u"]
    assert policy.waits == [1, 2]
    assert all(s.cancelled for s in stub.streams)
