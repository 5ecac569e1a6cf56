// Every RPC, the history filters and paging, errors by class, idempotency
// and retries, against a real credit-server (plaintext, no keys); then the
// compiled examples run against it.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';

import { Code, ConnectError } from '@connectrpc/connect';

import {
  BalanceOverflow, CreditError, DeadlineExceeded, EmailAlreadyExists, IdempotencyKeyReused, InsufficientBalance,
  InvalidArgument, InvalidInput, NO_RETRY, NotRefundable, RefundExceedsOriginal, TransactionNotFound, TransactionType,
  Unavailable, UserAlreadyExists, UserNotFound, createCreditClient, timestampDate,
} from 'credit-ledger-client';
import { PKG, freePort, newUser, rejection, startServer } from './helpers.mjs';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** @type {Awaited<ReturnType<typeof startServer>>} */
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

describe('users and balances', () => {
  test('CreateUser, GetUser, GetBalance', async () => {
    const userId = await newUser();
    const user = await client.createUser({ userId, email: `${userId}@example.com`, name: 'Dana' });
    assert.equal(user.$typeName, 'credit.v1.User');
    assert.deepEqual([user.userId, user.email, user.name], [userId, `${userId}@example.com`, 'Dana']);
    assert.ok(Math.abs(timestampDate(user.createdAt).getTime() - Date.now()) < 60_000);
    const again = await client.createUser({ userId, email: `${userId}@example.com`, name: 'Dana' });
    assert.deepEqual(again, user, 'creating the same user again returns it');
    assert.deepEqual(await client.getUser(userId), user);
    const balance = await client.getBalance(userId);
    assert.equal(balance.userId, userId);
    assert.equal(balance.balance, 0n);
    assert.equal(balance.lastSequence, 0n);
  });

  test('taken ids and emails', async () => {
    const userId = await newUser(client);
    const sameId = await rejection(client.createUser({ userId, email: `other-${userId}@example.com` }), UserAlreadyExists);
    assert.equal(sameId.code, Code.AlreadyExists);
    assert.equal(sameId.userId, userId);
    const sameEmail = await rejection(
      client.createUser({ userId: `${userId}-2`, email: `${userId}@example.com` }), EmailAlreadyExists);
    assert.equal(sameEmail.email, `${userId}@example.com`);
  });

  test('unknown user and transaction', async () => {
    const nobody = await newUser();
    const err = await rejection(client.getBalance(nobody), UserNotFound);
    assert.deepEqual([err.code, err.reason, err.domain, err.userId, err.retryable],
      [Code.NotFound, 'USER_NOT_FOUND', 'credit.v1', nobody, false]);
    await rejection(client.getUser(nobody), UserNotFound);
    const userId = await newUser(client);
    const missing = await rejection(client.getTransaction(userId, '00000000-0000-0000-0000-000000000000'),
      TransactionNotFound);
    assert.equal(missing.transactionId, '00000000-0000-0000-0000-000000000000');
  });
});

