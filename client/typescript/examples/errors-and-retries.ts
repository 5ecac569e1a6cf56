// Typed errors and the retry policy: node .build/examples/errors-and-retries.js
import {
  Code,
  CreditError,
  IdempotencyKeyReused,
  InvalidArgument,
  NotFound,
  RefundExceedsOriginal,
  createCreditClient,
  newIdempotencyKey,
} from "credit-ledger-client";

const credits = createCreditClient({
  baseUrl: process.env.CREDIT_URL ?? "http://127.0.0.1:50051",
  // The default: 4 attempts ~100, 200, 400 ms apart (equal jitter, at most 2 s),
  // on UNAVAILABLE, ABORTED, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED only.
  retry: { maxAttempts: 4, initialBackoffMs: 100, maxBackoffMs: 2_000, multiplier: 2 },
});
const userId = `carol-${Date.now()}`;

async function show(call: Promise<unknown>): Promise<void> {
  try {
    await call;
  } catch (err) {
    if (err instanceof RefundExceedsOriginal) {
      console.log(`only ${err.refundableAmount} of ${err.transactionId} is left to refund`);
    } else if (err instanceof InvalidArgument) {
      console.log(err.fieldViolations.map((v) => `${v.field}: ${v.description}`).join("; "));
    } else if (err instanceof IdempotencyKeyReused) {
      console.log(`key ${err.idempotencyKey} was used for another request`);
    } else if (err instanceof NotFound) {
      console.log(`not found (${err.reason})`);
    } else if (err instanceof CreditError) {
      // Every error: code, reason, message, metadata, fieldViolations, retryable.
      console.log(err.code === Code.Unavailable, err.codeName, err.reason, err.retryable);
    } else {
      throw err;
    }
  }
}

try {
  await credits.createUser({ userId, email: `${userId}@example.com` });
  const { transaction } = await credits.topUp({ userId, amount: 50n });
  await show(credits.refund({ userId, transactionId: transaction.transactionId, amount: 80n }));
  await show(credits.spend({ userId, amount: 0n }));
  await show(credits.getBalance("no-such-user"));

  // Know the key before sending, to send the same write again after a crash:
  const idempotencyKey = newIdempotencyKey();
  const first = await credits.spend({ userId, amount: 5n, idempotencyKey });
  const again = await credits.spend({ userId, amount: 5n, idempotencyKey }); // applied once
  console.log(first.transaction.transactionId === again.transaction.transactionId); // true
  await show(credits.spend({ userId, amount: 6n, idempotencyKey }));
} finally {
  credits.close();
}
