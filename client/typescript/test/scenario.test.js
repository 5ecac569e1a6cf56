// @ts-check
// The caller's story against a real server: user, top-up, spend, errors with
// their google.rpc details, idempotent retries and history paging.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';

import grpc from '@grpc/grpc-js';

import {
  CreditClient, CreditError, IdempotencyKeyReused, InsufficientBalance, InvalidArgument, NotFound,
  decodeStatusDetails,
} from '../src/credit-client.js';
import { startServer } from './server.js';

/** @type {{target: string, stop: () => Promise<void>}} */
let server;
/** @type {CreditClient} */
let client;

before(async () => {
  server = await startServer();
  client = new CreditClient(server.target);
});

after(async () => {
  client?.close();
  await server?.stop();
});

async function newUser() {
  const userId = `js-${randomUUID()}`;
  await client.createUser({ userId, email: `${userId}@example.com`, name: 'Node Test' });
  return userId;
}

/**
 * @param {Promise<unknown>} promise
 * @param {Function} Kind
 * @returns {Promise<any>}
 */
async function rejection(promise, Kind) {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof Kind, `expected ${Kind.name}, got ${err}`);
    return err;
  }
  throw new assert.AssertionError({ message: `expected ${Kind.name}, but the call succeeded` });
}

test('create, top up, spend', async () => {
  const userId = await newUser();
  assert.equal((await client.getUser(userId)).email, `${userId}@example.com`);
  assert.equal((await client.getBalance(userId)).balance, '0');

  const topUp = await client.topUp(userId, 100, { metadata: { order: 'o-1', items: [1, 2] } });
  assert.equal(topUp.balance, '100');
  assert.equal(topUp.transaction.type, 'TRANSACTION_TYPE_TOP_UP');
  assert.equal(topUp.transaction.amount, '100');
  assert.equal(topUp.transaction.sequence, '1');
  assert.deepEqual(topUp.transaction.metadata, { order: 'o-1', items: [1, 2] });

  const spend = await client.spend(userId, 30, { usage: { graphId: 'g-1', reason: 'run' } });
  assert.equal(spend.balance, '70');
  assert.equal(spend.transaction.type, 'TRANSACTION_TYPE_USAGE');
  assert.equal(spend.transaction.amount, '-30');
  assert.equal(spend.transaction.runningBalance, '70');
  assert.equal(spend.transaction.usage.graphId, 'g-1');
  assert.equal((await client.getBalance(userId)).balance, '70');

  const fetched = await client.getTransaction(userId, spend.transaction.transactionId);
  assert.deepEqual(fetched, spend.transaction);
});

test('insufficient balance carries its ErrorInfo', async () => {
  const userId = await newUser();
  await client.topUp(userId, 70);

  const err = await rejection(client.spend(userId, 500), InsufficientBalance);
  assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
  assert.equal(err.reason, 'INSUFFICIENT_BALANCE');
  assert.equal(err.domain, 'credit.v1');
  assert.deepEqual(err.metadata, { availableBalance: '70', requestedAmount: '500' });
  assert.equal(err.availableBalance, 70n);
  assert.equal(err.requestedAmount, 500n);
  assert.equal((await client.getBalance(userId)).balance, '70', 'a failed spend changes nothing');
});

test('ErrorInfo decoded straight from the grpc-status-details-bin trailer', async () => {
  const userId = await newUser();
  /** @type {any} */
  const raw = await new Promise((resolve) => {
    client.stub.Spend({ userId, amount: '1' }, (/** @type {any} */ err) => resolve(err));
  });
  assert.equal(raw.code, grpc.status.FAILED_PRECONDITION);
  const status = decodeStatusDetails(raw.metadata);
  assert.ok(status, 'the trailer is present');
  assert.equal(status.code, grpc.status.FAILED_PRECONDITION);
  const infos = status.details.filter((d) => d.type === 'google.rpc.ErrorInfo');
  assert.equal(infos.length, 1, 'exactly one ErrorInfo');
  assert.deepEqual(infos[0].value, {
    reason: 'INSUFFICIENT_BALANCE',
    domain: 'credit.v1',
    metadata: { availableBalance: '0', requestedAmount: '1' },
  });
});

