"""A small Python client for the credit.v1 CreditService.

    from credit_client import CreditClient, InsufficientBalance

    with CreditClient("127.0.0.1:50051") as credits:
        credits.create_user("alice", "alice@example.com")
        credits.top_up("alice", 100)
        try:
            credits.spend("alice", 500)
        except InsufficientBalance as err:
            print(err.available_balance, err.requested_amount)

Every write carries an idempotency key (one is made per call when the caller
gives none), so the client retries UNAVAILABLE and ABORTED with the same key
and the server applies the write at most once. Failures raise CreditError (or
a subclass picked by the google.rpc.ErrorInfo reason), read with grpcio-status.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import generate_stubs

sys.path.insert(0, str(generate_stubs.ensure()))
from credit.v1 import credit_pb2 as pb  # noqa: E402  (generated just above)
from credit.v1 import credit_pb2_grpc as pb_grpc  # noqa: E402

__all__ = [
    "CreditClient",
    "CreditError",
    "IdempotencyKeyReused",
    "InsufficientBalance",
    "InvalidArgument",
    "NotFound",
    "pb",
    "pb_grpc",
]

ERROR_DOMAIN = "credit.v1"
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})


class CreditError(Exception):
    """A failed call: the gRPC status plus what its google.rpc details say."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" [{reason}]" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations or [])

    @staticmethod
    def from_rpc_error(err: grpc.RpcError) -> "CreditError":
        """Reads code, message, ErrorInfo and BadRequest from a failed call."""
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        message = err.details() if hasattr(err, "details") else str(err)
        info = error_details_pb2.ErrorInfo()
        has_info = False
        violations: list[tuple[str, str]] = []
        try:
            status = rpc_status.from_call(err)
        except ValueError:  # details disagree with the status line: ignore them
            status = None
        for detail in status.details if status else ():
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and not has_info:
                has_info = detail.Unpack(info)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations += [(v.field, v.description) for v in bad_request.field_violations]
        cls = _ERRORS_BY_REASON.get(info.reason, CreditError) if has_info else CreditError
        return cls(
            code,
            message or "",
            reason=info.reason,
            domain=info.domain,
            metadata=info.metadata,
            field_violations=violations,
        )


class InsufficientBalance(CreditError):
    """Spend (or a refund that takes credits) needs more than the balance holds."""

    @property
    def available_balance(self) -> int:
        return int(self.metadata["availableBalance"])

    @property
    def requested_amount(self) -> int:
        return int(self.metadata["requestedAmount"])


class IdempotencyKeyReused(CreditError):
    """The idempotency key was already used with different parameters."""


class InvalidArgument(CreditError):
    """Some request fields are invalid; see field_violations."""


class NotFound(CreditError):
    """The user or transaction does not exist."""


_ERRORS_BY_REASON: dict[str, type[CreditError]] = {
    "INSUFFICIENT_BALANCE": InsufficientBalance,
    "IDEMPOTENCY_KEY_REUSED": IdempotencyKeyReused,
    "INVALID_ARGUMENT": InvalidArgument,
    "USER_NOT_FOUND": NotFound,
    "TRANSACTION_NOT_FOUND": NotFound,
}


