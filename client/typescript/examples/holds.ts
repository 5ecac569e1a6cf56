// Charging for work whose cost you learn later: reserve an estimate, capture
// the real cost, let the TTL clean up after crashed callers.
// node .build/examples/holds.js  (CREDIT_URL, default http://127.0.0.1:50051)
import { HoldNotActive, HoldState, InsufficientBalance, createCreditClient } from "credit-ledger-client";

/** Stands in for the work: returns what it really cost. */
async function runLlmJob(): Promise<bigint> {
  return 37n;
}

const credits = createCreditClient({ baseUrl: process.env.CREDIT_URL ?? "http://127.0.0.1:50051" });
const userId = `holds-${Date.now()}`;
try {
  await credits.createUser({ userId, email: `${userId}@example.com` });
  await credits.topUp({ userId, amount: 100n });

  // Hold the estimate before starting: refused up front when too little is
  // available, and nobody else can spend it while the work runs.
  const { hold } = await credits.reserve({ userId, amount: 50n, ttlMs: 15 * 60_000, usage: { graphExecId: "run-1" } });
  const cost = await runLlmJob();
  // Charge the real cost: one USAGE transaction; the rest goes back.
  // Capture more than the hold and the excess comes from the balance.
  const done = await credits.capture({ userId, holdId: hold.holdId, amount: cost });
  console.log(`charged ${-done.transaction!.amount}, balance ${done.balance}`);
  // If the worker crashed before capturing, nothing is lost: the hold
  // expires after its TTL and its credits are available again.

  // Work that did not happen: give the hold back.
  const spare = await credits.reserve({ userId, amount: 20n });
  await credits.release({ userId, holdId: spare.hold.holdId, reason: "job cancelled" });
  try {
    await credits.capture({ userId, holdId: spare.hold.holdId, amount: 5n });
  } catch (err) {
    if (!(err instanceof HoldNotActive)) throw err;
    console.log(`refused: ${err.reason} (${err.state})`);
  }

  const balance = await credits.getBalance(userId);
  console.log(`balance ${balance.balance}, held ${balance.held}, available ${balance.available}`);
  for await (const h of credits.iterHolds({ userId, states: [HoldState.CAPTURED] })) {
    console.log(`captured ${h.capturedAmount} of ${h.amount}`);
  }
  await credits.reserve({ userId, amount: 1000n }).catch((err: unknown) => {
    if (!(err instanceof InsufficientBalance)) throw err;
    console.log(`not enough credits: ${err.availableBalance} available`);
  });
} finally {
  credits.close();
}
