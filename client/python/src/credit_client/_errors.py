"""Errors: one class per google.rpc.ErrorInfo reason of the credit service.

A failed call raises a subclass of :class:`CreditError` picked by the
``ErrorInfo.reason`` the server attaches (domain ``credit.v1``, read from the
``grpc-status-details-bin`` trailer with grpcio-status), never by the message
text, which is for people and may change. Without an ErrorInfo (a transport
failure, a proxy, an older server) the gRPC status code picks the class where
one fits (UNAUTHENTICATED -> :class:`Unauthenticated`, UNAVAILABLE ->
:class:`Unavailable`, ...); an unknown reason, or a known one whose metadata
is incomplete, raises :class:`CreditError` itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Protocol, cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "ERROR_DOMAIN",
    "AlertNotFound",
    "BalanceOverflow",
    "Conflict",
    "CreditError",
    "DatabaseUnavailable",
    "DeadlineExceeded",
    "EmailAlreadyExists",
    "FieldViolation",
    "HoldExpired",
    "HoldNotActive",
    "HoldNotFound",
    "IdempotencyKeyReused",
    "InsufficientBalance",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "NotRefundable",
    "Overloaded",
    "PermissionDenied",
    "RefundExceedsOriginal",
    "ShuttingDown",
    "SlowConsumer",
    "TooManyAlerts",
    "TooManyStreams",
    "TransactionNotFound",
    "Unauthenticated",
    "Unavailable",
    "UserAlreadyExists",
    "UserNotFound",
    "error_class_for_reason",
]

#: The ``ErrorInfo.domain`` of every error the credit service returns.
ERROR_DOMAIN = "credit.v1"

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field, as the server's google.rpc.BadRequest names it."""

    field: str
    description: str


class CreditError(Exception):
    """A failed call: the gRPC status plus what its google.rpc details say.

    ``code`` is the gRPC status code, ``reason`` the ErrorInfo reason ("" when
    there was none), ``message`` the status message (for people),
    ``metadata`` the ErrorInfo metadata, ``field_violations`` the BadRequest
    fields. ``retryable`` says whether sending the same request again later
    (with the same idempotency key) may succeed; the client has already
    retried such failures before raising them.
    """

    #: The ErrorInfo reason this class stands for ("" for the base class).
    REASON: ClassVar[str] = ""
    #: Metadata keys the subclass needs; without them the base class is raised.
    REQUIRED_METADATA: ClassVar[tuple[str, ...]] = ()
    #: Whether the failure is transient.
    RETRYABLE: ClassVar[bool] = False

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
    ) -> None:
        text = f"{code.name}: {message}" if message else code.name
        super().__init__(text + (f" [{reason}]" if reason else ""))
        self.code: grpc.StatusCode = code
        self.message: str = message
        self.reason: str = reason
        self.domain: str = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: list[FieldViolation] = list(field_violations)

    @property
    def retryable(self) -> bool:
        """Whether the same request (same idempotency key) may succeed later."""
        return self.RETRYABLE

    def _int(self, key: str) -> int:
        return int(self.metadata[key])


class InvalidArgument(CreditError):
    """Some request fields are invalid; ``field_violations`` says which."""

    REASON = "INVALID_ARGUMENT"


class BalanceOverflow(CreditError):
    """The change would take the balance outside the int64 range."""

    REASON = "BALANCE_OVERFLOW"
    REQUIRED_METADATA = ("balance", "delta")

    @property
    def balance(self) -> int:
        """The balance at the time of the request."""
        return self._int("balance")

    @property
    def delta(self) -> int:
        """The change asked for."""
        return self._int("delta")


class NotFound(CreditError):
    """The user, transaction, hold or alert does not exist (see the subclasses)."""


class UserNotFound(NotFound):
    """The user does not exist."""

    REASON = "USER_NOT_FOUND"
    REQUIRED_METADATA = ("userId",)

    @property
    def user_id(self) -> str:
        return self.metadata["userId"]