def _struct(metadata: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if metadata is None:
        return None
    value = struct_pb2.Struct()
    value.update(dict(metadata))
    return value


class CreditClient:
    """A blocking client for CreditService; use it as a context manager or call close()."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 5.0,
        max_attempts: int = 3,
        credentials: grpc.ChannelCredentials | None = None,
        interceptors: Iterable[grpc.UnaryUnaryClientInterceptor] = (),
    ) -> None:
        """Connects lazily to ``target`` ("host:port"); plaintext unless credentials are given.

        ``timeout`` is the deadline of each attempt in seconds; ``max_attempts``
        bounds the tries of a call that fails with UNAVAILABLE or ABORTED.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if credentials is None:
            self._channel = grpc.insecure_channel(target)
        else:
            self._channel = grpc.secure_channel(target, credentials)
        channel = grpc.intercept_channel(self._channel, *interceptors)
        self._stub = pb_grpc.CreditServiceStub(channel)
        self._timeout = timeout
        self._max_attempts = max_attempts

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "CreditClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any) -> Any:
        # The request (and so its idempotency key) is the same on every attempt.
        for attempt in range(1, self._max_attempts + 1):
            try:
                return method(request, timeout=self._timeout)
            except grpc.RpcError as err:
                if attempt < self._max_attempts and err.code() in RETRYABLE:
                    time.sleep(0.05 * 2 ** (attempt - 1))
                    continue
                raise CreditError.from_rpc_error(err) from err
        raise AssertionError("unreachable")

    def create_user(self, user_id: str, email: str, name: str = "") -> pb.User:
        """Creates a user (or returns the existing one with the same email)."""
        request = pb.CreateUserRequest(user_id=user_id, email=email, name=name)
        return self._call(self._stub.CreateUser, request).user

    def get_user(self, user_id: str) -> pb.User:
        return self._call(self._stub.GetUser, pb.GetUserRequest(user_id=user_id)).user

    def get_balance(self, user_id: str) -> int:
        """The user's current balance in credits."""
        request = pb.GetBalanceRequest(user_id=user_id)
        return self._call(self._stub.GetBalance, request).balance

    def top_up(
        self,
        user_id: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> pb.TopUpResponse:
        """Adds purchased credits; the response holds the transaction and the new balance."""
        request = pb.TopUpRequest(
            user_id=user_id,
            amount=amount,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            metadata=_struct(metadata),
        )
        return self._call(self._stub.TopUp, request)

    def spend(
        self,
        user_id: str,
        amount: int,
        *,
        idempotency_key: str | None = None,
        usage: Mapping[str, str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> pb.SpendResponse:
        """Takes credits; raises InsufficientBalance when the balance is too low."""
        request = pb.SpendRequest(
            user_id=user_id,
            amount=amount,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            usage=pb.UsageDetails(**usage) if usage else None,
            metadata=_struct(metadata),
        )
        return self._call(self._stub.Spend, request)

    def grant(
        self,
        user_id: str,
        amount: int,
        reason: str = "",
        *,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> pb.GrantResponse:
        """Gives credits that were not paid for."""
        request = pb.GrantRequest(
            user_id=user_id,
            amount=amount,
            reason=reason,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            metadata=_struct(metadata),
        )
        return self._call(self._stub.Grant, request)

    def refund(
        self,
        user_id: str,
        transaction_id: str,
        amount: int | None = None,
        reason: str = "",
        *,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> pb.RefundResponse:
        """Reverses ``amount`` credits (default: all not yet refunded) of a transaction."""
        request = pb.RefundRequest(
            user_id=user_id,
            transaction_id=transaction_id,
            amount=amount,
            reason=reason,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            metadata=_struct(metadata),
        )
        return self._call(self._stub.Refund, request)

    def get_transaction(self, user_id: str, transaction_id: str) -> pb.Transaction:
        request = pb.GetTransactionRequest(user_id=user_id, transaction_id=transaction_id)
        return self._call(self._stub.GetTransaction, request).transaction

    def list_transactions(
        self,
        user_id: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        types: Iterable[int] = (),
    ) -> pb.ListTransactionsResponse:
        """One page of the user's history, newest first."""
        request = pb.ListTransactionsRequest(
            user_id=user_id, page_size=page_size, page_token=page_token, types=list(types)
        )
        return self._call(self._stub.ListTransactions, request)

    def iter_transactions(
        self, user_id: str, *, page_size: int = 0, types: Iterable[int] = ()
    ) -> Iterator[pb.Transaction]:
        """The user's whole history, newest first, fetched page by page."""
        types = list(types)
        token = ""
        while True:
            page = self.list_transactions(
                user_id, page_size=page_size, page_token=token, types=types
            )
            yield from page.transactions
            token = page.next_page_token
            if not token:
                return
