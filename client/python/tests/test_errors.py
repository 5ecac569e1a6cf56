"""The error classes, fed statuses the server may send (no server needed):
every ErrorInfo reason, unknown reasons, foreign domains, no details at all."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

import credit_client
from credit_client import CreditError
from credit_client._errors import from_rpc_error

# reason -> (gRPC code the server sends it with, class, metadata, retryable)
REASONS: dict[str, tuple[grpc.StatusCode, type[CreditError], dict[str, str], bool]] = {
    "INVALID_ARGUMENT": (grpc.StatusCode.INVALID_ARGUMENT, credit_client.InvalidArgument, {}, False),
    "BALANCE_OVERFLOW": (
        grpc.StatusCode.INVALID_ARGUMENT,
        credit_client.BalanceOverflow,
        {"balance": "9", "delta": "2"},
        False,
    ),
    "USER_NOT_FOUND": (grpc.StatusCode.NOT_FOUND, credit_client.UserNotFound, {"userId": "u"}, False),
    "TRANSACTION_NOT_FOUND": (
        grpc.StatusCode.NOT_FOUND,
        credit_client.TransactionNotFound,
        {"userId": "u", "transactionId": "t"},
        False,
    ),
    "USER_ALREADY_EXISTS": (
        grpc.StatusCode.ALREADY_EXISTS,
        credit_client.UserAlreadyExists,
        {"userId": "u"},
        False,
    ),
    "EMAIL_ALREADY_EXISTS": (
        grpc.StatusCode.ALREADY_EXISTS,
        credit_client.EmailAlreadyExists,
        {"email": "a@b"},
        False,
    ),
    "IDEMPOTENCY_KEY_REUSED": (
        grpc.StatusCode.ALREADY_EXISTS,
        credit_client.IdempotencyKeyReused,
        {"idempotencyKey": "k"},
        False,
    ),
    "INSUFFICIENT_BALANCE": (
        grpc.StatusCode.FAILED_PRECONDITION,
        credit_client.InsufficientBalance,
        {"availableBalance": "3", "requestedAmount": "4"},
        False,
    ),
    "REFUND_EXCEEDS_ORIGINAL": (
        grpc.StatusCode.FAILED_PRECONDITION,
        credit_client.RefundExceedsOriginal,
        {"transactionId": "t", "refundableAmount": "5", "requestedAmount": "6"},
        False,
    ),
    "NOT_REFUNDABLE": (
        grpc.StatusCode.FAILED_PRECONDITION,
        credit_client.NotRefundable,
        {"transactionId": "t", "transactionType": "REFUND"},
        False,
    ),
    "HOLD_NOT_FOUND": (
        grpc.StatusCode.NOT_FOUND,
        credit_client.HoldNotFound,
        {"userId": "u", "holdId": "h"},
        False,
    ),
    "HOLD_NOT_ACTIVE": (
        grpc.StatusCode.FAILED_PRECONDITION,
        credit_client.HoldNotActive,
        {"holdId": "h", "state": "CAPTURED"},
        False,
    ),
    "HOLD_EXPIRED": (
        grpc.StatusCode.FAILED_PRECONDITION,
        credit_client.HoldExpired,
        {"holdId": "h", "expireTime": "2030-01-02T03:04:05+00:00"},
        False,
    ),
    "ALERT_NOT_FOUND": (
        grpc.StatusCode.NOT_FOUND,
        credit_client.AlertNotFound,
        {"userId": "u", "alertId": "a"},
        False,
    ),
    "TOO_MANY_ALERTS": (
        grpc.StatusCode.FAILED_PRECONDITION,
        credit_client.TooManyAlerts,
        {"limit": "20"},
        False,
    ),
    "PERMISSION_DENIED": (grpc.StatusCode.PERMISSION_DENIED, credit_client.PermissionDenied, {}, False),
    "UNAUTHENTICATED": (grpc.StatusCode.UNAUTHENTICATED, credit_client.Unauthenticated, {}, False),
    "OVERLOADED": (grpc.StatusCode.RESOURCE_EXHAUSTED, credit_client.Overloaded, {}, True),
    "DEADLINE_EXCEEDED": (grpc.StatusCode.DEADLINE_EXCEEDED, credit_client.DeadlineExceeded, {}, True),
    "CONFLICT": (grpc.StatusCode.ABORTED, credit_client.Conflict, {}, True),
    "DATABASE_UNAVAILABLE": (grpc.StatusCode.UNAVAILABLE, credit_client.DatabaseUnavailable, {}, True),
    "INTERNAL": (grpc.StatusCode.INTERNAL, credit_client.Internal, {}, False),
    "SHUTTING_DOWN": (grpc.StatusCode.UNAVAILABLE, credit_client.ShuttingDown, {}, True),
    "SLOW_CONSUMER": (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        credit_client.SlowConsumer,
        {"waitedSeconds": "10"},
        True,
    ),
    "TOO_MANY_STREAMS": (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        credit_client.TooManyStreams,
        {"resource": "streamsPerKey", "limit": "100"},
        False,
    ),
}


def failed_call(
    code: grpc.StatusCode,
    message: str = "text that must not matter",
    *,
    reason: str | None = None,
    domain: str = "credit.v1",
    metadata: dict[str, str] | None = None,
    violations: list[tuple[str, str]] | None = None,
    status_message: str | None = None,
) -> grpc.aio.AioRpcError:
    """A failed call as the server sends it: status plus grpc-status-details-bin."""
    details = []
    if reason is not None:
        info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata or {})
        details.append(info)
    if violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in violations
                ]
            )
        )
    trailers = grpc.aio.Metadata()
    if details:
        packed = []
        for detail in details:
            value = any_pb2.Any()
            value.Pack(detail)
            packed.append(value)
        status = status_pb2.Status(
            code=code.value[0],
            message=message if status_message is None else status_message,
            details=packed,
        )
        trailers.add("grpc-status-details-bin", status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details=message)


@pytest.mark.parametrize("reason", sorted(REASONS))
def test_every_reason_has_its_class(reason: str) -> None:
    code, cls, metadata, retryable = REASONS[reason]
    err = from_rpc_error(failed_call(code, reason=reason, metadata=metadata))
    assert type(err) is cls
    assert isinstance(err, CreditError)
    assert (err.code, err.reason, err.domain, err.metadata) == (code, reason, "credit.v1", metadata)
    assert err.message == "text that must not matter"
    assert err.retryable is retryable
    assert cls.REASON == reason
    assert credit_client.error_class_for_reason(reason) is cls


def test_typed_metadata_attributes() -> None:
    def make(reason: str) -> CreditError:
        code, _, metadata, _ = REASONS[reason]
        return from_rpc_error(failed_call(code, reason=reason, metadata=metadata))

    insufficient = make("INSUFFICIENT_BALANCE")
    assert isinstance(insufficient, credit_client.InsufficientBalance)
    assert (insufficient.available_balance, insufficient.requested_amount) == (3, 4)
    refund = make("REFUND_EXCEEDS_ORIGINAL")
    assert isinstance(refund, credit_client.RefundExceedsOriginal)
    assert (refund.refundable_amount, refund.requested_amount) == (5, 6)
    overflow = make("BALANCE_OVERFLOW")
    assert isinstance(overflow, credit_client.BalanceOverflow)
    assert (overflow.balance, overflow.delta) == (9, 2)
    slow = make("SLOW_CONSUMER")
    assert isinstance(slow, credit_client.SlowConsumer)
    assert slow.waited_seconds == 10
    streams = make("TOO_MANY_STREAMS")
    assert isinstance(streams, credit_client.TooManyStreams)
    assert (streams.resource, streams.limit) == ("streamsPerKey", 100)
    alert = make("ALERT_NOT_FOUND")
    assert isinstance(alert, credit_client.AlertNotFound)
    assert isinstance(alert, credit_client.NotFound)
    assert (alert.user_id, alert.alert_id) == ("u", "a")
    alerts = make("TOO_MANY_ALERTS")
    assert isinstance(alerts, credit_client.TooManyAlerts)
    assert alerts.limit == 20
    # A shutdown is an Unavailable: ``except Unavailable`` catches it too.
    assert isinstance(make("SHUTTING_DOWN"), credit_client.Unavailable)


def test_bad_request_violations() -> None:
    err = from_rpc_error(
        failed_call(
            grpc.StatusCode.INVALID_ARGUMENT,
            reason="INVALID_ARGUMENT",
            violations=[("amount", "must be > 0"), ("usage.node_id", "too long")],
        )
    )
    assert isinstance(err, credit_client.InvalidArgument)
    assert [(v.field, v.description) for v in err.field_violations] == [
        ("amount", "must be > 0"),
        ("usage.node_id", "too long"),
    ]


def test_unknown_reason_raises_the_base_class() -> None:
    err = from_rpc_error(failed_call(grpc.StatusCode.UNAVAILABLE, reason="SOMETHING_NEW"))
    assert type(err) is CreditError
    assert err.reason == "SOMETHING_NEW"
    assert err.retryable is False


def test_incomplete_metadata_raises_the_base_class() -> None:
    err = from_rpc_error(
        failed_call(grpc.StatusCode.FAILED_PRECONDITION, reason="INSUFFICIENT_BALANCE", metadata={})
    )
    assert type(err) is CreditError
    assert err.reason == "INSUFFICIENT_BALANCE"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, credit_client.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, credit_client.PermissionDenied),
        (grpc.StatusCode.UNAVAILABLE, credit_client.Unavailable),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, credit_client.Overloaded),
        (grpc.StatusCode.DEADLINE_EXCEEDED, credit_client.DeadlineExceeded),
        (grpc.StatusCode.ABORTED, credit_client.Conflict),
        (grpc.StatusCode.INTERNAL, credit_client.Internal),
        (grpc.StatusCode.NOT_FOUND, CreditError),
        (grpc.StatusCode.UNIMPLEMENTED, CreditError),
    ],
)
def test_without_error_info_the_code_picks_the_class(
    code: grpc.StatusCode, cls: type[CreditError]
) -> None:
    err = from_rpc_error(failed_call(code, "no details"))
    assert type(err) is cls
    assert (err.code, err.reason, err.message) == (code, "", "no details")
    # An ErrorInfo of another domain is not the service's: the code decides too.
    foreign = from_rpc_error(failed_call(code, reason="USER_NOT_FOUND", domain="example.com"))
    assert type(foreign) is cls


def test_details_whose_message_differs_are_still_read() -> None:
    # grpcio-status refuses such details; the client reads them anyway.
    err = from_rpc_error(
        failed_call(
            grpc.StatusCode.NOT_FOUND,
            "status line",
            reason="USER_NOT_FOUND",
            metadata={"userId": "u"},
            status_message="other text",
        )
    )
    assert isinstance(err, credit_client.UserNotFound)
    assert err.message == "status line"


def test_every_class_is_exported_and_documented() -> None:
    for reason, (_, cls, _, _) in REASONS.items():
        assert getattr(credit_client, cls.__name__) is cls, reason
        assert cls.__doc__
