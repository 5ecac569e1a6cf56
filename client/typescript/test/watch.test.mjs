// WatchTransactions and WatchBalance: the reconnect rules against an
// in-memory Connect transport that plays scripted streams and errors; then
// against real credit-servers: order and cursors, resume from a stored
// cursor, heartbeats, balances, a slow consumer, a server restart on the
// same port and database, API keys and stream limits (the auto-topup
// example is in alerts.test.mjs).
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';

import { create } from '@bufbuild/protobuf';
import { ConnectError, createRouterTransport } from '@connectrpc/connect';

import {
  Code, CreditClient, CreditError, CreditService, DatabaseUnavailable, ErrorInfoSchema, GetBalanceResponseSchema,
  InvalidArgument, PermissionDenied, ShuttingDown, SlowConsumer, TooManyStreams, TransactionSchema, TransactionType,
  Unauthenticated, Unavailable, UserNotFound, createCreditClient, toCreditError,
} from 'credit-ledger-client';

import { freePort, newKey, newUser, rejection, startServer, tempDir } from './helpers.mjs';

// ---------------------------------------------------------------------------
// Helpers

/** A status as the server sends it: a code and the service's ErrorInfo. */
function status(code, reason, metadata = {}) {
  return new ConnectError(`msg ${reason}`, code, undefined,
    [{ desc: ErrorInfoSchema, value: { reason, domain: 'credit.v1', metadata } }]);
}

/** A feed message with transaction #n (cursor cn), and a heartbeat (cursor cn). */
const txMessage = (n) => ({
  transaction: create(TransactionSchema, { transactionId: `t-${n}`, userId: 'u', sequence: BigInt(n) }), cursor: `c${n}`,
});
const beat = (n) => ({ cursor: `c${n}` });
/** A balance message of lastSequence n. */
const balanceMessage = (n, balance) => ({
  balance: create(GetBalanceResponseSchema, { userId: 'u', balance, available: balance, lastSequence: BigInt(n) }),
});
/** Ends a scripted stream only when the client cancels it. */
const HANG = Symbol('hang');

/**
 * A CreditClient over an in-memory transport whose i-th WatchTransactions
 * (WatchBalance) call plays `transactions[i]` (`balances[i]`): messages,
 * then an optional error to end with, or HANG; a call without a script
 * fails with an error the client must not retry. `calls` records each call.
 */
function scripted({ transactions = [], balances = [] }, options = {}) {
  const calls = [];
  async function* play(scripts, request, ctx) {
    calls.push({
      method: ctx.method.name,
      request,
      authorization: ctx.requestHeader.get('authorization'),
      timeoutMs: ctx.timeoutMs(),
      signal: ctx.signal,
    });
    const script = scripts[calls.length - 1];
    if (script === undefined) throw status(Code.FailedPrecondition, 'UNSCRIPTED');
    for (const step of script) {
      if (step instanceof Error) throw step;
      if (step === HANG) {
        await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve));
        return;
      }
      yield step;
    }
  }
  const transport = createRouterTransport(({ service }) => {
    service(CreditService, {
      watchTransactions: (request, ctx) => play(transactions, request, ctx),
      watchBalance: (request, ctx) => play(balances, request, ctx),
    });
  });
  const client = new CreditClient(transport, { apiKey: 'k-1', retry: { initialBackoffMs: 1, maxBackoffMs: 2 }, ...options });
  return { client, calls };
}

/** The first `n` items of `iterable` (fewer if it ends), then stops it. */
async function take(iterable, n) {
  const items = [];
  if (n === 0) return items;
  for await (const item of iterable) {
    items.push(item);
    if (items.length >= n) break;
  }
  return items;
}

/**
 * Reads a watch one message at a time, each within `ms`; close() aborts
 * it (also when a read is still pending).
 */