class TransactionNotFound(NotFound):
    """The transaction does not exist (for this user)."""

    REASON = "TRANSACTION_NOT_FOUND"
    REQUIRED_METADATA = ("transactionId",)

    @property
    def transaction_id(self) -> str:
        return self.metadata["transactionId"]


class AlreadyExists(CreditError):
    """A user id or email is taken (see the two subclasses)."""


class UserAlreadyExists(AlreadyExists):
    """A user with this id but another email exists."""

    REASON = "USER_ALREADY_EXISTS"
    REQUIRED_METADATA = ("userId",)

    @property
    def user_id(self) -> str:
        return self.metadata["userId"]


class EmailAlreadyExists(AlreadyExists):
    """Another user has this email."""

    REASON = "EMAIL_ALREADY_EXISTS"
    REQUIRED_METADATA = ("email",)

    @property
    def email(self) -> str:
        return self.metadata["email"]


class IdempotencyKeyReused(CreditError):
    """The idempotency key was used before for a different request."""

    REASON = "IDEMPOTENCY_KEY_REUSED"
    REQUIRED_METADATA = ("idempotencyKey",)

    @property
    def idempotency_key(self) -> str:
        return self.metadata["idempotencyKey"]


class InsufficientBalance(CreditError):
    """The balance is smaller than the spend (or the refund that takes credits)."""

    REASON = "INSUFFICIENT_BALANCE"
    REQUIRED_METADATA = ("availableBalance", "requestedAmount")

    @property
    def available_balance(self) -> int:
        """The balance at the time of the request."""
        return self._int("availableBalance")

    @property
    def requested_amount(self) -> int:
        """The amount asked for."""
        return self._int("requestedAmount")


class RefundExceedsOriginal(CreditError):
    """The refund is larger than what is left of the original transaction."""

    REASON = "REFUND_EXCEEDS_ORIGINAL"
    REQUIRED_METADATA = ("refundableAmount", "requestedAmount")

    @property
    def refundable_amount(self) -> int:
        """What can still be refunded."""
        return self._int("refundableAmount")

    @property
    def requested_amount(self) -> int:
        """The amount asked for."""
        return self._int("requestedAmount")


class NotRefundable(CreditError):
    """The transaction's type cannot be refunded (e.g. a refund)."""

    REASON = "NOT_REFUNDABLE"
    REQUIRED_METADATA = ("transactionId", "transactionType")

    @property
    def transaction_id(self) -> str:
        return self.metadata["transactionId"]

    @property
    def transaction_type(self) -> str:
        return self.metadata["transactionType"]


class HoldNotFound(NotFound):
    """The user has no hold with this id."""

    REASON = "HOLD_NOT_FOUND"
    REQUIRED_METADATA = ("userId", "holdId")

    @property
    def user_id(self) -> str:
        return self.metadata["userId"]

    @property
    def hold_id(self) -> str:
        return self.metadata["holdId"]


class HoldNotActive(CreditError):
    """The hold was already captured or released."""

    REASON = "HOLD_NOT_ACTIVE"
    REQUIRED_METADATA = ("holdId", "state")

    @property
    def hold_id(self) -> str:
        return self.metadata["holdId"]

    @property
    def state(self) -> str:
        """The hold's state as the server names it: "CAPTURED" or "RELEASED"."""
        return self.metadata["state"]


class HoldExpired(CreditError):
    """The hold's expire time passed before it was captured or released; its
    credits are available again."""

    REASON = "HOLD_EXPIRED"
    REQUIRED_METADATA = ("holdId", "expireTime")

    @property
    def hold_id(self) -> str:
        return self.metadata["holdId"]

    @property
    def expire_time(self) -> datetime:
        """When the hold expired (timezone-aware)."""
        return datetime.fromisoformat(self.metadata["expireTime"].replace("Z", "+00:00"))


