"""The asyncio client (grpc.aio): the same methods as CreditClient, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Sequence
from types import TracebackType
from typing import TypeVar

import grpc

from . import _requests as req
from ._config import DEFAULT_DEADLINE, ChannelOptions, TlsConfig, auth_metadata, resolve
from ._errors import from_rpc_error
from ._requests import (
    CreditCategoryLike,
    FeedContentLike,
    HoldStateLike,
    Metadata,
    TimeLike,
    TransactionTypeLike,
    TtlLike,
    Usage,
)
from ._retry import RetryPolicy, is_retryable
from ._watch import FeedMessage, Reconnects, TransactionFeed
from .v1 import credit_pb2 as pb
from .v1 import credit_pb2_grpc as pb_grpc

__all__ = ["AsyncCreditClient"]

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class AsyncCreditClient:
    """An asyncio client for CreditService, on grpc.aio.

    ``target`` is ``host:port`` (or ``http://host:port``; ``https://host:port``
    for TLS with the public roots). ``tls`` turns on TLS with a custom CA
    and/or client certificate; ``api_key`` is sent with every call as
    ``authorization: Bearer <key>`` (use it over TLS). Each attempt of a call
    has ``deadline`` seconds; failures that say "try again" are retried as
    ``retry`` says, every retry of a write carrying the same idempotency key.

    Create it inside the event loop that uses it; use it as an async context
    manager, or ``await close()``. It connects on the
    first call; a server that is down shows up as :class:`Unavailable`.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        tls: TlsConfig | None = None,
        deadline: float = DEFAULT_DEADLINE,
        retry: RetryPolicy | None = None,
        options: ChannelOptions = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        if deadline <= 0:
            raise ValueError("deadline must be positive")
        connection = resolve(target, tls, options)
        self._metadata = auth_metadata(api_key)
        self._deadline = deadline
        self._retry = retry if retry is not None else RetryPolicy()
        if connection.tls is None:
            self._channel = grpc.aio.insecure_channel(
                connection.address, connection.options, interceptors=interceptors
            )
        else:
            self._channel = grpc.aio.secure_channel(
                connection.address,
                connection.tls.credentials(),
                connection.options,
                interceptors=interceptors,
            )
        self._stub = pb_grpc.CreditServiceStub(self._channel)

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncCreditClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        rpc: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
    ) -> _Response:
        # The request (and so its idempotency key) is the same on every attempt.
        attempt = 1
        while True:
            try:
                return await rpc(request, timeout=self._deadline, metadata=self._metadata)
            except grpc.aio.AioRpcError as err:
                if attempt < self._retry.max_attempts and is_retryable(err.code()):
                    await asyncio.sleep(self._retry.backoff(attempt))
                    attempt += 1
                    continue
                raise from_rpc_error(err) from err

    # --- users -----------------------------------------------------------

    async def create_user(self, user_id: str, email: str, name: str = "") -> pb.User:
        """Creates a user with a zero balance; the same id and email again returns
        the existing user. Raises UserAlreadyExists / EmailAlreadyExists."""
        return (await self._call(self._stub.CreateUser, req.create_user(user_id, email, name))).user

    async def get_user(self, user_id: str) -> pb.User:
        """Returns one user; raises UserNotFound."""
        return (await self._call(self._stub.GetUser, pb.GetUserRequest(user_id=user_id))).user

    async def get_balance(self, user_id: str) -> pb.GetBalanceResponse:
        """The user's balance (``.balance``), what active holds keep (``.held``) and
        what may be spent (``.available``), its ``.paid`` and ``.promotional`` parts, when
        credits next expire (``.next_expire_time``, ``.next_expiring_amount``), when it last
        changed and its latest sequence, and the balance alerts in force (``.alerts``,
        lowest threshold first)."""
        return await self._call(self._stub.GetBalance, pb.GetBalanceRequest(user_id=user_id))

    # --- writes ----------------------------------------------------------

    async def top_up(
        self,
        user_id: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        metadata: Metadata | None = None,
        expire_time: TimeLike | None = None,
        priority: int | None = None,
    ) -> pb.TopUpResponse:
        """Adds ``amount`` purchased credits in a new PAID lot that expires at
        ``expire_time`` (default: never) and is drawn at ``priority`` (0-100,
        lower first; default: the server's, 100). Returns the transaction (with
        its ``allocations``), the new ``.balance`` and the ``.lot``."""
        request = req.top_up(user_id, amount, idempotency_key, metadata, expire_time, priority)
        return await self._call(self._stub.TopUp, request)

    async def spend(
        self,
        user_id: str,
        amount: int,
        *,
        usage: Usage | None = None,
        idempotency_key: str | None = None,
        metadata: Metadata | None = None,
    ) -> pb.SpendResponse:
        """Takes ``amount`` credits for metered usage; raises InsufficientBalance."""
        request = req.spend(user_id, amount, usage, idempotency_key, metadata)
        return await self._call(self._stub.Spend, request)

    async def grant(
        self,
        user_id: str,
        amount: int,
        *,
        reason: str = "",
        idempotency_key: str | None = None,
        metadata: Metadata | None = None,
        expire_time: TimeLike | None = None,
        priority: int | None = None,
        category: CreditCategoryLike | None = None,
    ) -> pb.GrantResponse:
        """Gives ``amount`` credits that were not paid for, in a new lot of
        ``category`` (default PROMOTIONAL; PAID for credits sold elsewhere)
        that expires at ``expire_time`` (default: never) and is drawn at
        ``priority`` (0-100, lower first; default: the server's, 50). Returns
        the transaction, the new ``.balance`` and the ``.lot``."""
        request = req.grant(
            user_id, amount, reason, idempotency_key, metadata, expire_time, priority, category
        )
        return await self._call(self._stub.Grant, request)

    async def refund(
        self,
        user_id: str,
        transaction_id: str,
        *,
        amount: int | None = None,
        reason: str = "",
        idempotency_key: str | None = None,
        metadata: Metadata | None = None,
    ) -> pb.RefundResponse:
        """Reverses ``amount`` credits (default: all not yet refunded) of a top-up,
        spend or grant; raises RefundExceedsOriginal / NotRefundable."""
        request = req.refund(user_id, transaction_id, amount, reason, idempotency_key, metadata)
        return await self._call(self._stub.Refund, request)

    # --- history ---------------------------------------------------------

    async def get_transaction(self, user_id: str, transaction_id: str) -> pb.Transaction:
        """Returns one transaction of a user; raises TransactionNotFound."""
        request = pb.GetTransactionRequest(user_id=user_id, transaction_id=transaction_id)
        return (await self._call(self._stub.GetTransaction, request)).transaction

    async def list_transactions(
        self,
        user_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        types: Iterable[TransactionTypeLike] = (),
        created_after: TimeLike | None = None,
        created_before: TimeLike | None = None,
        graph_exec_id: str = "",
        created_by: str = "",
    ) -> pb.ListTransactionsResponse:
        """One page of the user's history, newest first, with ``next_page_token``
        ("" on the last page). ``page_size`` 0 means the server's default (50)."""
        request = req.list_transactions(
            user_id,
            page_size=page_size,
            page_token=page_token,
            types=types,
            created_after=created_after,
            created_before=created_before,
            graph_exec_id=graph_exec_id,
            created_by=created_by,
        )
        return await self._call(self._stub.ListTransactions, request)

    async def iter_transactions(
        self,
        user_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        types: Iterable[TransactionTypeLike] = (),
        created_after: TimeLike | None = None,
        created_before: TimeLike | None = None,
        graph_exec_id: str = "",
        created_by: str = "",
    ) -> AsyncIterator[pb.Transaction]:
        """Every matching transaction, newest first, fetching pages as it is read."""
        request: pb.ListTransactionsRequest | None = req.list_transactions(
            user_id,
            page_size=page_size,
            page_token=page_token,
            types=types,
            created_after=created_after,
            created_before=created_before,
            graph_exec_id=graph_exec_id,
            created_by=created_by,
        )
        while request is not None:
            page = await self._call(self._stub.ListTransactions, request)
            for transaction in page.transactions:
                yield transaction
            request = req.next_page(request, page)

    # --- holds -----------------------------------------------------------

    async def reserve(
        self,
        user_id: str,
        amount: int,
        *,
        ttl: TtlLike | None = None,
        expire_time: TimeLike | None = None,
        usage: Usage | None = None,
        idempotency_key: str | None = None,
        metadata: Metadata | None = None,
    ) -> pb.ReserveResponse:
        """Holds ``amount`` credits (at most the available balance) for work whose
        cost is known later, for ``ttl`` (seconds or a timedelta) or until
        ``expire_time`` (default: the server's TTL). Returns the hold (``.hold``),
        ``.balance`` and ``.available``; raises InsufficientBalance."""
        request = req.reserve(user_id, amount, ttl, expire_time, usage, idempotency_key, metadata)
        return await self._call(self._stub.Reserve, request)

    async def capture(
        self,
        user_id: str,
        hold_id: str,
        amount: int,
        *,
        usage: Usage | None = None,
        idempotency_key: str | None = None,
        metadata: Metadata | None = None,
    ) -> pb.CaptureResponse:
        """Settles an active hold with the real cost ``amount`` (>= 0; 0 releases it):
        one USAGE transaction (``.transaction``), the rest released. Raises
        HoldNotFound, HoldNotActive, HoldExpired or InsufficientBalance."""
        request = req.capture(user_id, hold_id, amount, usage, idempotency_key, metadata)
        return await self._call(self._stub.Capture, request)

    async def release(
        self,
        user_id: str,
        hold_id: str,
        *,
        reason: str = "",
        idempotency_key: str | None = None,
    ) -> pb.ReleaseResponse:
        """Gives all of an active hold back; raises HoldNotFound, HoldNotActive or
        HoldExpired."""
        request = req.release(user_id, hold_id, reason, idempotency_key)
        return await self._call(self._stub.Release, request)

    async def get_hold(self, user_id: str, hold_id: str) -> pb.Hold:
        """Returns one hold of a user; raises HoldNotFound."""
        request = pb.GetHoldRequest(user_id=user_id, hold_id=hold_id)
        return (await self._call(self._stub.GetHold, request)).hold

    async def list_holds(
        self,
        user_id: str,
        *,
        states: Iterable[HoldStateLike] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> pb.ListHoldsResponse:
        """One page of the user's holds, newest first, with ``next_page_token``
        ("" on the last page); ``states`` filters as of now."""
        request = req.list_holds(user_id, states=states, page_size=page_size, page_token=page_token)
        return await self._call(self._stub.ListHolds, request)

    async def iter_holds(
        self,
        user_id: str,
        *,
        states: Iterable[HoldStateLike] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> AsyncIterator[pb.Hold]:
        """Every matching hold, newest first, fetching pages as it is read."""
        request: pb.ListHoldsRequest | None = req.list_holds(
            user_id, states=states, page_size=page_size, page_token=page_token
        )
        while request is not None:
            page = await self._call(self._stub.ListHolds, request)
            for hold in page.holds:
                yield hold
            request = req.next_hold_page(request, page)

    # --- lots ------------------------------------------------------------

    async def list_lots(
        self,
        user_id: str,
        *,
        include_empty: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> pb.ListLotsResponse:
        """One page of the user's lots in draw order (priority, then soonest
        expiry with never-expiring last, then oldest), with ``next_page_token``
        ("" on the last page). Only lots with credits left unless
        ``include_empty``. A page may hold fewer lots than ``page_size`` and
        still have a token after it: :meth:`iter_lots` follows the tokens."""
        request = req.list_lots(
            user_id, include_empty=include_empty, page_size=page_size, page_token=page_token
        )
        return await self._call(self._stub.ListLots, request)

    async def iter_lots(
        self,
        user_id: str,
        *,
        include_empty: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> AsyncIterator[pb.Lot]:
        """Every lot of the user (with credits left unless ``include_empty``), in
        draw order, fetching pages as it is read until the token is empty."""
        request: pb.ListLotsRequest | None = req.list_lots(
            user_id, include_empty=include_empty, page_size=page_size, page_token=page_token
        )
        while request is not None:
            page = await self._call(self._stub.ListLots, request)
            for lot in page.lots:
                yield lot
            request = req.next_lot_page(request, page)

    # --- balance alerts --------------------------------------------------

    async def set_balance_alert(
        self, user_id: str, threshold: int, *, idempotency_key: str | None = None
    ) -> pb.BalanceAlert:
        """Sets a low-balance alert: when a write takes the user's balance from
        ``threshold`` or more to below it, the ledger records one AlertEvent in
        that write's transaction (once per downward crossing; the alert re-arms
        when a later write leaves the balance at or above the threshold).
        Returns the alert, ``armed`` when the balance is at or above the
        threshold now. A threshold that an alert in force already has returns
        that alert; the same ``idempotency_key`` returns the same alert, even
        after it was removed (one is made per call when none is given, and
        every retry reuses it). Raises InvalidArgument (a negative threshold),
        UserNotFound, IdempotencyKeyReused (the key was used with another
        threshold) or TooManyAlerts. Needs the service role."""
        request = req.set_balance_alert(user_id, threshold, idempotency_key)
        return (await self._call(self._stub.SetBalanceAlert, request)).alert

    async def delete_balance_alert(self, user_id: str, alert_id: str) -> pb.BalanceAlert:
        """Removes an alert and returns it with ``deleted_at`` set; removing it
        again returns the same. Raises AlertNotFound. Needs the service role."""
        request = pb.DeleteBalanceAlertRequest(user_id=user_id, alert_id=alert_id)
        return (await self._call(self._stub.DeleteBalanceAlert, request)).alert

    async def list_alert_events(
        self, user_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> pb.ListAlertEventsResponse:
        """One page of the user's alert events (every downward crossing of one of
        its alerts), newest first, with ``next_page_token`` ("" on the last
        page). ``page_size`` 0 means the server's default (50)."""
        request = req.list_alert_events(user_id, page_size=page_size, page_token=page_token)
        return await self._call(self._stub.ListAlertEvents, request)

    async def iter_alert_events(
        self, user_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> AsyncIterator[pb.AlertEvent]:
        """Every alert event of the user, newest first, fetching pages as it is read."""
        request: pb.ListAlertEventsRequest | None = req.list_alert_events(
            user_id, page_size=page_size, page_token=page_token
        )
        while request is not None:
            page = await self._call(self._stub.ListAlertEvents, request)
            for event in page.events:
                yield event
            request = req.next_alert_event_page(request, page)

    # --- watches ---------------------------------------------------------

    async def watch_transactions(
        self,
        user_id: str | None = None,
        *,
        start_after: str | None = None,
        types: Iterable[TransactionTypeLike] | None = None,
        content: FeedContentLike | None = None,
        resume: bool = True,
    ) -> AsyncGenerator[FeedMessage, None]:
        """Every transaction committed for ``user_id`` (None: every user, admin
        role only), in feed order, as it happens: :class:`FeedMessage` objects
        with ``.transaction`` (None in a heartbeat, sent every few seconds when
        nothing happens) and ``.cursor``. Starts right after ``start_after`` (a
        cursor of an earlier message) or, without it, from now; ``types``
        keeps only those transaction types. ``content`` says what the feed
        carries: None or ``pb.FEED_CONTENT_UNSPECIFIED`` transactions only,
        ``"TRANSACTIONS_AND_ALERT_EVENTS"`` also balance alert events (each
        right after the transaction that crossed the threshold),
        ``"ALERT_EVENTS"`` alert events only (``types`` is then ignored). An
        event's message has ``.alert_event`` set and no transaction; a
        reconnect keeps ``types`` and ``content``.

        The call starts when the first message is asked for and lasts until
        the generator is closed (``aclose()``, or dropped after a ``break``) or
        its task is cancelled, which cancels it; it has no deadline. With
        ``resume`` it reconnects by itself when the server ends it (shutting
        down, a transport failure, a consumer too slow), right after the last
        cursor yielded, so nothing is missed or repeated; the waits follow the
        client's retry policy, and the last error is raised once the policy's
        attempts pass without a message. Other failures raise at once
        (InvalidArgument for a bad cursor, PermissionDenied, TooManyStreams,
        ...)."""
        feed = TransactionFeed(req.watch_transactions(user_id, start_after, types, content))
        reconnects = Reconnects(self._retry, resume)
        while True:
            call = self._stub.WatchTransactions(feed.request(), metadata=self._metadata)
            failure: grpc.aio.AioRpcError | None = None
            try:
                async for response in call:
                    reconnects.progressed()
                    yield feed.message(response)
            except grpc.aio.AioRpcError as err:
                failure = err
            finally:
                call.cancel()  # a no-op once the stream ended; stops it when closed early
            wait = reconnects.wait(failure)
            if wait is None:
                return
            await asyncio.sleep(wait)

    async def watch_balance(
        self, user_id: str, *, resume: bool = True
    ) -> AsyncGenerator[pb.GetBalanceResponse, None]:
        """The user's balance (the same message :meth:`get_balance` returns): the
        current value first, then one per change (changes close together may
        come as one; the last always matches the latest committed balance).

        Like :meth:`watch_transactions`: it starts on the first read, has no
        deadline, is cancelled when the iterator is closed and, with
        ``resume``, reconnects by itself (starting again with the current
        value); raises UserNotFound for an unknown user."""
        request = req.watch_balance(user_id)
        reconnects = Reconnects(self._retry, resume)
        while True:
            call = self._stub.WatchBalance(request, metadata=self._metadata)
            failure: grpc.aio.AioRpcError | None = None
            try:
                async for response in call:
                    reconnects.progressed()
                    yield response.balance
            except grpc.aio.AioRpcError as err:
                failure = err
            finally:
                call.cancel()
            wait = reconnects.wait(failure)
            if wait is None:
                return
            await asyncio.sleep(wait)

    # --- operations ------------------------------------------------------

    async def verify_ledger(self, user_id: str = "") -> pb.VerifyLedgerResponse:
        """Checks the ledger's invariants for one user, or every user when empty
        (admin only); ``.clean`` is True when none is violated."""
        return await self._call(self._stub.VerifyLedger, pb.VerifyLedgerRequest(user_id=user_id))
