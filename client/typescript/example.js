// Walks through the credit API: node client/typescript/example.js [HOST:PORT]
import { randomUUID } from 'node:crypto';

import { CreditClient, InsufficientBalance } from './src/credit-client.js';

const credits = new CreditClient(process.argv[2] ?? '127.0.0.1:50051');
const userId = `example-${randomUUID().slice(0, 8)}`;
try {
  await credits.createUser({ userId, email: `${userId}@example.com`, name: 'Example User' });
  console.log('top up:', (await credits.topUp(userId, 100)).balance);
  console.log('spend: ', (await credits.spend(userId, 30, { usage: { reason: 'demo' } })).balance);
  try {
    await credits.spend(userId, 500);
  } catch (err) {
    if (!(err instanceof InsufficientBalance)) throw err;
    console.log(`refused: ${err.reason}, ${err.availableBalance} available`);
  }
  for await (const tx of credits.iterTransactions(userId, { pageSize: 10 })) {
    console.log(`  #${tx.sequence} ${tx.amount} -> ${tx.runningBalance}`);
  }
} finally {
  credits.close();
}