function reader(open) {
  const stop = new AbortController();
  const iterator = open(stop.signal)[Symbol.asyncIterator]();
  return {
    async next(ms = 5_000) {
      let timer;
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no message within ${ms} ms`)), ms);
      });
      try {
        const result = await Promise.race([iterator.next(), timeout]);
        assert.equal(result.done, false, 'the watch ended');
        return result.value;
      } finally {
        clearTimeout(timer);
      }
    },
    /** The next message with a transaction (skipping heartbeats). */
    async transaction(ms = 5_000) {
      for (;;) {
        const message = await this.next(ms);
        if (message.transaction !== undefined) return message;
      }
    },
    close() {
      stop.abort();
    },
  };
}

/**
 * Connect interceptor that records the error that ended each stream (or
 * null for a clean end) in `ended`, and counts stream calls in `opened`.
 */
function streamRecorder() {
  const record = { opened: 0, ended: [] };
  record.interceptor = (next) => async (req) => {
    const res = await next(req);
    if (!res.stream) return res;
    record.opened += 1;
    const message = (async function* () {
      try {
        yield* res.message;
        record.ended.push(null);
      } catch (err) {
        record.ended.push(toCreditError(err));
        throw err;
      }
    })();
    return { ...res, message };
  };
  return record;
}

// ---------------------------------------------------------------------------
// The reconnect rules, with scripted streams

describe('reconnect rules (in-memory transport)', () => {
  test('reconnects after SHUTTING_DOWN, SLOW_CONSUMER, a broken connection and a clean end, from the last cursor', async () => {
    const { client, calls } = scripted({
      transactions: [
        [beat(0), txMessage(1), status(Code.Unavailable, 'SHUTTING_DOWN')],
        [txMessage(2), status(Code.ResourceExhausted, 'SLOW_CONSUMER', { waitedSeconds: '10' })],
        // What a server killed mid-stream leaves (an HTTP/2 reset, no status).
        [txMessage(3), new ConnectError('http/2 stream closed with error code CANCEL (0x8)', Code.Canceled)],
        [beat(3)],
        [new ConnectError('connect ECONNREFUSED 127.0.0.1:1', Code.Unavailable)],
        [txMessage(4), HANG],
      ],
    });
    const got = await take(client.watchTransactions({ userId: 'u', types: [TransactionType.USAGE] }), 6);
    assert.deepEqual(got, [beat(0), txMessage(1), txMessage(2), txMessage(3), beat(3), txMessage(4)]);
    assert.ok(!('transaction' in got[0]), 'a heartbeat has no transaction property');
    assert.deepEqual(calls.map((c) => c.request.startAfter), ['', 'c1', 'c2', 'c3', 'c3', 'c3'],
      'every reconnect resumes after the last message yielded');
    for (const call of calls) {
      assert.equal(call.request.userId, 'u');
      assert.deepEqual(call.request.types, [TransactionType.USAGE]);
      assert.equal(call.authorization, 'Bearer k-1', 'the API key goes with every stream');
      assert.equal(call.timeoutMs, undefined, 'a stream has no deadline');
    }
    await sleep(10);
    assert.equal(calls.at(-1).signal.aborted, true, 'breaking out of the loop cancels the call');
  });

  test('starts after the given cursor', async () => {
    const { client, calls } = scripted({ transactions: [[txMessage(8), status(Code.Unavailable, 'SHUTTING_DOWN')], [HANG]] });
    const stop = new AbortController();
    const got = [];
    await assert.rejects(async () => {
      for await (const m of client.watchTransactions({ startAfter: 'c7', signal: stop.signal })) {
        got.push(m);
        setTimeout(() => stop.abort(), 20);
      }
    }, (err) => err instanceof CreditError && err.code === Code.Canceled);
    assert.deepEqual(got, [txMessage(8)]);
    assert.deepEqual(calls.map((c) => [c.request.userId, c.request.startAfter]), [['', 'c7'], ['', 'c8']]);
  });

  test('other errors throw at once as typed errors, also after messages', async () => {
    const cases = [
      [status(Code.ResourceExhausted, 'TOO_MANY_STREAMS', { resource: 'streamsPerKey', limit: '100' }), TooManyStreams],
      [status(Code.PermissionDenied, 'PERMISSION_DENIED'), PermissionDenied],
      [status(Code.InvalidArgument, 'INVALID_ARGUMENT'), InvalidArgument],
      [status(Code.NotFound, 'USER_NOT_FOUND', { userId: 'u' }), UserNotFound],
    ];
    for (const [error, Kind] of cases) {
      const { client, calls } = scripted({ transactions: [[beat(1), error], [HANG]] });
      const got = [];
      const err = await rejection((async () => {
        for await (const m of client.watchTransactions({ userId: 'u' })) got.push(m);
      })(), Kind);
      assert.deepEqual(got, [beat(1)]);
      assert.equal(calls.length, 1, `${Kind.name} is not retried`);
      if (Kind === TooManyStreams) assert.deepEqual([err.resource, err.limit, err.retryable], ['streamsPerKey', 100, true]);
    }
  });

  test('gives up after maxAttempts connections without a message; a message starts the count again', async () => {
    const unavailable = () => status(Code.Unavailable, 'SHUTTING_DOWN');
    const { client, calls } = scripted({
      transactions: [
        [txMessage(1), unavailable()],
        [unavailable()],
        [txMessage(2), unavailable()],
        [unavailable()],
        [status(Code.Unavailable, 'DATABASE_UNAVAILABLE')],
      ],
    }, { retry: { maxAttempts: 3, initialBackoffMs: 1, maxBackoffMs: 2 } });
    const got = [];
    const err = await rejection((async () => {
      for await (const m of client.watchTransactions({ userId: 'u' })) got.push(m);
    })(), DatabaseUnavailable);
    assert.equal(err.reason, 'DATABASE_UNAVAILABLE', 'the last error is thrown');
    assert.deepEqual(got, [txMessage(1), txMessage(2)]);
    assert.equal(calls.length, 5);

    // Streams that end cleanly without a message count the same way.
    const empty = scripted({ balances: [[], [], []] }, { retry: { maxAttempts: 3, initialBackoffMs: 1, maxBackoffMs: 2 } });
    const ended = await rejection(take(empty.client.watchBalance('u'), 1), Unavailable);
    assert.match(ended.message, /ended 3 times in a row without a message/);
    assert.equal(empty.calls.length, 3);

    // A per-watch policy replaces the client's.
    const once = scripted({ transactions: [[unavailable()], [HANG]] });
    await rejection(take(once.client.watchTransactions({ retry: { maxAttempts: 1 } }), 1), ShuttingDown);
    assert.equal(once.calls.length, 1);
  });

  test('resume: false ends with the stream and throws what ended it', async () => {
    const clean = scripted({ transactions: [[beat(0), txMessage(1)], [HANG]] });
    assert.deepEqual(await take(clean.client.watchTransactions({ resume: false }), 10), [beat(0), txMessage(1)]);
    assert.equal(clean.calls.length, 1);
    const failed = scripted({ balances: [[balanceMessage(1, 5n), status(Code.Unavailable, 'SHUTTING_DOWN')], [HANG]] });
    const got = [];
    await rejection((async () => {
      for await (const b of failed.client.watchBalance('u', { resume: false })) got.push(b.balance);
    })(), ShuttingDown);
    assert.deepEqual(got, [5n]);
    assert.equal(failed.calls.length, 1);
  });

  test('aborting the signal cancels the call, or the wait to reconnect', async () => {
    const { client, calls } = scripted({ transactions: [[beat(0), HANG]] });
    const watch = reader((signal) => client.watchTransactions({ signal }));
    assert.deepEqual(await watch.next(), beat(0));
    const pending = watch.next();
    watch.close();
    await assert.rejects(pending, (err) => err instanceof CreditError && err.code === Code.Canceled);
    await sleep(10);
    assert.equal(calls[0].signal.aborted, true, 'the call was canceled');

    const waiting = scripted({ balances: [[status(Code.Unavailable, 'SHUTTING_DOWN')]] },
      { retry: { maxAttempts: 5, initialBackoffMs: 60_000, maxBackoffMs: 60_000 } });
    const started = Date.now();
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 50);
    await assert.rejects(take(waiting.client.watchBalance('u', { signal: abort.signal }), 1),
      (err) => err instanceof CreditError && err.code === Code.Canceled);
    assert.ok(Date.now() - started < 5_000, 'the wait before reconnecting ends with the signal');
    assert.equal(waiting.calls.length, 1);
  });

  test('watchBalance: reconnects, and skips a first value equal to the last one yielded', async () => {
    const { client, calls } = scripted({
      balances: [
        [balanceMessage(1, 100n), balanceMessage(2, 70n), status(Code.Unavailable, 'SHUTTING_DOWN')],
        [balanceMessage(2, 70n), balanceMessage(3, 90n), status(Code.ResourceExhausted, 'SLOW_CONSUMER')],
        [balanceMessage(4, 95n), HANG],
      ],
    });
    const got = await take(client.watchBalance('u'), 4);
    assert.deepEqual(got.map((b) => [b.lastSequence, b.balance]), [[1n, 100n], [2n, 70n], [3n, 90n], [4n, 95n]]);
    assert.equal(got[0].$typeName, 'credit.v1.GetBalanceResponse', 'what getBalance returns');
    assert.deepEqual(calls.map((c) => [c.method, c.request.userId, c.authorization]),
      Array(3).fill(['WatchBalance', 'u', 'Bearer k-1']));
  });
});

// ---------------------------------------------------------------------------
// Against a real credit-server (plaintext, no keys: the caller is an admin)

describe('against a credit-server', () => {
  let server;
  let client;

  before(async () => {
    server = await startServer({ args: ['--stream-heartbeat-secs', '1', '--slow-consumer-secs', '1'] });
    client = createCreditClient({ baseUrl: server.baseUrl });
  });

  after(async () => {
    client?.close();
    await server?.stop();
  });

  test('(a) a watch started before the writes sees exactly them, in sequence order, with cursors', async () => {
    const userId = await newUser(client);
    const other = await newUser(client);
    const watch = reader((signal) => client.watchTransactions({ userId, signal }));
    try {
      const first = await watch.next();
      assert.equal(first.transaction, undefined, 'from now, the first message is a heartbeat');
      assert.ok(first.cursor.length > 0);
      const receipts = [];
      receipts.push(await client.topUp({ userId, amount: 100n }));
      await client.topUp({ userId: other, amount: 1n }); // another user's: not in this feed
      receipts.push(await client.spend({ userId, amount: 30n }));
      receipts.push(await client.grant({ userId, amount: 5n, reason: 'r' }));
      receipts.push(await client.refund({ userId, transactionId: receipts[1].transaction.transactionId, amount: 10n }));
      const got = [];
      for (let i = 0; i < receipts.length; i += 1) got.push(await watch.transaction());
      assert.deepEqual(got.map((m) => m.transaction.transactionId), receipts.map((r) => r.transaction.transactionId));
      assert.deepEqual(got.map((m) => m.transaction.sequence), [1n, 2n, 3n, 4n]);
      assert.deepEqual(got.map((m) => m.transaction.type),
        [TransactionType.TOP_UP, TransactionType.USAGE, TransactionType.GRANT, TransactionType.REFUND]);
      assert.deepEqual(got.map((m) => m.transaction.runningBalance), [100n, 70n, 75n, 85n]);
      const cursors = [first.cursor, ...got.map((m) => m.cursor)];
      assert.ok(cursors.every((c) => typeof c === 'string' && c.length > 0));
      assert.equal(new Set(cursors).size, cursors.length, 'every transaction has its own cursor');
    } finally {
      watch.close();
    }
  });

  test('(b) resuming from a stored cursor gives exactly the later transactions, none repeated', async () => {
    const userId = await newUser(client);
    const first = reader((signal) => client.watchTransactions({ userId, signal }));
    let stored;
    const ids = [];
    try {
      await first.next();
      for (let i = 1; i <= 4; i += 1) ids.push((await client.topUp({ userId, amount: BigInt(i) })).transaction.transactionId);
      await first.transaction();
      stored = (await first.transaction()).cursor; // processed #1 and #2, then "crashed"
    } finally {
      first.close();
    }
    const resumed = reader((signal) => client.watchTransactions({ userId, startAfter: stored, signal }));
    try {
      const got = [await resumed.transaction(), await resumed.transaction()];
      ids.push((await client.topUp({ userId, amount: 5n })).transaction.transactionId);
      got.push(await resumed.transaction());
      assert.deepEqual(got.map((m) => m.transaction.sequence), [3n, 4n, 5n], 'only the later ones, then live ones');
      assert.deepEqual(got.map((m) => m.transaction.transactionId), ids.slice(2));
    } finally {
      resumed.close();
    }

    // A type filter: only spends, from the same stored cursor.
    await client.spend({ userId, amount: 2n });
    const usage = reader((signal) => client.watchTransactions({ userId, startAfter: stored, types: [TransactionType.USAGE], signal }));
    try {
      const spend = await usage.transaction();
      assert.deepEqual([spend.transaction.type, spend.transaction.sequence], [TransactionType.USAGE, 6n]);
    } finally {
      usage.close();
    }
  });

  test('(c) heartbeats arrive on a quiet ledger, and their cursors resume', async () => {
    const userId = await newUser(client);
    const watch = reader((signal) => client.watchTransactions({ userId, signal }));
    let last;
    try {
      const started = Date.now();
      const beats = [await watch.next(), await watch.next(3_000)];
      const elapsed = Date.now() - started;
      for (const m of beats) {
        assert.equal(m.transaction, undefined, 'a heartbeat');
        assert.ok(m.cursor.length > 0);
      }
      assert.ok(elapsed >= 500 && elapsed < 3_000, `heartbeats every ~1 s (--stream-heartbeat-secs 1), took ${elapsed} ms`);
      last = beats[1].cursor;
    } finally {
      watch.close();
    }
    const { transaction } = await client.topUp({ userId, amount: 1n });
    const resumed = reader((signal) => client.watchTransactions({ userId, startAfter: last, signal }));
    try {
      assert.equal((await resumed.transaction()).transaction.transactionId, transaction.transactionId);
    } finally {
      resumed.close();
    }
  });

  test('(d) watchBalance gives the current value first, then the value after a spend', async () => {
    const userId = await newUser(client);
    await client.topUp({ userId, amount: 100n });
    const watch = reader((signal) => client.watchBalance(userId, { signal }));
    try {
      const current = await watch.next();
      assert.deepEqual(current, await client.getBalance(userId), 'the same as getBalance');
      assert.deepEqual([current.balance, current.available, current.lastSequence], [100n, 100n, 1n]);
      await client.spend({ userId, amount: 30n });
      const after = await watch.next();
      assert.deepEqual([after.balance, after.available, after.lastSequence], [70n, 70n, 2n]);
      await client.reserve({ userId, amount: 20n });
      const held = await watch.next();
      assert.deepEqual([held.balance, held.held, held.available, held.lastSequence], [70n, 20n, 50n, 2n],
        'a hold changes the balance message without a transaction');
    } finally {
      watch.close();
    }
    await rejection(take(client.watchBalance(`${userId}-missing`), 1), UserNotFound);
  });

  test('a bad cursor is InvalidArgument (field start_after), thrown at once', async () => {
    const userId = await newUser(client);
    const err = await rejection(take(client.watchTransactions({ userId, startAfter: 'not-a-cursor' }), 1), InvalidArgument);
    assert.equal(err.code, Code.InvalidArgument);
    assert.deepEqual(err.fieldViolations.map((v) => v.field), ['start_after']);
  });

  test('a slow consumer is cut off (SLOW_CONSUMER) and resumed without losing or repeating a transaction', async () => {
    const users = await Promise.all(Array.from({ length: 10 }, () => newUser(client)));
    const record = streamRecorder();
    const watcher = createCreditClient({ baseUrl: server.baseUrl, interceptors: [record.interceptor] });
    try {
      // Every user's feed (this server has no keys: the caller is an admin).
      const [start] = await take(watcher.watchTransactions(), 1);
      // More than the server's buffer and the HTTP/2 window hold: ~8 KB each.
      const padding = 'x'.repeat(8_000);
      const written = new Set();
      await Promise.all(users.map(async (userId) => {
        for (let i = 0; i < 20; i += 1) {
          written.add((await client.topUp({ userId, amount: 1n, metadata: { padding } })).transaction.transactionId);
        }
      }));
      const seen = [];
      let paused = false;
      for await (const { transaction } of watcher.watchTransactions({ startAfter: start.cursor })) {
        if (!paused) {
          paused = true;
          await sleep(2_500); // --slow-consumer-secs 1: the server gives up on this stream
        }
        if (transaction !== undefined && users.includes(transaction.userId)) seen.push(transaction.transactionId);
        if (seen.length >= written.size) break;
      }
      assert.equal(new Set(seen).size, seen.length, 'no transaction twice');
      assert.deepEqual(new Set(seen), written, 'every transaction');
      const slow = record.ended.filter((e) => e instanceof SlowConsumer);
      assert.ok(slow.length >= 1, `a stream ended with SLOW_CONSUMER: ${record.ended.map((e) => e?.reason ?? e?.name)}`);
      assert.equal(slow[0].code, Code.ResourceExhausted);
      assert.ok(record.opened >= 3, 'the watch reconnected');
    } finally {
      watcher.close();
    }
  });
});

// ---------------------------------------------------------------------------
// A restart: SIGTERM, then a new process on the same port and SQLite file

test('(e) the watch resumes across a server restart and yields every transaction exactly once', async () => {
  const dir = tempDir('credit-ts-restart-');
  const port = await freePort();
  const args = ['--stream-heartbeat-secs', '1', '--shutdown-grace-secs', '5'];
  let server = await startServer({ args, port, dir });
  const record = streamRecorder();
  // Patient enough to ride out the restart: up to ~40 reconnects <= 250 ms apart.
  const retry = { maxAttempts: 40, initialBackoffMs: 50, maxBackoffMs: 250 };
  const client = createCreditClient({ baseUrl: server.baseUrl, retry, interceptors: [record.interceptor] });
  const writer = createCreditClient({ baseUrl: server.baseUrl, retry });
  const stop = new AbortController();
  try {
    const userId = await newUser(writer);
    const seen = [];
    let started;
    const ready = new Promise((resolve) => { started = resolve; });
    const consumer = (async () => {
      for await (const { transaction } of client.watchTransactions({ userId, signal: stop.signal })) {
        started();
        if (transaction === undefined) continue;
        seen.push(transaction);
        if (seen.length === 6) return;
      }
    })();
    consumer.catch(() => undefined);
    await ready;
    const ids = [];
    for (let i = 1; i <= 3; i += 1) ids.push((await writer.topUp({ userId, amount: BigInt(i) })).transaction.transactionId);
    while (seen.length < 3) await sleep(20);

    await server.stop('SIGTERM');
    server = await startServer({ args, port, dir });
    for (let i = 4; i <= 6; i += 1) ids.push((await writer.topUp({ userId, amount: BigInt(i) })).transaction.transactionId);

    let timer;
    await Promise.race([consumer, new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`saw ${seen.length} of 6 transactions`)), 10_000);
    })]).finally(() => clearTimeout(timer));
    assert.deepEqual(seen.map((t) => t.sequence), [1n, 2n, 3n, 4n, 5n, 6n]);
    assert.deepEqual(seen.map((t) => t.transactionId), ids, 'every transaction once, across both processes');
    assert.ok(record.ended.some((e) => e instanceof ShuttingDown),
      `the first server ended the stream with SHUTTING_DOWN: ${record.ended.map((e) => e?.reason || e?.message)}`);
  } finally {
    stop.abort();
    client.close();
    writer.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------
// API keys and stream limits

describe('API keys and stream limits', () => {
  let server;
  let keys;
  const clients = [];
  const connect = (key) => {
    const client = createCreditClient({ baseUrl: server.baseUrl, apiKey: key });
    clients.push(client);
    return client;
  };

  before(async () => {
    keys = {
      billing: newKey('billing', 'service'),
      auditor: newKey('auditor', 'reader'),
      ops: newKey('ops', 'admin'),
      ops2: newKey('ops2', 'admin'),
    };
    server = await startServer({
      args: ['--api-keys', Object.values(keys).map((k) => k.line).join(','), '--max-streams-per-key', '1',
        '--stream-heartbeat-secs', '1'],
    });
  });

  after(async () => {
    for (const client of clients) client.close();
    await server?.stop();
  });

  /**
   * The first message of `open()`, retrying while the key's one stream slot
   * is still taken: the server frees it once it sees the last stream's
   * cancel, a moment after the client sent it.
   */
  async function firstWhenFree(open) {
    for (let attempt = 0; ; attempt += 1) {
      try {
        for await (const message of open()) return message; // returning ends the stream
        throw new Error('the stream ended without a message');
      } catch (err) {
        if (!(err instanceof TooManyStreams) || attempt >= 30) throw err;
        await sleep(100);
      }
    }
  }

  test('(f) every user needs the admin role: a reader is PERMISSION_DENIED; its own user it may watch', async () => {
    const auditor = connect(keys.auditor.key);
    const denied = await rejection(take(auditor.watchTransactions(), 1), PermissionDenied);
    assert.equal(denied.code, Code.PermissionDenied);
    assert.match(denied.message, /admin/);
    await rejection(take(auditor.watchTransactions({ userId: '' }), 1), PermissionDenied);
    await rejection(take(connect(undefined).watchBalance('x'), 1), Unauthenticated);

    const userId = await newUser(connect(keys.ops.key));
    const first = await firstWhenFree(() => auditor.watchTransactions({ userId })); // the key is sent
    assert.equal(first.transaction, undefined);
    const balance = await firstWhenFree(() => auditor.watchBalance(userId, { resume: false }));
    assert.equal(balance.balance, 0n);
  });

  test('an admin watches every user; a second stream of the key is TOO_MANY_STREAMS; breaking out frees it', async () => {
    const ops = connect(keys.ops2.key);
    const billing = connect(keys.billing.key);
    const userId = await newUser(ops);
    const everyone = reader((signal) => ops.watchTransactions({ signal }));
    try {
      await everyone.next();
      const { transaction } = await billing.topUp({ userId, amount: 7n });
      const got = await everyone.transaction();
      assert.equal(got.transaction.transactionId, transaction.transactionId);
      assert.equal(got.transaction.createdBy, 'billing');

      const started = Date.now();
      const limited = await rejection(take(ops.watchBalance(userId), 1), TooManyStreams);
      assert.ok(Date.now() - started < 2_000, 'not retried');
      assert.deepEqual([limited.code, limited.reason, limited.resource, limited.limit],
        [Code.ResourceExhausted, 'TOO_MANY_STREAMS', 'streamsPerKey', 1]);
    } finally {
      everyone.close(); // aborting the signal cancels the call
    }

    // Aborting the signal, and returning from the loop, cancel the call:
    // the server frees the key's slot and a new stream opens.
    for (let i = 0; i < 3; i += 1) {
      assert.equal((await firstWhenFree(() => ops.watchBalance(userId))).balance, 7n);
    }
  });
});
