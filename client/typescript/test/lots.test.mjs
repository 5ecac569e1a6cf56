// Lots against a real credit-server: the lots TopUp and Grant make (category,
// priority, expiry), the order spends draw in (seen in GetTransaction's
// allocations and GetBalance's paid/promotional split), ListLots paging in
// draw order (iterLots across short and empty pages), expiry, the typed
// refusals of bad lot terms, and a retried top-up answered with its lot.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';

import { Code, ConnectError } from '@connectrpc/connect';

import {
  CreditCategory, InvalidArgument, InvalidInput, TransactionType, UserNotFound, createCreditClient, timestampDate,
} from 'credit-ledger-client';
import { PKG, newUser, rejection, startServer } from './helpers.mjs';

const DAY_MS = 86_400_000;

let server;
let client;

before(async () => {
  // No expiry sweeper (a server without one ignores the variable): an expired
  // lot then stays unwritten until the user's next write, as the expiry test
  // needs; a sweep between its expiry and its listing would write it down.
  server = await startServer({ env: { CREDIT_EXPIRY_SWEEP_SECS: '0' } });
  client = createCreditClient({ baseUrl: server.baseUrl });
});

after(async () => {
  client?.close();
  await server?.stop();
});

/** The [lotId, amount] pairs of a transaction's allocations, in order. */
const allocations = (tx) => tx.allocations.map((a) => [a.lotId, a.amount]);

/** Every lot of the query, through iterLots. */
async function lots(query) {
  const out = [];
  for await (const lot of client.iterLots(query)) out.push(lot);
  return out;
}

test('a spend draws the promotional lot first, then the paid one', async () => {
  const userId = await newUser(client);
  const topUp = await client.topUp({ userId, amount: 100n });
  const paid = topUp.lot;
  assert.ok(paid, 'the top-up answer has its lot');
  assert.equal(paid.$typeName, 'credit.v1.Lot');
  assert.deepEqual(
    [paid.userId, paid.category, paid.priority, paid.grantedAmount, paid.remaining, paid.held, paid.expireTime],
    [userId, CreditCategory.PAID, 100, 100n, 100n, 0n, undefined]);
  assert.equal(paid.sourceTransactionId, topUp.transaction.transactionId);
  assert.deepEqual(allocations(topUp.transaction), [[paid.lotId, 100n]]);

  const tomorrow = new Date(Date.now() + DAY_MS);
  const grant = await client.grant({ userId, amount: 50n, reason: 'welcome', expireTime: tomorrow });
  const promo = grant.lot;
  assert.ok(promo, 'the grant answer has its lot');
  assert.deepEqual([promo.category, promo.priority, promo.grantedAmount, promo.remaining],
    [CreditCategory.PROMOTIONAL, 50, 50n, 50n]);
  assert.equal(timestampDate(promo.expireTime).getTime(), tomorrow.getTime());
  assert.equal(promo.sourceTransactionId, grant.transaction.transactionId);
  assert.notEqual(promo.lotId, paid.lotId);

  const before = await client.getBalance(userId);
  assert.deepEqual([before.balance, before.paid, before.promotional, before.nextExpiringAmount],
    [150n, 100n, 50n, 50n]);
  assert.equal(timestampDate(before.nextExpireTime).getTime(), tomorrow.getTime());

  const spend = await client.spend({ userId, amount: 70n });
  const drawn = [[promo.lotId, -50n], [paid.lotId, -20n]];
  assert.deepEqual(allocations(spend.transaction), drawn, 'the write answer: 50 promotional, then 20 paid');
  const fetched = await client.getTransaction(userId, spend.transaction.transactionId);
  assert.deepEqual(allocations(fetched), drawn, 'GetTransaction: 50 promotional, then 20 paid');

  const afterSpend = await client.getBalance(userId);
  assert.deepEqual([afterSpend.balance, afterSpend.paid, afterSpend.promotional, afterSpend.nextExpiringAmount],
    [80n, 80n, 0n, 0n]);
  assert.equal(afterSpend.nextExpireTime, undefined, 'nothing left expires');

  const left = await client.listLots({ userId });
  assert.deepEqual(left.lots.map((l) => [l.lotId, l.remaining]), [[paid.lotId, 80n]], 'only lots with credits left');
  assert.equal(left.nextPageToken, undefined);
  const everything = await client.listLots({ userId, includeEmpty: true });
  assert.deepEqual(everything.lots.map((l) => [l.lotId, l.remaining]), [[promo.lotId, 0n], [paid.lotId, 80n]],
    'includeEmpty lists the spent promotional lot too, in draw order');
});

