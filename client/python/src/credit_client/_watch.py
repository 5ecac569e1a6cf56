"""Watches (WatchTransactions, WatchBalance): the feed message both clients
yield (a transaction, a balance alert event, or a heartbeat), and when a
watch reconnects by itself (the same rules for both).

A watch is a long-lived server stream, so it has no deadline. The server
ends one with UNAVAILABLE (SHUTTING_DOWN, or the transport failed),
RESOURCE_EXHAUSTED SLOW_CONSUMER (the consumer read too slowly) or, rarely,
without an error; with ``resume=True`` the watch then reconnects after the
retry policy's backoff, right after the cursor of the last message it
yielded (with the same user, types and content), so every transaction and
alert event comes exactly once. A message resets the attempt count; when
the policy's attempts are used up without one, the last error is raised.
Every other failure (INVALID_ARGUMENT, PERMISSION_DENIED, NOT_FOUND,
TOO_MANY_STREAMS, ...) raises its typed error at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from . import _requests as req
from ._errors import CreditError, SlowConsumer, from_rpc_error
from ._retry import RetryPolicy
from .v1 import credit_pb2 as pb

__all__ = ["FeedMessage"]


@dataclass(frozen=True)
class FeedMessage:
    """One message of ``watch_transactions``: a transaction, a balance alert
    event, or a heartbeat (neither).

    ``transaction`` is None in a heartbeat (the server sends one every few
    seconds when nothing matching happens) and in an alert event's message.
    ``alert_event`` is set only when the watch's ``content`` asks for alert
    events (it comes right after the transaction that crossed the threshold);
    None otherwise. ``cursor`` is the position in the feed: store it with what
    you did with the message, and a new watch with ``start_after=cursor``
    gives everything after it exactly once.
    """

    transaction: pb.Transaction | None
    cursor: str
    alert_event: pb.AlertEvent | None = None

    @property
    def is_heartbeat(self) -> bool:
        """Whether this message carries neither a transaction nor an alert event."""
        return self.transaction is None and self.alert_event is None

    @classmethod
    def from_response(cls, response: pb.WatchTransactionsResponse) -> FeedMessage:
        transaction = response.transaction if response.HasField("transaction") else None
        event = response.alert_event if response.HasField("alert_event") else None
        return cls(transaction=transaction, cursor=response.cursor, alert_event=event)


class TransactionFeed:
    """Where a transaction watch stands: the request to (re)connect with."""

    def __init__(self, request: pb.WatchTransactionsRequest) -> None:
        self._request = request
        # The caller's start until a message says more; from "now" the first
        # message (a heartbeat) gives a cursor, so a reconnect never skips.
        self._cursor = request.start_after

    @property
    def cursor(self) -> str:
        """The cursor of the last message yielded (or the original start)."""
        return self._cursor

    def request(self) -> pb.WatchTransactionsRequest:
        """The request for the next connection: right after the last cursor."""
        return req.watch_from(self._request, self._cursor)

    def message(self, response: pb.WatchTransactionsResponse) -> FeedMessage:
        """The message to yield for ``response``, remembering its cursor."""
        message = FeedMessage.from_response(response)
        if message.cursor:
            self._cursor = message.cursor
        return message


def resumable(error: CreditError) -> bool:
    """Whether a watch that ended with ``error`` reconnects (with ``resume=True``)."""
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return True  # SHUTTING_DOWN, the database, or the transport
    return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == SlowConsumer.REASON


class Reconnects:
    """One watch's reconnect count, following the client's retry policy."""

    def __init__(self, policy: RetryPolicy, resume: bool) -> None:
        self._policy = policy
        self._resume = resume
        self._attempt = 1

    def progressed(self) -> None:
        """A message arrived: the next failure starts counting afresh."""
        self._attempt = 1

    def wait(self, failure: grpc.RpcError | None) -> float | None:
        """After a stream ended with ``failure`` (None: without an error): the
        seconds to wait before reconnecting, or None to end the watch.

        Raises the typed error when the watch must not go on: the failure is
        not one to resume after, ``resume`` is off, or the attempts are used
        up without a message."""
        error = None if failure is None else from_rpc_error(failure)
        if error is not None and not (self._resume and resumable(error)):
            raise error from failure
        if not self._resume:
            return None
        if self._attempt >= self._policy.max_attempts:
            if error is not None:
                raise error from failure
            return None
        wait = self._policy.backoff(self._attempt)
        self._attempt += 1
        return wait
