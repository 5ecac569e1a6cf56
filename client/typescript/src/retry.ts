/**
 * When and how long to wait before sending a failed call again.
 *
 * Only failures that say "try again" are retried: UNAVAILABLE (server or
 * database unreachable), ABORTED (a concurrent write conflicted),
 * RESOURCE_EXHAUSTED (the server shed load) and DEADLINE_EXCEEDED. Writes are
 * safe to send again because every attempt carries the same idempotency key:
 * the server applies the write at most once and answers a repeat with the
 * original transaction.
 */

/** How often, and how patiently, a call is retried. */
export interface RetryPolicy {
  /** Attempts in total, including the first; 1 disables retries. */
  readonly maxAttempts: number;
  /** The wait before the first retry (before jitter), in ms. */
  readonly initialBackoffMs: number;
  /** The longest wait between two attempts, in ms. */
  readonly maxBackoffMs: number;
  /** How much longer each wait is than the one before. */
  readonly multiplier: number;
}

/** 4 attempts, waiting about 100 ms, 200 ms, 400 ms between them (at most 2 s). */
export const DEFAULT_RETRY_POLICY: RetryPolicy = Object.freeze({
  maxAttempts: 4,
  initialBackoffMs: 100,
  maxBackoffMs: 2000,
  multiplier: 2,
});

/** Sends every call exactly once. */
export const NO_RETRY: RetryPolicy = Object.freeze({ ...DEFAULT_RETRY_POLICY, maxAttempts: 1 });

/** The un-jittered wait before retry `retry` (1 for the first retry), capped at maxBackoffMs. */
export function backoffCeilingMs(policy: RetryPolicy, retry: number): number {
  const factor = Math.max(policy.multiplier, 1) ** Math.max(retry - 1, 0);
  const ms = policy.initialBackoffMs * factor;
  return Number.isFinite(ms) ? Math.min(ms, policy.maxBackoffMs) : policy.maxBackoffMs;
}

/**
 * The wait before retry `retry` (1 for the first retry): a random duration
 * between half and all of the ceiling ("equal jitter"), so many clients that
 * failed together do not retry in lockstep, yet still back off.
 */
export function backoffMs(policy: RetryPolicy, retry: number, random: () => number = Math.random): number {
  const ceiling = backoffCeilingMs(policy, retry);
  return ceiling / 2 + (ceiling / 2) * random();
}

/** Checks a (partial) policy and fills in the defaults. */
export function resolveRetryPolicy(policy: Partial<RetryPolicy> | undefined): RetryPolicy {
  const resolved = { ...DEFAULT_RETRY_POLICY, ...policy };
  if (!Number.isInteger(resolved.maxAttempts) || resolved.maxAttempts < 1) {
    throw new RangeError("retry.maxAttempts must be an integer of at least 1");
  }
  if (!(resolved.initialBackoffMs >= 0) || !(resolved.maxBackoffMs >= 0)) {
    throw new RangeError("retry backoffs must be >= 0");
  }
  return Object.freeze(resolved);
}

/** Waits `ms`, or rejects as soon as `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
