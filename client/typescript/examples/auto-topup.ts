// Keeps a user's available balance at or above a threshold: watches the
// balance and tops up when it falls below. node .build/examples/auto-topup.js
// With CREDIT_USER set it watches that user until Ctrl-C; without, it makes a
// demo user, runs two watchers at once (as a restart or a second replica
// would) and spends below the threshold: the user is topped up once.
import { IdempotencyKeyReused, TransactionType, createCreditClient } from "credit-ledger-client";
import type { CreditClient } from "credit-ledger-client";

const THRESHOLD = 50n; // top up when available (balance minus holds) is below this
const TOP_UP = 200n; // by this much

/** Tops up `userId` whenever its available balance is below THRESHOLD, until `signal` aborts. */
async function autoTopUp(credits: CreditClient, userId: string, signal: AbortSignal): Promise<void> {
  try {
    // Reconnects by itself (server restarts, dropped connections), patiently
    // (up to 30 tries, at most 5 s apart); each connection starts with the
    // current balance, so no dip is missed.
    const retry = { maxAttempts: 30, maxBackoffMs: 5_000 };
    for await (const balance of credits.watchBalance(userId, { signal, retry })) {
      if (balance.available >= THRESHOLD) continue;
      // The key names the ledger state the decision was made from (the
      // user's lastSequence), not the attempt: a watcher restarted after it
      // sent the top-up but before it saw the result, a second watcher, or a
      // stale message of the same state all send the same key, and the
      // server applies that top-up once (a repeat gets the original
      // transaction). The top-up moves lastSequence on, so the next dip gets
      // a new key. A random key per attempt would charge twice. (Keys are at
      // most 128 characters: hash the user id if yours are long.)
      const idempotencyKey = `auto-topup-${userId}-${balance.lastSequence}`;
      try {
        const { transaction } = await credits.topUp({
          userId,
          amount: TOP_UP,
          idempotencyKey,
          metadata: { reason: "auto top-up", afterSequence: String(balance.lastSequence) },
        });
        console.log(`available ${balance.available} at #${balance.lastSequence}: topped up (#${transaction.sequence})`);
      } catch (err) {
        // The same state was handled before with other settings (a changed TOP_UP).
        if (!(err instanceof IdempotencyKeyReused)) throw err;
      }
    }
  } catch (err) {
    if (!signal.aborted) throw err; // aborting the signal is how the watch stops
  }
}

const credits = createCreditClient({ baseUrl: process.env.CREDIT_URL ?? "http://127.0.0.1:50051" });
const stop = new AbortController();
try {
  const watched = process.env.CREDIT_USER;
  if (watched !== undefined) {
    process.once("SIGINT", () => stop.abort());
    console.log(`watching ${watched}: top up ${TOP_UP} when available < ${THRESHOLD} (Ctrl-C stops)`);
    await autoTopUp(credits, watched, stop.signal);
  } else {
    const userId = `carol-${Date.now()}`;
    await credits.createUser({ userId, email: `${userId}@example.com` });
    await credits.grant({ userId, amount: 100n, reason: "welcome" });
    const watchers = [autoTopUp(credits, userId, stop.signal), autoTopUp(credits, userId, stop.signal)];
    const spend = await credits.spend({ userId, amount: 60n });
    // Wait until a watcher has topped up.
    for await (const balance of credits.watchBalance(userId)) {
      if (balance.lastSequence > spend.transaction.sequence) break;
    }
    stop.abort();
    await Promise.all(watchers);
    let topUps = 0;
    for await (const _ of credits.iterTransactions({ userId, types: [TransactionType.TOP_UP] })) topUps += 1;
    console.log(`top-ups: ${topUps}, balance: ${(await credits.getBalance(userId)).balance}`); // 1, 240
  }
} finally {
  credits.close();
}