class AlertNotFound(NotFound):
    """The user has no balance alert with this id (a removed one still counts
    as found: removing it again returns it)."""

    REASON = "ALERT_NOT_FOUND"
    REQUIRED_METADATA = ("alertId",)

    @property
    def user_id(self) -> str:
        """The user asked about ("" if the server did not say)."""
        return self.metadata.get("userId", "")

    @property
    def alert_id(self) -> str:
        return self.metadata["alertId"]


class TooManyAlerts(CreditError):
    """The user already has ``limit`` balance alerts in force
    (FAILED_PRECONDITION); remove one before setting another."""

    REASON = "TOO_MANY_ALERTS"
    REQUIRED_METADATA = ("limit",)

    @property
    def limit(self) -> int:
        """How many alerts in force one user may have."""
        return self._int("limit")


class PermissionDenied(CreditError):
    """The credentials do not allow this call."""

    REASON = "PERMISSION_DENIED"


class Unauthenticated(CreditError):
    """The server did not accept the credentials (or none were given)."""

    REASON = "UNAUTHENTICATED"


class Overloaded(CreditError):
    """The server was at its concurrency limit and shed the call (RESOURCE_EXHAUSTED)."""

    REASON = "OVERLOADED"
    RETRYABLE = True


class DeadlineExceeded(CreditError):
    """No answer arrived within the deadline, on every attempt."""

    REASON = "DEADLINE_EXCEEDED"
    RETRYABLE = True


class Conflict(CreditError):
    """A concurrent write conflicted, on every attempt (ABORTED)."""

    REASON = "CONFLICT"
    RETRYABLE = True


class Unavailable(CreditError):
    """The server could not be reached, on every attempt (UNAVAILABLE)."""

    RETRYABLE = True


class DatabaseUnavailable(Unavailable):
    """The server could not reach its database, on every attempt."""

    REASON = "DATABASE_UNAVAILABLE"


class ShuttingDown(Unavailable):
    """The server is shutting down and ended the stream (or refused the call);
    reconnect, to another server process if there is one. Watches with
    ``resume=True`` reconnect by themselves."""

    REASON = "SHUTTING_DOWN"


class SlowConsumer(CreditError):
    """The server ended a stream because its consumer read too slowly: the
    stream's buffer stayed full for ``waited_seconds`` (RESOURCE_EXHAUSTED).
    Resume with the last cursor processed; watches with ``resume=True`` do so
    by themselves."""

    REASON = "SLOW_CONSUMER"
    REQUIRED_METADATA = ("waitedSeconds",)
    RETRYABLE = True

    @property
    def waited_seconds(self) -> int:
        """How long the server waited for the consumer before it gave up."""
        return self._int("waitedSeconds")


class TooManyStreams(CreditError):
    """A stream limit refused a new watch (RESOURCE_EXHAUSTED): ``resource`` is
    "streams" (the server's limit) or "streamsPerKey" (the limit of one API
    key), ``limit`` how many streams it allows. Close a stream, or try again
    later; watches raise it at once instead of reconnecting."""

    REASON = "TOO_MANY_STREAMS"
    REQUIRED_METADATA = ("resource", "limit")

    @property
    def resource(self) -> str:
        """Which limit was reached: "streams" or "streamsPerKey"."""
        return self.metadata["resource"]

    @property
    def limit(self) -> int:
        """How many open streams the limit allows."""
        return self._int("limit")


class Internal(CreditError):
    """The server failed; the request may be retried later."""

    REASON = "INTERNAL"


_BY_REASON: dict[str, type[CreditError]] = {
    cls.REASON: cls
    for cls in (
        InvalidArgument,
        BalanceOverflow,
        UserNotFound,
        TransactionNotFound,
        UserAlreadyExists,
        EmailAlreadyExists,
        IdempotencyKeyReused,
        InsufficientBalance,
        RefundExceedsOriginal,
        NotRefundable,
        HoldNotFound,
        HoldNotActive,
        HoldExpired,
        AlertNotFound,
        TooManyAlerts,
        PermissionDenied,
        Unauthenticated,
        Overloaded,
        DeadlineExceeded,
        Conflict,
        DatabaseUnavailable,
        ShuttingDown,
        SlowConsumer,
        TooManyStreams,
        Internal,
    )
}

