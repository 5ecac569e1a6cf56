// Holds against a real credit-server: Reserve, Capture, Release, GetHold,
// ListHolds, the typed errors, expiry, and retries that keep the key.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';

import { Code, ConnectError } from '@connectrpc/connect';

import {
  HoldExpired, HoldNotActive, HoldNotFound, HoldState, IdempotencyKeyReused, InsufficientBalance, InvalidArgument,
  InvalidInput, NotFound, createCreditClient, timestampDate,
} from 'credit-ledger-client';
import { newUser, rejection, startServer } from './helpers.mjs';

let server;
let client;

before(async () => {
  server = await startServer();
  client = createCreditClient({ baseUrl: server.baseUrl });
});

after(async () => {
  client?.close();
  await server?.stop();
});

async function funded(amount = 100n) {
  const userId = await newUser(client);
  await client.topUp({ userId, amount });
  return userId;
}

test('reserve, capture, release, getHold', async () => {
  const userId = await funded();
  const usage = { graphExecId: 'run-1', reason: 'estimate' };
  const input = { userId, amount: 60n, ttlMs: 600_000, idempotencyKey: 'job-1', usage, metadata: { model: 'small' } };
  const reserved = await client.reserve(input);
  const { hold } = reserved;
  assert.equal(hold.state, HoldState.ACTIVE);
  assert.equal(hold.amount, 60n);
  assert.equal(hold.idempotencyKey, 'job-1');
  assert.equal(hold.usage.graphExecId, 'run-1');
  assert.deepEqual(hold.metadata, { model: 'small' });
  assert.equal(hold.closedAt, undefined);
  const ttl = timestampDate(hold.expireTime).getTime() - timestampDate(hold.createdAt).getTime();
  assert.ok(Math.abs(ttl - 600_000) <= 1000, `ttl ${ttl}`);
  assert.deepEqual([reserved.balance, reserved.available, reserved.transaction], [100n, 40n, undefined]);

  const again = await client.reserve(input);
  assert.equal(again.hold.holdId, hold.holdId, 'the same key answers with the same hold');
  const balance = await client.getBalance(userId);
  assert.deepEqual([balance.balance, balance.held, balance.available], [100n, 60n, 40n]);
  await rejection(client.spend({ userId, amount: 50n }), InsufficientBalance);

  const captured = await client.capture({ userId, holdId: hold.holdId, amount: 45n });
  assert.equal(captured.transaction.amount, -45n);
  assert.equal(captured.transaction.holdId, hold.holdId);
  assert.equal(captured.transaction.usage.graphExecId, 'run-1', "the hold's usage");
  assert.equal(captured.hold.state, HoldState.CAPTURED);
  assert.equal(captured.hold.capturedAmount, 45n);
  assert.deepEqual([captured.balance, captured.available], [55n, 55n]);
  assert.equal((await client.getTransaction(userId, captured.transaction.transactionId)).holdId, hold.holdId);
  assert.deepEqual(await client.getHold(userId, hold.holdId), captured.hold);

  const second = await client.reserve({ userId, amount: 20n, expireTime: new Date(Date.now() + 300_000) });
  const released = await client.release({ userId, holdId: second.hold.holdId, reason: 'job cancelled' });
  assert.equal(released.hold.state, HoldState.RELEASED);
  assert.equal(released.hold.releaseReason, 'job cancelled');
  assert.equal(released.transaction, undefined);
  const third = await client.reserve({ userId, amount: 10n });
  const zero = await client.capture({ userId, holdId: third.hold.holdId, amount: 0 });
  assert.equal(zero.transaction, undefined);
  assert.equal(zero.hold.state, HoldState.RELEASED);
});

test('hold errors are typed', async () => {
  const userId = await funded();
  const absent = randomUUID();
  const notFound = await rejection(client.getHold(userId, absent), HoldNotFound);
  assert.ok(notFound instanceof NotFound);
  assert.deepEqual([notFound.code, notFound.userId, notFound.holdId], [Code.NotFound, userId, absent]);

  const { hold } = await client.reserve({ userId, amount: 30n });
  await client.capture({ userId, holdId: hold.holdId, amount: 30n });
  const notActive = await rejection(client.release({ userId, holdId: hold.holdId }), HoldNotActive);
  assert.deepEqual([notActive.code, notActive.holdId, notActive.state], [Code.FailedPrecondition, hold.holdId, 'CAPTURED']);

  await rejection(client.reserve({ userId, amount: 71n }), InsufficientBalance);
  await rejection(client.reserve({ userId, amount: 1n, ttlMs: 30 * 86_400_000 }), InvalidArgument);
  await rejection(client.reserve({ userId, amount: 1n, ttlMs: 60_000, expireTime: new Date() }), InvalidInput);
  await client.reserve({ userId, amount: 5n, idempotencyKey: 'k' });
  await rejection(client.reserve({ userId, amount: 6n, idempotencyKey: 'k' }), IdempotencyKeyReused);
});

