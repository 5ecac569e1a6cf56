// Paid and promotional credits: every top-up and grant makes a lot with a
// category, a draw priority and an optional expiry; spends draw from lots in
// a fixed order and say which ones they drew from.
// node .build/examples/lots.js  (CREDIT_URL, default http://127.0.0.1:50051)
import { CreditCategory, InvalidArgument, createCreditClient, timestampDate } from "credit-ledger-client";
import type { Lot } from "credit-ledger-client";

const credits = createCreditClient({ baseUrl: process.env.CREDIT_URL ?? "http://127.0.0.1:50051" });
const userId = `lots-${Date.now()}`;
try {
  await credits.createUser({ userId, email: `${userId}@example.com` });
  // A purchase: a PAID lot, drawn last (priority 100), never expires.
  await credits.topUp({ userId, amount: 100n });
  // A welcome bonus: a PROMOTIONAL lot, drawn first (priority 50), gone in a week.
  const inAWeek = new Date(Date.now() + 7 * 86_400_000);
  const bonus = await credits.grant({ userId, amount: 50n, reason: "welcome", expireTime: inAWeek });
  console.log(`bonus lot ${bonus.lot?.lotId} expires ${inAWeek.toISOString()}`);
  // Options: `priority` (0-100, lower is spent first) on both; `category:
  // CreditCategory.PAID` on a grant for credits sold through another channel.

  const balance = await credits.getBalance(userId);
  const expiry = balance.nextExpireTime ? timestampDate(balance.nextExpireTime).toISOString() : "never";
  console.log(`balance ${balance.balance}: paid ${balance.paid}, promotional ${balance.promotional}; ` +
    `${balance.nextExpiringAmount} expire at ${expiry}`);

  const spend = await credits.spend({ userId, amount: 70n });
  // Every lot, in the order spends draw from them (includeEmpty: also spent ones).
  const lots = new Map<string, Lot>();
  for await (const lot of credits.iterLots({ userId, includeEmpty: true })) lots.set(lot.lotId, lot);
  // Which lots the spend drew from (also on getTransaction; not on history pages).
  const drawn = spend.transaction.allocations.map((a) => `${-a.amount} from ${CreditCategory[lots.get(a.lotId)!.category]}`);
  console.log(`spent 70: ${drawn.join(", ")}`);
  const listed = [...lots.values()].map((lot) => {
    const expires = lot.expireTime ? `expires ${timestampDate(lot.expireTime).toISOString()}` : "never expires";
    return `${CreditCategory[lot.category]} ${lot.remaining} of ${lot.grantedAmount} (${expires})`;
  });
  console.log(`lots: ${listed.join(", ")}`);

  await credits.topUp({ userId, amount: 10n, priority: 101 }).catch((err: unknown) => {
    if (!(err instanceof InvalidArgument)) throw err;
    console.log(`refused: ${err.fieldViolations.map((v) => `${v.field}: ${v.description}`).join("; ")}`);
  });
} finally {
  credits.close();
}
