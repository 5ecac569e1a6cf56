// Quick start: node .build/examples/quickstart.js  (CREDIT_URL, default http://127.0.0.1:50051)
import { createCreditClient, InsufficientBalance } from "credit-ledger-client";

const credits = createCreditClient({ baseUrl: process.env.CREDIT_URL ?? "http://127.0.0.1:50051" });
const userId = `alice-${Date.now()}`;
try {
  await credits.createUser({ userId, email: `${userId}@example.com`, name: "Alice" });
  await credits.topUp({ userId, amount: 100n });
  const { balance } = await credits.spend({ userId, amount: 30n, usage: { graphExecId: "run-1" } });
  console.log(`balance after spend: ${balance}`); // 70 (a bigint)
  await credits.spend({ userId, amount: 500n });
} catch (err) {
  if (!(err instanceof InsufficientBalance)) throw err;
  console.log(`refused: ${err.availableBalance} available, ${err.requestedAmount} requested`);
} finally {
  credits.close();
}