test('listLots pages in draw order; iterLots yields every lot once', async () => {
  const userId = await newUser(client);
  const inDays = (days) => new Date(Date.now() + days * DAY_MS);
  // Made in this order; drawn by priority, then soonest expiry (never last), then oldest.
  const made = {};
  made.a = (await client.topUp({ userId, amount: 10n })).lot; // 100, never, oldest
  made.b = (await client.grant({ userId, amount: 11n })).lot; // 50, never
  made.c = (await client.grant({ userId, amount: 12n, expireTime: inDays(2) })).lot; // 50, 2 days
  made.d = (await client.grant({ userId, amount: 13n, expireTime: inDays(1) })).lot; // 50, 1 day
  made.e = (await client.topUp({ userId, amount: 14n, priority: 0 })).lot; // 0
  made.f = (await client.topUp({ userId, amount: 15n, expireTime: inDays(3) })).lot; // 100, 3 days
  made.g = (await client.topUp({ userId, amount: 16n })).lot; // 100, never, newest
  const name = Object.fromEntries(Object.entries(made).map(([k, lot]) => [lot.lotId, k]));
  const order = ['e', 'd', 'c', 'b', 'f', 'a', 'g'];

  const pages = [];
  let pageToken;
  do {
    const page = await client.listLots({ userId, pageSize: 1, pageToken });
    pages.push(page.lots.map((l) => name[l.lotId]));
    pageToken = page.nextPageToken;
    assert.ok(pages.length <= 20, 'the pages end');
  } while (pageToken !== undefined);
  assert.ok(pages.every((p) => p.length <= 1), `pageSize 1: ${JSON.stringify(pages)}`);
  assert.deepEqual(pages.flat(), order, 'pageSize 1: each lot once, in draw order');

  assert.deepEqual((await lots({ userId, pageSize: 1 })).map((l) => name[l.lotId]), order);
  assert.deepEqual((await lots({ userId, pageSize: 3 })).map((l) => name[l.lotId]), order);
  const one = await client.listLots({ userId });
  assert.deepEqual(one.lots.map((l) => name[l.lotId]), order, 'the default page holds all seven');
  assert.equal(one.nextPageToken, undefined);
  const first = await client.listLots({ userId, pageSize: 3 });
  assert.deepEqual(first.lots.map((l) => name[l.lotId]), ['e', 'd', 'c']);
  assert.ok(first.nextPageToken, 'a token follows a full page with lots after it');

  // The listed order is the order a spend draws in.
  const spend = await client.spend({ userId, amount: 30n });
  assert.deepEqual(allocations(spend.transaction), [[made.e.lotId, -14n], [made.d.lotId, -13n], [made.c.lotId, -3n]]);
  assert.deepEqual((await lots({ userId, pageSize: 2 })).map((l) => [name[l.lotId], l.remaining]),
    [['c', 9n], ['b', 11n], ['f', 15n], ['a', 10n], ['g', 16n]], 'spent lots leave the default listing');
  assert.deepEqual((await lots({ userId, pageSize: 2, includeEmpty: true })).map((l) => name[l.lotId]), order,
    'includeEmpty keeps them, in place');
});