test('an expired hold frees its credits and cannot be captured', async () => {
  const userId = await funded();
  const { hold } = await client.reserve({ userId, amount: 100n, ttlMs: 1000 });
  assert.equal((await client.getBalance(userId)).available, 0n);
  await sleep(1600);
  const balance = await client.getBalance(userId);
  assert.deepEqual([balance.held, balance.available], [0n, 100n]);
  assert.equal((await client.getHold(userId, hold.holdId)).state, HoldState.EXPIRED);
  const expired = await rejection(client.capture({ userId, holdId: hold.holdId, amount: 5n }), HoldExpired);
  assert.equal(expired.holdId, hold.holdId);
  assert.ok(Math.abs(expired.expireTime.getTime() - timestampDate(hold.expireTime).getTime()) <= 1000);
});

test('listHolds pages and filters; iterHolds follows the pages', async () => {
  const userId = await funded();
  const ids = [];
  for (let i = 0; i < 5; i += 1) ids.push((await client.reserve({ userId, amount: 3n })).hold.holdId);
  await client.capture({ userId, holdId: ids[0], amount: 2n });
  await client.release({ userId, holdId: ids[1] });

  const all = [];
  for await (const h of client.iterHolds({ userId, pageSize: 2 })) all.push(h.holdId);
  assert.deepEqual(all, [...ids].reverse());
  const page = await client.listHolds({ userId, pageSize: 2 });
  assert.equal(page.holds.length, 2);
  assert.ok(page.nextPageToken);
  const rest = await client.listHolds({ userId, pageSize: 10, pageToken: page.nextPageToken });
  assert.deepEqual(rest.holds.map((h) => h.holdId), ids.slice(0, 3).reverse());
  assert.equal(rest.nextPageToken, undefined);
  const active = await client.listHolds({ userId, states: [HoldState.ACTIVE] });
  assert.deepEqual(active.holds.map((h) => h.holdId), ids.slice(2).reverse());
  const closed = await client.listHolds({ userId, states: [HoldState.CAPTURED, HoldState.RELEASED] });
  assert.deepEqual(new Set(closed.holds.map((h) => h.holdId)), new Set(ids.slice(0, 2)));
});

for (const write of ['reserve', 'capture', 'release']) {
  test(`a lost ${write} reply is retried with the same key and applied once`, async () => {
    const userId = await funded();
    const holdId = write === 'reserve' ? '' : (await client.reserve({ userId, amount: 40n })).hold.holdId;
    const keys = [];
    const interceptor = (next) => async (req) => {
      keys.push(req.message.idempotencyKey);
      const res = await next(req);
      if (keys.length === 1) throw new ConnectError('connection reset (simulated)', Code.Unavailable);
      return res;
    };
    const retrying = createCreditClient({ baseUrl: server.baseUrl, interceptors: [interceptor] });
    try {
      const reply = write === 'reserve'
        ? await retrying.reserve({ userId, amount: 40n })
        : write === 'capture'
          ? await retrying.capture({ userId, holdId, amount: 25n })
          : await retrying.release({ userId, holdId });
      assert.equal(keys.length, 2);
      assert.ok(keys[0]);
      assert.equal(keys[1], keys[0]);
      if (write === 'reserve') assert.equal(reply.hold.idempotencyKey, keys[0]);
    } finally {
      retrying.close();
    }
    const balance = await client.getBalance(userId);
    const expected = { reserve: [100n, 40n], capture: [75n, 0n], release: [100n, 0n] }[write];
    assert.deepEqual([balance.balance, balance.held], expected, 'applied once despite two sends');
  });
}

test('the holds example runs against the server', async () => {
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  const path = await import('node:path');
  const { PKG } = await import('./helpers.mjs');
  const { stdout } = await promisify(execFile)(process.execPath, [path.join(PKG, '.build', 'examples', 'holds.js')], {
    cwd: PKG, env: { ...process.env, CREDIT_URL: server.baseUrl }, timeout: 30_000,
  });
  assert.match(stdout, /charged 37, balance 63\nrefused: HOLD_NOT_ACTIVE \(RELEASED\)\nbalance 63, held 0, available 63\ncaptured 37 of 50\nnot enough credits: 63 available/);
});
