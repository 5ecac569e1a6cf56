"""Request messages, built the same way for the blocking and the asyncio client."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Union, cast

import grpc
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from ._errors import CreditError
from .v1 import credit_pb2 as pb

__all__ = [
    "CreditCategoryLike",
    "FeedContentLike",
    "HoldStateLike",
    "Metadata",
    "TimeLike",
    "TransactionTypeLike",
    "TtlLike",
    "Usage",
    "new_idempotency_key",
]

#: Caller metadata stored with a transaction: a JSON-like object (at most 16 KiB as JSON).
Metadata = Mapping[str, Any]
#: What a spend paid for: the message, or its fields as a mapping.
Usage = Union[pb.UsageDetails, Mapping[str, str]]
#: A point in time: a timezone-aware datetime or a protobuf Timestamp.
TimeLike = Union[datetime, timestamp_pb2.Timestamp]
#: A transaction type: ``pb.TRANSACTION_TYPE_USAGE``, or its name ("USAGE" or
#: "TRANSACTION_TYPE_USAGE").
TransactionTypeLike = Union["pb.TransactionType.ValueType", int, str]
#: A hold state: ``pb.HOLD_STATE_ACTIVE``, or its name ("active", "ACTIVE" or
#: "HOLD_STATE_ACTIVE").
HoldStateLike = Union["pb.HoldState.ValueType", int, str]
#: A lot's category: ``pb.CREDIT_CATEGORY_PAID``, or its name ("paid", "PAID" or
#: "CREDIT_CATEGORY_PAID").
CreditCategoryLike = Union["pb.CreditCategory.ValueType", int, str]
#: What a transaction watch carries: ``pb.FEED_CONTENT_ALERT_EVENTS``, or its name
#: ("alert_events", "ALERT_EVENTS" or "FEED_CONTENT_ALERT_EVENTS"; likewise
#: "TRANSACTIONS_AND_ALERT_EVENTS"); None or UNSPECIFIED: transactions only.
FeedContentLike = Union["pb.FeedContent.ValueType", int, str]
#: How long a hold lasts: seconds, a timedelta or a protobuf Duration.
TtlLike = Union[float, int, timedelta, duration_pb2.Duration]


def new_idempotency_key() -> str:
    """A new idempotency key (a random UUID), for callers that want to know the
    key before sending so they can send the write again themselves later."""
    return str(uuid.uuid4())


def key_or_new(key: str | None) -> str:
    return key if key else new_idempotency_key()


def struct(metadata: Metadata | None) -> struct_pb2.Struct | None:
    if metadata is None:
        return None
    value = struct_pb2.Struct()
    value.update(dict(metadata))
    return value


def usage_details(usage: Usage | None) -> pb.UsageDetails | None:
    if usage is None or isinstance(usage, pb.UsageDetails):
        return usage
    return pb.UsageDetails(**dict(usage))


def timestamp(value: TimeLike | None) -> timestamp_pb2.Timestamp | None:
    if value is None or isinstance(value, timestamp_pb2.Timestamp):
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("give a timezone-aware datetime (e.g. datetime.now(timezone.utc))")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def transaction_type(value: TransactionTypeLike) -> pb.TransactionType.ValueType:
    if isinstance(value, str):
        name = value.upper()
        if not name.startswith("TRANSACTION_TYPE_"):
            name = "TRANSACTION_TYPE_" + name
        return pb.TransactionType.Value(name)
    if value not in pb.TransactionType.values():
        raise ValueError(f"unknown transaction type {value}")
    return cast("pb.TransactionType.ValueType", value)


def hold_state(value: HoldStateLike) -> pb.HoldState.ValueType:
    if isinstance(value, str):
        name = value.upper()
        if not name.startswith("HOLD_STATE_"):
            name = "HOLD_STATE_" + name
        return pb.HoldState.Value(name)
    if value not in pb.HoldState.values():
        raise ValueError(f"unknown hold state {value}")
    return cast("pb.HoldState.ValueType", value)


def credit_category(value: CreditCategoryLike | None) -> pb.CreditCategory.ValueType:
    if value is None:
        return pb.CREDIT_CATEGORY_UNSPECIFIED
    if isinstance(value, str):
        name = value.upper()
        if not name.startswith("CREDIT_CATEGORY_"):
            name = "CREDIT_CATEGORY_" + name
        return pb.CreditCategory.Value(name)
    if value not in pb.CreditCategory.values():
        raise ValueError(f"unknown credit category {value}")
    return cast("pb.CreditCategory.ValueType", value)


def feed_content(value: FeedContentLike | None) -> pb.FeedContent.ValueType:
    if value is None:
        return pb.FEED_CONTENT_UNSPECIFIED
    if isinstance(value, str):
        name = value.upper()
        if not name.startswith("FEED_CONTENT_"):
            name = "FEED_CONTENT_" + name
        return pb.FeedContent.Value(name)
    if value not in pb.FeedContent.values():
        raise ValueError(f"unknown feed content {value}")
    return cast("pb.FeedContent.ValueType", value)


def duration(value: TtlLike) -> duration_pb2.Duration:
    if isinstance(value, duration_pb2.Duration):
        return value
    if not isinstance(value, timedelta):
        value = timedelta(seconds=value)
    result = duration_pb2.Duration()
    result.FromTimedelta(value)
    return result


def create_user(user_id: str, email: str, name: str) -> pb.CreateUserRequest:
    return pb.CreateUserRequest(user_id=user_id, email=email, name=name)


def top_up(
    user_id: str,
    amount: int,
    idempotency_key: str | None,
    metadata: Metadata | None,
    expire_time: TimeLike | None,
    priority: int | None,
) -> pb.TopUpRequest:
    # An out-of-range priority goes to the server, which says what is wrong with it.
    return pb.TopUpRequest(
        user_id=user_id,
        amount=amount,
        idempotency_key=key_or_new(idempotency_key),
        metadata=struct(metadata),
        expire_time=timestamp(expire_time),
        priority=priority,
    )


def spend(
    user_id: str,
    amount: int,
    usage: Usage | None,
    idempotency_key: str | None,
    metadata: Metadata | None,
) -> pb.SpendRequest:
    return pb.SpendRequest(
        user_id=user_id,
        amount=amount,
        idempotency_key=key_or_new(idempotency_key),
        usage=usage_details(usage),
        metadata=struct(metadata),
    )


def grant(
    user_id: str,
    amount: int,
    reason: str,
    idempotency_key: str | None,
    metadata: Metadata | None,
    expire_time: TimeLike | None,
    priority: int | None,
    category: CreditCategoryLike | None,
) -> pb.GrantRequest:
    return pb.GrantRequest(
        user_id=user_id,
        amount=amount,
        reason=reason,
        idempotency_key=key_or_new(idempotency_key),
        metadata=struct(metadata),
        expire_time=timestamp(expire_time),
        priority=priority,
        category=credit_category(category),
    )


def refund(
    user_id: str,
    transaction_id: str,
    amount: int | None,
    reason: str,
    idempotency_key: str | None,
    metadata: Metadata | None,
) -> pb.RefundRequest:
    return pb.RefundRequest(
        user_id=user_id,
        transaction_id=transaction_id,
        amount=amount,
        reason=reason,
        idempotency_key=key_or_new(idempotency_key),
        metadata=struct(metadata),
    )


def list_transactions(
    user_id: str,
    *,
    page_size: int,
    page_token: str,
    types: Iterable[TransactionTypeLike],
    created_after: TimeLike | None,
    created_before: TimeLike | None,
    graph_exec_id: str,
    created_by: str,
) -> pb.ListTransactionsRequest:
    # Negative sizes go to the server, which says what is wrong with them.
    return pb.ListTransactionsRequest(
        user_id=user_id,
        page_size=min(page_size, 1000),
        page_token=page_token,
        types=[transaction_type(t) for t in types],
        created_after=timestamp(created_after),
        created_before=timestamp(created_before),
        graph_exec_id=graph_exec_id,
        created_by=created_by,
    )


def reserve(
    user_id: str,
    amount: int,
    ttl: TtlLike | None,
    expire_time: TimeLike | None,
    usage: Usage | None,
    idempotency_key: str | None,
    metadata: Metadata | None,
) -> pb.ReserveRequest:
    if ttl is not None and expire_time is not None:
        raise ValueError("give ttl or expire_time, not both")
    return pb.ReserveRequest(
        user_id=user_id,
        amount=amount,
        idempotency_key=key_or_new(idempotency_key),
        ttl=None if ttl is None else duration(ttl),
        expire_time=timestamp(expire_time),
        usage=usage_details(usage),
        metadata=struct(metadata),
    )


def capture(
    user_id: str,
    hold_id: str,
    amount: int,
    usage: Usage | None,
    idempotency_key: str | None,
    metadata: Metadata | None,
) -> pb.CaptureRequest:
    return pb.CaptureRequest(
        user_id=user_id,
        hold_id=hold_id,
        amount=amount,
        idempotency_key=key_or_new(idempotency_key),
        usage=usage_details(usage),
        metadata=struct(metadata),
    )


def release(
    user_id: str, hold_id: str, reason: str, idempotency_key: str | None
) -> pb.ReleaseRequest:
    return pb.ReleaseRequest(
        user_id=user_id,
        hold_id=hold_id,
        reason=reason,
        idempotency_key=key_or_new(idempotency_key),
    )


def list_holds(
    user_id: str, *, states: Iterable[HoldStateLike], page_size: int, page_token: str
) -> pb.ListHoldsRequest:
    return pb.ListHoldsRequest(
        user_id=user_id,
        states=[hold_state(s) for s in states],
        page_size=min(page_size, 1000),
        page_token=page_token,
    )


def next_hold_page(
    request: pb.ListHoldsRequest, page: pb.ListHoldsResponse
) -> pb.ListHoldsRequest | None:
    """The request for the page of holds after ``page``, or None after the last."""
    token = page.next_page_token
    if not token:
        return None
    if token == request.page_token:
        raise CreditError(
            grpc.StatusCode.INTERNAL, "invalid response: the server returned the page token it was given"
        )
    following = pb.ListHoldsRequest()
    following.CopyFrom(request)
    following.page_token = token
    return following


def list_lots(
    user_id: str, *, include_empty: bool, page_size: int, page_token: str
) -> pb.ListLotsRequest:
    return pb.ListLotsRequest(
        user_id=user_id,
        include_empty=include_empty,
        page_size=min(page_size, 1000),
        page_token=page_token,
    )


def next_lot_page(
    request: pb.ListLotsRequest, page: pb.ListLotsResponse
) -> pb.ListLotsRequest | None:
    """The request for the page of lots after ``page``, or None after the last.

    A page may hold fewer lots than asked for (even none) with a token after
    it, so only an empty token ends the listing."""
    token = page.next_page_token
    if not token:
        return None
    if token == request.page_token:
        raise CreditError(
            grpc.StatusCode.INTERNAL, "invalid response: the server returned the page token it was given"
        )
    following = pb.ListLotsRequest()
    following.CopyFrom(request)
    following.page_token = token
    return following


def next_page(
    request: pb.ListTransactionsRequest, page: pb.ListTransactionsResponse
) -> pb.ListTransactionsRequest | None:
    """The request for the page after ``page``, or None after the last page."""
    token = page.next_page_token
    if not token:
        return None
    if token == request.page_token:
        # A server that hands back the token it was given would loop forever.
        raise CreditError(
            grpc.StatusCode.INTERNAL, "invalid response: the server returned the page token it was given"
        )
    following = pb.ListTransactionsRequest()
    following.CopyFrom(request)
    following.page_token = token
    return following


def set_balance_alert(
    user_id: str, threshold: int, idempotency_key: str | None
) -> pb.SetBalanceAlertRequest:
    # A negative threshold goes to the server, which says what is wrong with it.
    return pb.SetBalanceAlertRequest(
        user_id=user_id, threshold=threshold, idempotency_key=key_or_new(idempotency_key)
    )


def list_alert_events(user_id: str, *, page_size: int, page_token: str) -> pb.ListAlertEventsRequest:
    return pb.ListAlertEventsRequest(
        user_id=user_id, page_size=min(page_size, 1000), page_token=page_token
    )


def next_alert_event_page(
    request: pb.ListAlertEventsRequest, page: pb.ListAlertEventsResponse
) -> pb.ListAlertEventsRequest | None:
    """The request for the page of alert events after ``page``, or None after the last."""
    token = page.next_page_token
    if not token:
        return None
    if token == request.page_token:
        raise CreditError(
            grpc.StatusCode.INTERNAL, "invalid response: the server returned the page token it was given"
        )
    following = pb.ListAlertEventsRequest()
    following.CopyFrom(request)
    following.page_token = token
    return following


def watch_transactions(
    user_id: str | None,
    start_after: str | None,
    types: Iterable[TransactionTypeLike] | None,
    content: FeedContentLike | None = None,
) -> pb.WatchTransactionsRequest:
    # An empty user_id watches every user (the server asks for the admin role).
    # A reconnect copies the whole request, so types and content stay as given.
    return pb.WatchTransactionsRequest(
        user_id=user_id or "",
        start_after=start_after or "",
        types=[transaction_type(t) for t in types or ()],
        content=feed_content(content),
    )


def watch_from(
    request: pb.WatchTransactionsRequest, cursor: str
) -> pb.WatchTransactionsRequest:
    """``request`` resumed right after ``cursor`` ("" keeps the request's own start)."""
    if not cursor or cursor == request.start_after:
        return request
    resumed = pb.WatchTransactionsRequest()
    resumed.CopyFrom(request)
    resumed.start_after = cursor
    return resumed


def watch_balance(user_id: str) -> pb.WatchBalanceRequest:
    return pb.WatchBalanceRequest(user_id=user_id)