test('an expired lot is empty as of now: a short page with a token, then EXPIRATION on the next write', async () => {
  const userId = await newUser(client);
  const soon = await client.grant({ userId, amount: 5n, expireTime: new Date(Date.now() + 2000) });
  const kept = await client.topUp({ userId, amount: 10n });
  assert.equal((await client.getBalance(userId)).promotional, 5n);
  await sleep(2600);

  const balance = await client.getBalance(userId);
  assert.deepEqual([balance.balance, balance.paid, balance.promotional], [10n, 10n, 0n]);
  // The expired lot is drawn first; the page that reaches it has nothing to list.
  const page = await client.listLots({ userId, pageSize: 1 });
  assert.deepEqual(page.lots, [], 'the first page is empty');
  assert.ok(page.nextPageToken, 'and still has a token after it (AIP-158)');
  const listed = await lots({ userId, pageSize: 1 });
  assert.deepEqual(listed.map((l) => l.lotId), [kept.lot.lotId], 'iterLots follows the token past the empty page');
  const all = await lots({ userId, pageSize: 1, includeEmpty: true });
  assert.deepEqual(all.map((l) => [l.lotId, l.remaining]), [[soon.lot.lotId, 0n], [kept.lot.lotId, 10n]]);

  await client.spend({ userId, amount: 1n });
  const history = [];
  for await (const tx of client.iterTransactions({ userId })) history.push([tx.type, tx.amount]);
  assert.deepEqual(history, [
    [TransactionType.USAGE, -1n], [TransactionType.EXPIRATION, -5n], [TransactionType.TOP_UP, 10n],
    [TransactionType.GRANT, 5n],
  ]);
});

test('priority changes the draw order', async () => {
  const userId = await newUser(client);
  const topUp = await client.topUp({ userId, amount: 40n, priority: 10 });
  assert.equal(topUp.lot.priority, 10);
  const grant = await client.grant({ userId, amount: 40n });
  assert.equal(grant.lot.priority, 50);
  const spend = await client.spend({ userId, amount: 50n });
  assert.deepEqual(allocations(spend.transaction), [[topUp.lot.lotId, -40n], [grant.lot.lotId, -10n]],
    'the paid lot at priority 10 goes before the grant at 50');
  const balance = await client.getBalance(userId);
  assert.deepEqual([balance.paid, balance.promotional], [0n, 30n]);

  const first = await client.grant({ userId, amount: 5n, priority: 0 });
  assert.deepEqual((await lots({ userId })).map((l) => l.lotId), [first.lot.lotId, grant.lot.lotId]);
});

test('a grant with category PAID makes a paid lot', async () => {
  const userId = await newUser(client);
  const grant = await client.grant({ userId, amount: 25n, reason: 'sold by a reseller', category: CreditCategory.PAID });
  assert.equal(grant.transaction.type, TransactionType.GRANT);
  assert.deepEqual([grant.lot.category, grant.lot.priority], [CreditCategory.PAID, 50]);
  const promo = await client.grant({ userId, amount: 5n, category: CreditCategory.PROMOTIONAL });
  assert.equal(promo.lot.category, CreditCategory.PROMOTIONAL);
  const balance = await client.getBalance(userId);
  assert.deepEqual([balance.balance, balance.paid, balance.promotional], [30n, 25n, 5n]);
  assert.deepEqual((await lots({ userId })).map((l) => l.category), [CreditCategory.PAID, CreditCategory.PROMOTIONAL]);
});