describe('writes', () => {
  test('TopUp, Spend, Grant, Refund, GetTransaction', async () => {
    const userId = await newUser(client);
    const topUp = await client.topUp({ userId, amount: 100, metadata: { order: 'o-1', items: [1, 2], nested: { ok: true } } });
    assert.equal(topUp.balance, 100n);
    assert.equal(topUp.transaction.type, TransactionType.TOP_UP);
    assert.equal(topUp.transaction.amount, 100n);
    assert.equal(topUp.transaction.sequence, 1n);
    assert.match(topUp.transaction.idempotencyKey, UUID, 'the client made a UUID key');
    assert.deepEqual(topUp.transaction.metadata, { order: 'o-1', items: [1, 2], nested: { ok: true } });

    const spend = await client.spend({ userId, amount: 30n, usage: { graphExecId: 'e-1', graphId: 'g-1', reason: 'run' } });
    assert.deepEqual([spend.balance, spend.transaction.amount, spend.transaction.runningBalance], [70n, -30n, 70n]);
    assert.equal(spend.transaction.type, TransactionType.USAGE);
    assert.equal(spend.transaction.usage?.graphId, 'g-1');

    const grant = await client.grant({ userId, amount: 5n, reason: 'bonus' });
    assert.deepEqual([grant.balance, grant.transaction.type, grant.transaction.reason], [75n, TransactionType.GRANT, 'bonus']);

    const partial = await client.refund({ userId, transactionId: spend.transaction.transactionId, amount: 10n, reason: 'oops' });
    assert.equal(partial.balance, 85n);
    assert.equal(partial.transaction.type, TransactionType.REFUND);
    assert.equal(partial.transaction.refundedTransactionId, spend.transaction.transactionId);
    const rest = await client.refund({ userId, transactionId: spend.transaction.transactionId });
    assert.equal(rest.balance, 105n, 'without amount, everything not yet refunded');

    const fetched = await client.getTransaction(userId, spend.transaction.transactionId);
    assert.equal(fetched.refundedAmount, 30n);
    assert.equal(fetched.usage?.graphExecId, 'e-1');
    assert.equal((await client.getBalance(userId)).balance, 105n);
    assert.equal((await client.getBalance(userId)).lastSequence, 5n);

    // The audit fields: this server runs without keys, so the writer is "anonymous".
    assert.equal(fetched.createdBy, 'anonymous');
    assert.equal(fetched.createdByCertificateSubject, '');
  });

  test('typed refusals', async () => {
    const userId = await newUser(client);
    const { transaction } = await client.topUp({ userId, amount: 70n });
    const insufficient = await rejection(client.spend({ userId, amount: 500n }), InsufficientBalance);
    assert.deepEqual([insufficient.code, insufficient.reason, insufficient.availableBalance, insufficient.requestedAmount],
      [Code.FailedPrecondition, 'INSUFFICIENT_BALANCE', 70n, 500n]);
    assert.deepEqual({ ...insufficient.metadata }, { availableBalance: '70', requestedAmount: '500' });

    const tooMuch = await rejection(client.refund({ userId, transactionId: transaction.transactionId, amount: 71n }),
      RefundExceedsOriginal);
    assert.deepEqual([tooMuch.refundableAmount, tooMuch.requestedAmount, tooMuch.transactionId],
      [70n, 71n, transaction.transactionId]);

    const refund = await client.refund({ userId, transactionId: transaction.transactionId, amount: 1n });
    const notRefundable = await rejection(client.refund({ userId, transactionId: refund.transaction.transactionId }),
      NotRefundable);
    assert.equal(notRefundable.transactionId, refund.transaction.transactionId);
    assert.equal(notRefundable.transactionType, 'REFUND');

    await client.topUp({ userId, amount: 9223372036854775807n - 69n });
    const overflow = await rejection(client.topUp({ userId, amount: 1n }), BalanceOverflow);
    assert.deepEqual([overflow.balance, overflow.delta], [9223372036854775807n, 1n]);

    const invalid = await rejection(client.spend({ userId, amount: 0n }), InvalidArgument);
    assert.equal(invalid.code, Code.InvalidArgument);
    assert.deepEqual(invalid.fieldViolations.map((v) => v.field), ['amount']);
    const paging = await rejection(client.listTransactions({ userId, pageSize: -1 }), InvalidArgument);
    assert.deepEqual(paging.fieldViolations.map((v) => v.field), ['page_size']);

    await rejection(client.topUp({ userId, amount: 1.5 }), InvalidInput);
    await rejection(client.topUp({ userId, amount: 2n ** 63n }), InvalidInput);
  });

  test('the same idempotency key applies a write once', async () => {
    const userId = await newUser(client);
    await client.topUp({ userId, amount: 100n });
    const idempotencyKey = `spend-${userId}`;
    const first = await client.spend({ userId, amount: 40n, idempotencyKey });
    const again = await client.spend({ userId, amount: 40n, idempotencyKey });
    assert.equal(again.transaction.transactionId, first.transaction.transactionId);
    assert.equal(again.transaction.idempotencyKey, idempotencyKey);
    assert.deepEqual([first.balance, again.balance], [60n, 60n]);
    const reused = await rejection(client.spend({ userId, amount: 41n, idempotencyKey }), IdempotencyKeyReused);
    assert.deepEqual([reused.code, reused.idempotencyKey], [Code.AlreadyExists, idempotencyKey]);
    assert.equal((await client.getBalance(userId)).balance, 60n);
  });
});

