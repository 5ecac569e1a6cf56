// Every RPC of credit.v1.CreditService but holds and lots once (holds.ts and lots.ts show those): node .build/examples/every-rpc.js
import { FeedContent, TransactionType, createCreditClient, timestampDate } from "credit-ledger-client";

const credits = createCreditClient({ baseUrl: process.env.CREDIT_URL ?? "http://127.0.0.1:50051" });
const userId = `bob-${Date.now()}`;
try {
  // CreateUser, GetUser, GetBalance
  const user = await credits.createUser({ userId, email: `${userId}@example.com`, name: "Bob" });
  console.log(`created ${user.userId} at ${timestampDate(user.createdAt!).toISOString()}`);
  console.log(`email: ${(await credits.getUser(userId)).email}`);
  console.log(`balance: ${(await credits.getBalance(userId)).balance}`); // 0n

  // SetBalanceAlert: the ledger records an event when a write takes the
  // balance from 80 or more to below 80. Not armed while the balance is
  // below (0 now); the top-up below arms it. The same threshold again (or
  // the same key) returns the same alert.
  const alert = await credits.setBalanceAlert(userId, 80n, { idempotencyKey: `alert-${userId}-80` });
  console.log(`alert at ${alert.threshold}, armed: ${alert.armed}`); // false

  // WatchTransactions from now: its first message is a heartbeat (no
  // transaction) whose cursor says where the feed stands.
  let start = "";
  for await (const message of credits.watchTransactions({ userId })) {
    start = message.cursor;
    break; // ends the stream
  }

  // TopUp, Spend, Grant, Refund: each returns { transaction, balance }.
  const topUp = await credits.topUp({ userId, amount: 100n, metadata: { order: "o-1" } });
  const spend = await credits.spend({
    userId,
    amount: 30n,
    idempotencyKey: `spend-${userId}-1`, // optional: the client makes one when omitted
    usage: { graphExecId: "exec-1", graphId: "g-1", nodeId: "n-1", reason: "LLM call" },
  });
  await credits.grant({ userId, amount: 5n, reason: "welcome bonus" });
  const refund = await credits.refund({ userId, transactionId: spend.transaction.transactionId, amount: 10n, reason: "failed run" });
  console.log(`after refund: ${refund.balance}`); // 85n

  // GetTransaction
  const tx = await credits.getTransaction(userId, topUp.transaction.transactionId);
  console.log(`#${tx.sequence} ${TransactionType[tx.type]} ${tx.amount} by ${tx.createdBy}`, tx.metadata);

  // ListTransactions: one page, then every page with the async iterator.
  const page = await credits.listTransactions({ userId, pageSize: 2 });
  console.log(`first page: ${page.transactions.length}, more: ${page.nextPageToken !== undefined}`);
  for await (const t of credits.iterTransactions({
    userId,
    types: [TransactionType.USAGE],
    graphExecId: "exec-1",
    createdAfter: new Date(Date.now() - 60_000),
    createdBefore: new Date(Date.now() + 60_000),
  })) {
    console.log(`usage #${t.sequence}: ${t.amount} (${t.usage?.reason})`);
  }

  // VerifyLedger (admin only when the server has API keys)
  const report = await credits.verifyLedger(userId);
  console.log(`ledger clean: ${report.clean}`);

  // ListAlertEvents (newest first; iterAlertEvents reads every page): the
  // spend took the balance from 100 to 70, below 80. The refund to 85 re-armed
  // the alert, as GetBalance's alerts (lowest threshold first) show.
  const { events } = await credits.listAlertEvents(userId, { pageSize: 10 });
  for (const e of events) console.log(`alert event: ${e.balanceBefore} -> ${e.balanceAfter} at #${e.sequence}`);
  for (const a of (await credits.getBalance(userId)).alerts) console.log(`alert at ${a.threshold}, armed: ${a.armed}`);

  // WatchTransactions from a cursor: every later transaction exactly once, in
  // order, then new ones as they commit (reconnecting by itself).
  for await (const { transaction, cursor } of credits.watchTransactions({ userId, startAfter: start })) {
    if (transaction === undefined) continue; // a heartbeat: nothing new up to `cursor`
    console.log(`feed #${transaction.sequence} ${TransactionType[transaction.type]} ${transaction.amount} (cursor ${cursor})`);
    if (transaction.sequence === refund.transaction.sequence) break;
  }

  // WatchTransactions with content: alert events as well (or only, with
  // FeedContent.ALERT_EVENTS), each right after the transaction that crossed
  // the threshold, with the same eventId ListAlertEvents gives.
  const mixed = credits.watchTransactions({ userId, startAfter: start, content: FeedContent.TRANSACTIONS_AND_ALERT_EVENTS });
  for await (const { transaction, alertEvent } of mixed) {
    if (transaction !== undefined) console.log(`mixed feed #${transaction.sequence}`);
    if (alertEvent !== undefined) {
      console.log(`mixed feed alert event after #${alertEvent.sequence}, listed: ${alertEvent.eventId === events[0]?.eventId}`);
      break;
    }
  }

  // DeleteBalanceAlert: returns the alert with deletedAt set (again: the same).
  const removed = await credits.deleteBalanceAlert(userId, alert.alertId);
  console.log(`alert removed: ${removed.deletedAt !== undefined}`);

  // WatchBalance: the current value first, then one per change.
  for await (const balance of credits.watchBalance(userId)) {
    console.log(`watched balance: ${balance.balance} at #${balance.lastSequence}`);
    break;
  }
} finally {
  credits.close();
}