test('bad lot terms are refused with typed errors, and nothing is written', async () => {
  const userId = await newUser(client);
  const fields = async (call) => {
    const err = await rejection(call, InvalidArgument);
    assert.equal(err.code, Code.InvalidArgument);
    assert.equal(err.reason, 'INVALID_ARGUMENT');
    return err.fieldViolations.map((v) => v.field);
  };
  assert.deepEqual(await fields(client.topUp({ userId, amount: 1n, priority: 101 })), ['priority']);
  assert.deepEqual(await fields(client.grant({ userId, amount: 1n, priority: -1 })), ['priority']);
  const past = new Date(Date.now() - 60_000);
  assert.deepEqual(await fields(client.topUp({ userId, amount: 1n, expireTime: past })), ['expire_time']);
  assert.deepEqual(await fields(client.grant({ userId, amount: 1n, expireTime: past })), ['expire_time']);
  assert.deepEqual(await fields(client.grant({ userId, amount: 1n, category: 7 })), ['category']);
  assert.deepEqual(await fields(client.listLots({ userId, pageSize: -1 })), ['page_size']);
  assert.deepEqual(await fields(client.listLots({ userId, pageToken: 'not-a-token' })), ['page_token']);
  await rejection(client.listLots({ userId: `nobody-${userId}` }), UserNotFound);

  // Refused before sending: not an int32 priority, not a valid Date.
  await rejection(client.topUp({ userId, amount: 1n, priority: 1.5 }), InvalidInput);
  await rejection(client.grant({ userId, amount: 1n, priority: 2 ** 40 }), InvalidInput);
  await rejection(client.topUp({ userId, amount: 1n, expireTime: new Date('not a date') }), InvalidInput);
  await rejection(client.listLots({ userId, pageSize: 0.5 }), InvalidInput);

  const balance = await client.getBalance(userId);
  assert.deepEqual([balance.balance, balance.lastSequence], [0n, 0n]);
  assert.deepEqual((await client.listLots({ userId, includeEmpty: true })).lots, []);
});

test('a lost top-up reply is retried with the same key and answered with its one lot', async () => {
  const userId = await newUser(client);
  const keys = [];
  const interceptor = (next) => async (req) => {
    keys.push(req.message.idempotencyKey);
    const res = await next(req);
    if (keys.length === 1) throw new ConnectError('connection reset (simulated)', Code.Unavailable);
    return res;
  };
  const retrying = createCreditClient({ baseUrl: server.baseUrl, interceptors: [interceptor] });
  const expireTime = new Date(Date.now() + DAY_MS);
  let reply;
  try {
    reply = await retrying.topUp({ userId, amount: 100n, expireTime, priority: 7 });
  } finally {
    retrying.close();
  }
  assert.equal(keys.length, 2);
  assert.equal(keys[1], keys[0]);
  const listed = await client.listLots({ userId, includeEmpty: true });
  assert.equal(listed.lots.length, 1, 'applied once despite two sends');
  const [lot] = listed.lots;
  assert.ok(reply.lot, 'the replayed answer has the lot');
  assert.deepEqual([reply.lot.lotId, reply.lot.priority, reply.lot.grantedAmount, reply.lot.remaining],
    [lot.lotId, 7, 100n, 100n]);
  assert.equal(timestampDate(reply.lot.expireTime).getTime(), expireTime.getTime());
  assert.equal(reply.lot.sourceTransactionId, reply.transaction.transactionId);
});

test('the lots example runs against the server', async () => {
  const { stdout } = await promisify(execFile)(process.execPath, [path.join(PKG, '.build', 'examples', 'lots.js')], {
    cwd: PKG, env: { ...process.env, CREDIT_URL: server.baseUrl }, timeout: 30_000,
  });
  const shown = /^bonus lot [0-9a-f-]{36} expires (\S+Z)\nbalance 150: paid 100, promotional 50; 50 expire at (\S+Z)\nspent 70: 50 from PROMOTIONAL, 20 from PAID\nlots: PROMOTIONAL 0 of 50 \(expires (\S+Z)\), PAID 80 of 100 \(never expires\)\nrefused: priority: must be 0-100/.exec(stdout);
  assert.ok(shown, `unexpected output:\n${stdout}`);
  assert.deepEqual([shown[2], shown[3]], [shown[1], shown[1]], 'the same expire time everywhere');
});
