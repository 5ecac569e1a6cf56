"""A typed Python client for the credit.v1 CreditService.

    from credit_client import CreditClient, InsufficientBalance

    with CreditClient("127.0.0.1:50051", api_key="...") as credits:
        credits.top_up("alice", 100)
        try:
            credits.spend("alice", 500)
        except InsufficientBalance as err:
            print(err.available_balance, err.requested_amount)

:class:`CreditClient` blocks; :class:`AsyncCreditClient` has the same methods
for asyncio. Every write carries an idempotency key (a UUID made per call when
the caller gives none) that every retry of that call reuses, so retrying
UNAVAILABLE, ABORTED, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED never applies a
write twice. Holds (``reserve`` an estimate, ``capture`` the real cost or
``release``) charge for work whose cost is known only afterwards. Credits
come in lots (``top_up`` and ``grant`` take ``expire_time`` and
``priority``, ``grant`` a ``category``; ``list_lots`` and ``iter_lots`` list
them in draw order). ``watch_transactions`` follows the ledger as it changes
(resuming after a cursor, reconnecting by itself) and ``watch_balance`` a
user's balance. Low-balance alerts (``set_balance_alert``) record an event
each time a write takes a balance below a threshold; ``list_alert_events``
lists them and ``watch_transactions(content="ALERT_EVENTS")`` streams them. Failures raise a :class:`CreditError` subclass picked by
the server's google.rpc.ErrorInfo reason. The generated messages are in
``credit_client.v1.credit_pb2`` (also exported here as ``pb``).
"""

from ._aio import AsyncCreditClient
from ._config import DEFAULT_DEADLINE, TlsConfig
from ._errors import (
    ERROR_DOMAIN,
    AlertNotFound,
    AlreadyExists,
    BalanceOverflow,
    Conflict,
    CreditError,
    DatabaseUnavailable,
    DeadlineExceeded,
    EmailAlreadyExists,
    FieldViolation,
    HoldExpired,
    HoldNotActive,
    HoldNotFound,
    IdempotencyKeyReused,
    InsufficientBalance,
    Internal,
    InvalidArgument,
    NotFound,
    NotRefundable,
    Overloaded,
    PermissionDenied,
    RefundExceedsOriginal,
    ShuttingDown,
    SlowConsumer,
    TooManyAlerts,
    TooManyStreams,
    TransactionNotFound,
    Unauthenticated,
    Unavailable,
    UserAlreadyExists,
    UserNotFound,
    error_class_for_reason,
)
from ._requests import (
    CreditCategoryLike,
    FeedContentLike,
    HoldStateLike,
    Metadata,
    TimeLike,
    TransactionTypeLike,
    TtlLike,
    Usage,
    new_idempotency_key,
)
from ._retry import RETRYABLE_CODES, RetryPolicy
from ._sync import CreditClient
from ._watch import FeedMessage
from .v1 import credit_pb2 as pb
from .v1 import credit_pb2_grpc as pb_grpc

__version__ = "0.2.0"

__all__ = [
    "DEFAULT_DEADLINE",
    "ERROR_DOMAIN",
    "RETRYABLE_CODES",
    "AlertNotFound",
    "AlreadyExists",
    "AsyncCreditClient",
    "BalanceOverflow",
    "Conflict",
    "CreditCategoryLike",
    "CreditClient",
    "CreditError",
    "DatabaseUnavailable",
    "DeadlineExceeded",
    "EmailAlreadyExists",
    "FeedContentLike",
    "FeedMessage",
    "FieldViolation",
    "HoldExpired",
    "HoldNotActive",
    "HoldNotFound",
    "HoldStateLike",
    "IdempotencyKeyReused",
    "InsufficientBalance",
    "Internal",
    "InvalidArgument",
    "Metadata",
    "NotFound",
    "NotRefundable",
    "Overloaded",
    "PermissionDenied",
    "RefundExceedsOriginal",
    "RetryPolicy",
    "ShuttingDown",
    "SlowConsumer",
    "TimeLike",
    "TlsConfig",
    "TooManyAlerts",
    "TooManyStreams",
    "TransactionNotFound",
    "TransactionTypeLike",
    "TtlLike",
    "Unauthenticated",
    "Unavailable",
    "Usage",
    "UserAlreadyExists",
    "UserNotFound",
    "error_class_for_reason",
    "new_idempotency_key",
    "pb",
    "pb_grpc",
]
