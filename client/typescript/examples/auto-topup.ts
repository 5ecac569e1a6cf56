// Tops a user up when the balance falls below a threshold, driven by the
// ledger's balance alert events: node .build/examples/auto-topup.js
// With CREDIT_USER set it keeps that user topped up until Ctrl-C (from
// CREDIT_START_AFTER, a stored feed cursor, else from now; it stops after
// CREDIT_MAX_EVENTS events when set). Without, it makes a demo user, runs two
// consumers at once (as a restart or a second replica would) and spends below
// the threshold twice: the user is topped up once per crossing.
import { FeedContent, IdempotencyKeyReused, TransactionType, createCreditClient } from "credit-ledger-client";
import type { CreditClient } from "credit-ledger-client";

const THRESHOLD = 50n; // top up when a write takes the balance below this
const TOP_UP = 200n; // by this much

interface ConsumerOptions {
  /** A cursor of this feed to start right after (stored by an earlier run); from now when omitted. */
  startAfter?: string;
  /** Return after this many events (the demo); run until `signal` aborts when omitted. */
  maxEvents?: number;
  signal?: AbortSignal;
  /** Keeps the cursor of each handled event, to start after it next time (a file, a database row). */
  store?: (cursor: string) => void | Promise<void>;
  /** Prefix of the log lines. */
  name?: string;
}

/** Sets the alert, then tops `userId` up once for every downward crossing of THRESHOLD. */
async function autoTopUp(credits: CreditClient, userId: string, options: ConsumerOptions = {}): Promise<void> {
  // Setting a threshold the user already has an alert for returns that
  // alert, so every copy of this consumer, and every restart, gets the same
  // one (armed now if the balance is at or above the threshold).
  const alert = await credits.setBalanceAlert(userId, THRESHOLD);
  let handled = 0;
  try {
    // Reconnects by itself (server restarts, dropped connections), patiently
    // (up to 30 tries, at most 5 s apart), from the cursor of the last
    // message, so no event is missed while the stream is down. A per-user
    // feed needs the reader role; every user's (no userId) needs admin.
    const retry = { maxAttempts: 30, maxBackoffMs: 5_000 };
    const feed = credits.watchTransactions({
      userId,
      content: FeedContent.ALERT_EVENTS,
      startAfter: options.startAfter,
      signal: options.signal,
      retry,
    });
    for await (const { alertEvent: event, cursor } of feed) {
      if (event === undefined) continue; // a heartbeat
      if (event.alertId !== alert.alertId) continue; // another alert of this user (say, an e-mail one)
      // The key is the event's id, which the ledger made when it recorded
      // the crossing: it names the crossing, not this process or attempt.
      // The client resends it on every retry of this call; a consumer that
      // crashed after the top-up but before it stored the cursor sees the
      // event again after a restart and sends the same key; two consumers
      // (replicas, a deploy overlap) both send it. The server applies one
      // top-up per key and answers the others with the original transaction,
      // so each crossing is topped up exactly once. A top-up that lifts the
      // balance back to the threshold or above re-arms the alert, and the
      // next crossing is a new event with a new id. (A random key per
      // attempt would top up twice.)
      try {
        const { transaction } = await credits.topUp({
          userId,
          amount: TOP_UP,
          idempotencyKey: event.eventId,
          metadata: { reason: "auto top-up", alertEventId: event.eventId },
        });
        console.log(`${options.name ?? "consumer"}: ${event.balanceBefore} -> ${event.balanceAfter} at #${event.sequence}: topped up (#${transaction.sequence})`);
      } catch (err) {
        // This event was handled before with other settings (a changed TOP_UP).
        if (!(err instanceof IdempotencyKeyReused)) throw err;
      }
      // Stored only now, after the top-up: a crash before this line replays
      // the event, which the key makes harmless; storing it first could lose
      // the event.
      await options.store?.(cursor);
      handled += 1;
      if (options.maxEvents !== undefined && handled >= options.maxEvents) return;
    }
  } catch (err) {
    if (!options.signal?.aborted) throw err; // aborting the signal is how the watch stops
  }
}

/** The cursor where a feed of `userId`'s alert events stands now (its first message is a heartbeat). */
async function cursorNow(credits: CreditClient, userId: string): Promise<string> {
  for await (const { cursor } of credits.watchTransactions({ userId, content: FeedContent.ALERT_EVENTS })) return cursor;
  throw new Error("the feed ended without a message");
}

/** Waits until the user has a transaction after `sequence` (a consumer's top-up). */
async function nextTransaction(credits: CreditClient, userId: string, sequence: bigint): Promise<void> {
  for await (const balance of credits.watchBalance(userId)) {
    if (balance.lastSequence > sequence) return;
  }
}

const credits = createCreditClient({ baseUrl: process.env.CREDIT_URL ?? "http://127.0.0.1:50051" });
try {
  const watched = process.env.CREDIT_USER;
  if (watched !== undefined) {
    const stop = new AbortController();
    process.once("SIGINT", () => stop.abort());
    const maxEvents = process.env.CREDIT_MAX_EVENTS === undefined ? undefined : Number(process.env.CREDIT_MAX_EVENTS);
    console.log(`watching ${watched}: top up ${TOP_UP} when the balance falls below ${THRESHOLD} (Ctrl-C stops)`);
    await autoTopUp(credits, watched, {
      startAfter: process.env.CREDIT_START_AFTER,
      maxEvents,
      signal: stop.signal,
      store: (cursor) => console.log(`cursor ${cursor}`),
    });
  } else {
    const userId = `carol-${Date.now()}`;
    await credits.createUser({ userId, email: `${userId}@example.com` });
    await credits.grant({ userId, amount: 100n, reason: "welcome" });
    await credits.setBalanceAlert(userId, THRESHOLD); // before the spends (the consumers set it too)
    // Both consumers start from the same cursor: they see the same events.
    const startAfter = await cursorNow(credits, userId);
    const consumers = ["a", "b"].map((name) => autoTopUp(credits, userId, { startAfter, maxEvents: 2, name }));
    const first = await credits.spend({ userId, amount: 60n }); // 100 -> 40: the first crossing
    await nextTransaction(credits, userId, first.transaction.sequence); // topped up to 240, re-armed
    const second = await credits.spend({ userId, amount: 200n }); // 240 -> 40: the second crossing
    await nextTransaction(credits, userId, second.transaction.sequence);
    await Promise.all(consumers);
    let topUps = 0;
    for await (const _ of credits.iterTransactions({ userId, types: [TransactionType.TOP_UP] })) topUps += 1;
    const events = (await credits.listAlertEvents(userId)).events.length;
    console.log(`alert events: ${events}, top-ups: ${topUps}, balance: ${(await credits.getBalance(userId)).balance}`); // 2, 2, 240
  }
} finally {
  credits.close();
}