describe('retries and deadlines', () => {
  /** A client whose interceptor sees every attempt and may fail it after (or instead of) sending. */
  function scripted(failures, options = {}) {
    const attempts = [];
    const interceptor = (next) => async (req) => {
      attempts.push({ key: req.message.idempotencyKey, authorization: req.header.get('authorization') });
      const failure = failures[attempts.length - 1];
      if (failure?.before) throw failure.before;
      const res = await next(req);
      if (failure?.after) throw failure.after;
      return res;
    };
    return { attempts, retrying: createCreditClient({ baseUrl: server.baseUrl, interceptors: [interceptor], ...options }) };
  }

  test('a lost reply is retried with the same key and applied once', async () => {
    const userId = await newUser(client);
    await client.topUp({ userId, amount: 50n });
    const { attempts, retrying } = scripted([
      { after: new ConnectError('connection reset (simulated)', Code.Unavailable) },
      { after: new ConnectError('conflict (simulated)', Code.Aborted) },
    ]);
    try {
      const reply = await retrying.spend({ userId, amount: 20n });
      assert.equal(attempts.length, 3);
      assert.match(attempts[0].key, UUID);
      assert.deepEqual(attempts.map((a) => a.key), [attempts[0].key, attempts[0].key, attempts[0].key]);
      assert.equal(reply.transaction.idempotencyKey, attempts[0].key);
      assert.equal(reply.balance, 30n);
    } finally {
      retrying.close();
    }
    assert.equal((await client.getBalance(userId)).balance, 30n, 'applied once despite three sends');
    const types = [];
    for await (const tx of client.iterTransactions({ userId })) types.push(tx.type);
    assert.deepEqual(types, [TransactionType.USAGE, TransactionType.TOP_UP]);
  });

  test('RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED are retried; the caller\'s key is kept', async () => {
    const userId = await newUser(client);
    const { attempts, retrying } = scripted([
      { before: new ConnectError('shed (simulated)', Code.ResourceExhausted) },
      { before: new ConnectError('slow (simulated)', Code.DeadlineExceeded) },
    ]);
    try {
      const reply = await retrying.topUp({ userId, amount: 7n, idempotencyKey: 'my-key' });
      assert.deepEqual(attempts.map((a) => a.key), ['my-key', 'my-key', 'my-key']);
      assert.equal(reply.balance, 7n);
    } finally {
      retrying.close();
    }
  });

  test('other failures are not retried', async () => {
    const userId = await newUser(client);
    const { attempts, retrying } = scripted([]);
    try {
      await rejection(retrying.spend({ userId, amount: 1n }), InsufficientBalance);
      assert.equal(attempts.length, 1);
    } finally {
      retrying.close();
    }
  });

  test('after 4 attempts the last error is returned; NO_RETRY sends once', async () => {
    const userId = await newUser(client);
    const down = () => ({ before: new ConnectError('down (simulated)', Code.Unavailable) });
    const { attempts, retrying } = scripted([down(), down(), down(), down(), down()]);
    const started = Date.now();
    try {
      const err = await rejection(retrying.getBalance(userId), Unavailable);
      assert.equal(err.retryable, true);
      assert.equal(attempts.length, 4);
      const waited = Date.now() - started;
      assert.ok(waited >= 350 && waited < 3000, `waited ${waited} ms (backoff ~100+200+400 with equal jitter)`);
    } finally {
      retrying.close();
    }
    const once = scripted([down(), down()], { retry: NO_RETRY });
    try {
      await rejection(once.retrying.getBalance(userId), Unavailable);
      assert.equal(once.attempts.length, 1);
    } finally {
      once.retrying.close();
    }
  });

  test('each attempt has its own deadline', async () => {
    const userId = await newUser(client);
    let attempts = 0;
    let slowAttempts = 2;
    // A slow attempt outlives its deadline (the wait ends when the deadline
    // fires, and the transport then reports DEADLINE_EXCEEDED).
    const slow = (next) => async (req) => {
      attempts += 1;
      if (attempts <= slowAttempts) await sleep(10_000, undefined, { signal: req.signal }).catch(() => {});
      return next(req);
    };
    const patient = createCreditClient({ baseUrl: server.baseUrl, interceptors: [slow], deadlineMs: 1000 });
    try {
      assert.equal((await patient.getBalance(userId)).balance, 0n, 'the third attempt is in time');
      assert.equal(attempts, 3);
      attempts = 0;
      slowAttempts = 4;
      const err = await rejection(patient.getBalance(userId, { deadlineMs: 50 }), DeadlineExceeded);
      assert.equal(err.code, Code.DeadlineExceeded);
      assert.equal(attempts, 4);
    } finally {
      patient.close();
    }
    assert.equal(client.deadlineMs, 10_000, 'the default deadline');
  });

  test('an unreachable server is UNAVAILABLE after the retries', async () => {
    const port = await freePort();
    const nowhere = createCreditClient({ baseUrl: `http://127.0.0.1:${port}`, retry: { initialBackoffMs: 10 } });
    try {
      const err = await rejection(nowhere.getBalance('x'), Unavailable);
      assert.equal(err.code, Code.Unavailable);
    } finally {
      nowhere.close();
    }
  });

  test('an aborted call stops retrying', async () => {
    const controller = new AbortController();
    const { attempts, retrying } = scripted(Array.from({ length: 4 }, () => ({
      before: new ConnectError('down (simulated)', Code.Unavailable),
    })), { retry: { initialBackoffMs: 1000 } });
    setTimeout(() => controller.abort(), 100);
    try {
      const err = await rejection(retrying.getBalance('x', { signal: controller.signal }), CreditError);
      assert.equal(err.code, Code.Canceled);
      assert.equal(attempts.length, 1);
    } finally {
      retrying.close();
    }
  });
});

