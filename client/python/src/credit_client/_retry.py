"""When and how long to wait before sending a failed call again.

Only failures that say "try again" are retried: UNAVAILABLE (server or
database unreachable), ABORTED (a concurrent write conflicted),
RESOURCE_EXHAUSTED (the server shed load at its concurrency limit) and
DEADLINE_EXCEEDED. Writes are safe to send again because every attempt
carries the same idempotency key: the server applies the write at most once
and answers a repeat with the original transaction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

__all__ = ["RETRYABLE_CODES", "RetryPolicy", "is_retryable"]

#: The status codes a call is retried on.
RETRYABLE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


def is_retryable(code: grpc.StatusCode) -> bool:
    """Whether a failed attempt may succeed when sent again unchanged."""
    return code in RETRYABLE_CODES


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how patiently, a call is retried.

    The wait before retry ``n`` (1-based) is a random duration between half
    and all of ``min(initial_backoff * multiplier ** (n - 1), max_backoff)``
    seconds ("equal jitter"): the randomness keeps many clients that failed
    together from retrying in lockstep. The default sends a call at most 4
    times, waiting about 0.1 s, 0.2 s and 0.4 s between the attempts.
    """

    #: Attempts in total, including the first; 1 disables retries.
    max_attempts: int = 4
    #: The wait before the first retry in seconds (before jitter).
    initial_backoff: float = 0.1
    #: The longest wait between two attempts in seconds.
    max_backoff: float = 2.0
    #: How much longer each wait is than the one before.
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoffs must not be negative")

    @classmethod
    def none(cls) -> RetryPolicy:
        """A policy that sends every call exactly once."""
        return cls(max_attempts=1)

    def ceiling(self, retry: int) -> float:
        """The un-jittered wait before retry ``retry`` (1 for the first), capped."""
        exponent = max(retry - 1, 0)
        try:
            wait = self.initial_backoff * max(self.multiplier, 1.0) ** exponent
        except OverflowError:
            return self.max_backoff
        return min(wait, self.max_backoff)

    def backoff(self, retry: int) -> float:
        """The wait in seconds before retry ``retry``: between half and all of the ceiling."""
        ceiling = self.ceiling(retry)
        return ceiling / 2 + random.uniform(0.0, ceiling / 2)