# Statuses without the service's ErrorInfo: from the transport, a proxy or
# an interceptor. Other codes raise the base class.
_BY_CODE: dict[grpc.StatusCode, type[CreditError]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Overloaded,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.INTERNAL: Internal,
}


def error_class_for_reason(reason: str) -> type[CreditError] | None:
    """The class raised for an ErrorInfo reason, or None for an unknown one."""
    return _BY_REASON.get(reason)


class _FailedCall(Protocol):
    """What both grpc.RpcError (sync) and grpc.aio.AioRpcError offer."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...


def status_code(err: grpc.RpcError | grpc.aio.AioRpcError) -> grpc.StatusCode:
    """The status code of a failed call (UNKNOWN for an RpcError that is not a call)."""
    code = getattr(err, "code", None)
    result = code() if callable(code) else None
    return result if isinstance(result, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _rich_status(err: _FailedCall) -> status_pb2.Status | None:
    """The google.rpc.Status of the grpc-status-details-bin trailer, if any."""
    try:
        status: status_pb2.Status | None = rpc_status.from_call(cast(grpc.Call, err))
        return status
    except ValueError:
        # grpcio-status refuses details whose code or message differ from the
        # status line; the details are still the server's, so read them.
        trailers = cast(grpc.Call, err).trailing_metadata() or ()
        for key, value in trailers:
            if key == _DETAILS_KEY and isinstance(value, bytes):
                return status_pb2.Status.FromString(value)
        return None


def from_rpc_error(err: grpc.RpcError | grpc.aio.AioRpcError) -> CreditError:
    """Reads a failed call's status and details into the matching error class."""
    code = status_code(err)
    if not callable(getattr(err, "details", None)):  # not a call (should not happen)
        return _BY_CODE.get(code, CreditError)(code, str(err))
    call = cast(_FailedCall, err)
    message = call.details() or ""
    try:
        status = _rich_status(call)
    except Exception:  # undecodable details: keep what the status line says
        status = None
    info: error_details_pb2.ErrorInfo | None = None
    violations: list[FieldViolation] = []
    for detail in status.details if status is not None else ():
        # Any.Unpack checks the type URL and says whether it matched.
        candidate = error_details_pb2.ErrorInfo()
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(candidate):
            if info is None and candidate.domain == ERROR_DOMAIN:
                info = candidate
        elif detail.Unpack(bad_request):
            violations += [
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            ]
    if info is None:
        cls = _BY_CODE.get(code, CreditError)
        return cls(code, message, field_violations=violations)
    metadata = dict(info.metadata)
    cls = _BY_REASON.get(info.reason, CreditError)
    if not _metadata_complete(cls, metadata):
        cls = CreditError
    return cls(
        code,
        message,
        reason=info.reason,
        domain=info.domain,
        metadata=metadata,
        field_violations=violations,
    )


# Metadata keys whose values are text; the others the classes read are numbers.
_TEXT_KEYS = (
    "userId",
    "transactionId",
    "email",
    "idempotencyKey",
    "transactionType",
    "holdId",
    "alertId",
    "state",
    "resource",
)


def _metadata_complete(cls: type[CreditError], metadata: Mapping[str, str]) -> bool:
    """Whether the metadata holds every key the class reads (numbers as numbers)."""
    for key in cls.REQUIRED_METADATA:
        if key not in metadata:
            return False
        if key == "expireTime":
            try:
                datetime.fromisoformat(metadata[key].replace("Z", "+00:00"))
            except ValueError:
                return False
        elif key not in _TEXT_KEYS:
            try:
                int(metadata[key])
            except ValueError:
                return False
    return True