describe('history', () => {
  test('pages newest first, the raw page call and the iterator', async () => {
    const userId = await newUser(client);
    await client.topUp({ userId, amount: 1000n });
    for (let amount = 1n; amount <= 6n; amount += 1n) await client.spend({ userId, amount });

    const pages = [];
    let pageToken;
    do {
      const page = await client.listTransactions({ userId, pageSize: 3, pageToken });
      pages.push(page.transactions.map((t) => t.sequence));
      pageToken = page.nextPageToken;
    } while (pageToken !== undefined);
    assert.deepEqual(pages, [[7n, 6n, 5n], [4n, 3n, 2n], [1n]]);

    const everything = [];
    for await (const tx of client.iterTransactions({ userId, pageSize: 2 })) everything.push(tx);
    assert.deepEqual(everything.map((t) => t.sequence), [7n, 6n, 5n, 4n, 3n, 2n, 1n]);
    assert.equal(everything[0].runningBalance, 979n);
    assert.equal(new Set(everything.map((t) => t.transactionId)).size, 7);
  });

  test('filters: types, createdAfter, createdBefore, graphExecId, createdBy', async () => {
    const userId = await newUser(client);
    const all = async (query) => {
      const out = [];
      for await (const tx of client.iterTransactions({ userId, pageSize: 2, ...query })) out.push(tx.amount);
      return out;
    };
    await client.topUp({ userId, amount: 100n });
    await client.grant({ userId, amount: 10n, reason: 'r' });
    await sleep(30);
    const middle = new Date();
    await sleep(30);
    await client.spend({ userId, amount: 1n, usage: { graphExecId: 'exec-a' } });
    await client.spend({ userId, amount: 2n, usage: { graphExecId: 'exec-b' } });
    await client.spend({ userId, amount: 3n, usage: { graphExecId: 'exec-a' } });

    assert.deepEqual(await all({ types: [TransactionType.USAGE] }), [-3n, -2n, -1n]);
    assert.deepEqual(await all({ types: [TransactionType.TOP_UP, TransactionType.GRANT] }), [10n, 100n]);
    assert.deepEqual(await all({ createdAfter: middle }), [-3n, -2n, -1n]);
    assert.deepEqual(await all({ createdBefore: middle }), [10n, 100n]);
    assert.deepEqual(await all({ graphExecId: 'exec-a' }), [-3n, -1n]);
    assert.deepEqual(await all({ graphExecId: 'exec-a', createdAfter: middle, types: [TransactionType.USAGE] }), [-3n, -1n]);
    assert.deepEqual(await all({ createdBy: 'anonymous' }), [-3n, -2n, -1n, 10n, 100n]);
    assert.deepEqual(await all({ createdBy: 'someone-else' }), []);
  });
});

test('VerifyLedger', async () => {
  const userId = await newUser(client);
  await client.topUp({ userId, amount: 3n });
  const one = await client.verifyLedger(userId);
  assert.deepEqual([one.clean, one.usersChecked, one.transactionsChecked, one.violations], [true, 1n, 1n, []]);
  const everyone = await client.verifyLedger();
  assert.equal(everyone.clean, true);
  assert.ok(everyone.usersChecked > 1n);
});

test('the examples run against the server', async () => {
  const run = async (name) => {
    const file = path.join(PKG, '.build', 'examples', `${name}.js`);
    assert.ok(existsSync(file), `${file} (the test script compiles the examples first)`);
    const { stdout } = await promisify(execFile)(process.execPath, [file], {
      cwd: PKG, env: { ...process.env, CREDIT_URL: server.baseUrl }, timeout: 30_000,
    });
    return stdout;
  };
  assert.match(await run('quickstart'), /balance after spend: 70\nrefused: 70 available, 500 requested/);
  const every = await run('every-rpc');
  assert.match(every, /balance: 0\nalert at 80, armed: false\n/);
  assert.match(every, /after refund: 85\n#1 TOP_UP 100 by anonymous/);
  assert.match(every, /usage #2: -30 \(LLM call\)\nledger clean: true\nalert event: 100 -> 70 at #2\nalert at 80, armed: true\n/);
  assert.match(every, /feed #1 TOP_UP 100 \(cursor \S+\)\nfeed #2 USAGE -30 .*\nfeed #3 GRANT 5 .*\nfeed #4 REFUND 10 .*\n/);
  assert.match(every, /mixed feed #1\nmixed feed #2\nmixed feed alert event after #2, listed: true\nalert removed: true\n/);
  assert.match(every, /watched balance: 85 at #4\n$/);
  const errors = await run('errors-and-retries');
  assert.match(errors, /only 50 of .* is left to refund\namount: .*\nnot found \(USER_NOT_FOUND\)\ntrue\nkey .* was used/);
});