test('the same idempotency key applies a spend once', async () => {
  const userId = await newUser();
  await client.topUp(userId, 100);
  const idempotencyKey = `spend-${randomUUID()}`;

  const first = await client.spend(userId, 40, { idempotencyKey });
  const again = await client.spend(userId, 40, { idempotencyKey });
  assert.equal(again.transaction.transactionId, first.transaction.transactionId);
  assert.equal(again.transaction.idempotencyKey, idempotencyKey);
  assert.equal(first.balance, '60');
  assert.equal(again.balance, '60');
  assert.equal((await client.getBalance(userId)).balance, '60', 'charged once');

  const err = await rejection(client.spend(userId, 41, { idempotencyKey }), IdempotencyKeyReused);
  assert.equal(err.code, grpc.status.ALREADY_EXISTS);
  assert.equal(err.reason, 'IDEMPOTENCY_KEY_REUSED');
  assert.equal((await client.getBalance(userId)).balance, '60');
});

test('a retry after a lost reply reuses the key and is applied once', async () => {
  const userId = await newUser();
  await client.topUp(userId, 50);
  /** @type {string[]} */
  const keys = [];
  // Lets the first call reach the server, then fails it with UNAVAILABLE (the
  // reply message arrives first, but grpc-js reports a non-OK status as the error).
  /** @type {grpc.Interceptor} */
  const loseFirstReply = (options, nextCall) => new grpc.InterceptingCall(nextCall(options), {
    sendMessage(message, next) {
      keys.push(message.idempotencyKey);
      next(message);
    },
    start(metadata, listener, next) {
      const lose = keys.length === 0;
      next(metadata, {
        onReceiveStatus(status, nextStatus) {
          nextStatus(lose
            ? { code: grpc.status.UNAVAILABLE, details: 'connection reset (simulated)', metadata: new grpc.Metadata() }
            : status);
        },
      });
    },
  });
  const retrying = new CreditClient(server.target, { interceptors: [loseFirstReply] });
  try {
    const reply = await retrying.spend(userId, 20);
    assert.equal(keys.length, 2);
    assert.ok(keys[0]);
    assert.equal(keys[1], keys[0]);
    assert.equal(reply.balance, '30');
  } finally {
    retrying.close();
  }
  assert.equal((await client.getBalance(userId)).balance, '30', 'applied once despite two sends');
  const types = [];
  for await (const tx of client.iterTransactions(userId)) types.push(tx.type);
  assert.deepEqual(types, ['TRANSACTION_TYPE_USAGE', 'TRANSACTION_TYPE_TOP_UP']);
});

test('history pages newest first', async () => {
  const userId = await newUser();
  await client.topUp(userId, 1000);
  for (let amount = 1; amount <= 6; amount += 1) await client.spend(userId, amount);

  const pages = [];
  let pageToken = '';
  do {
    const page = await client.listTransactions(userId, { pageSize: 3, pageToken });
    pages.push(page.transactions.map((t) => t.sequence));
    pageToken = page.nextPageToken;
  } while (pageToken);
  assert.deepEqual(pages, [['7', '6', '5'], ['4', '3', '2'], ['1']]);

  const everything = [];
  for await (const tx of client.iterTransactions(userId, { pageSize: 2 })) everything.push(tx);
  assert.deepEqual(everything.map((t) => t.sequence), ['7', '6', '5', '4', '3', '2', '1']);
  assert.equal(everything[0].runningBalance, '979');
  assert.equal(new Set(everything.map((t) => t.transactionId)).size, 7);

  const usage = [];
  for await (const tx of client.iterTransactions(userId, { types: ['TRANSACTION_TYPE_USAGE'] })) usage.push(tx.amount);
  assert.deepEqual(usage, ['-6', '-5', '-4', '-3', '-2', '-1']);
});

test('invalid fields come back as BadRequest', async () => {
  const userId = await newUser();
  const err = await rejection(client.spend(userId, 0), InvalidArgument);
  assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
  assert.deepEqual(err.fieldViolations.map((/** @type {any} */ v) => v.field), ['amount']);

  const paging = await rejection(client.listTransactions(userId, { pageSize: -1 }), InvalidArgument);
  assert.deepEqual(paging.fieldViolations.map((/** @type {any} */ v) => v.field), ['page_size']);
});

test('an unknown user is NOT_FOUND', async () => {
  const err = await rejection(client.getBalance(`nobody-${randomUUID()}`), NotFound);
  assert.equal(err.code, grpc.status.NOT_FOUND);
  assert.equal(err.reason, 'USER_NOT_FOUND');
  assert.ok(err instanceof CreditError);
});
