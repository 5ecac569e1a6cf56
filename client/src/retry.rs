//! When and how long to wait before sending a failed call again.
//!
//! Only failures that say "try again" are retried: UNAVAILABLE (server or
//! database unreachable), ABORTED (a concurrent write conflicted),
//! RESOURCE_EXHAUSTED (the server shed load at its concurrency limit) and
//! DEADLINE_EXCEEDED. Writes are safe to send again because every attempt
//! carries the same idempotency key: the server applies the write at most
//! once and answers a repeat with the original transaction.

use std::time::Duration;

use rand::Rng;
use tonic::{Code, Status};

/// How often, and how patiently, a call is retried.
///
/// The wait before retry `n` (1-based) is a random duration between half
/// and all of `min(initial_backoff * multiplier^(n-1), max_backoff)`: the
/// randomness ("jitter") keeps many clients that failed together from
/// retrying in lockstep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first; 1 disables retries.
    pub max_attempts: u32,
    /// The wait before the first retry (before jitter).
    pub initial_backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// How much longer each wait is than the one before.
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    /// 4 attempts, waiting about 100 ms, 200 ms, 400 ms between them (at
    /// most 2 s).
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// A policy that sends every call exactly once.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The wait before retry number `retry` (1 for the first retry).
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        // Equal jitter: never less than half the ceiling, so retries still
        // back off, never more than the ceiling, so the bound holds.
        let half = ceiling / 2;
        let spread = ceiling.saturating_sub(half);
        half + spread.mul_f64(rand::rng().random_range(0.0..=1.0))
    }

    /// The un-jittered wait before retry `retry`, capped at `max_backoff`.
    fn ceiling(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let factor = self.multiplier.max(1.0).powi(exponent);
        let secs = self.initial_backoff.as_secs_f64() * factor;
        // `try_from_secs_f64` refuses infinities and overflow: both mean
        // "longer than the cap".
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// Whether a failed attempt may succeed when sent again unchanged.
pub(crate) fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Aborted | Code::ResourceExhausted | Code::DeadlineExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_within_bounds() {
        let policy = RetryPolicy::default();
        for retry in 1..=10 {
            let ceiling = policy.ceiling(retry);
            let wait = policy.backoff(retry);
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "retry {retry}: {wait:?}"
            );
            assert!(ceiling <= policy.max_backoff);
        }
        assert_eq!(policy.ceiling(1), Duration::from_millis(100));
        assert_eq!(policy.ceiling(3), Duration::from_millis(400));
        assert_eq!(policy.ceiling(100), Duration::from_secs(2));
    }

    #[test]
    fn only_transient_codes_are_retried() {
        assert!(is_retryable(&Status::unavailable("")));
        assert!(is_retryable(&Status::aborted("")));
        assert!(is_retryable(&Status::deadline_exceeded("")));
        assert!(is_retryable(&Status::resource_exhausted("")));
        assert!(!is_retryable(&Status::failed_precondition("")));
        assert!(!is_retryable(&Status::internal("")));
    }
}
