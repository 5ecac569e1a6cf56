// Low-balance alerts: watchTransactions' `content` and `alertEvent` on an
// in-memory transport; then against a real credit-server: SetBalanceAlert
// (armed or not, the same alert again, key reuse, invalid thresholds, the
// limit), one event per downward crossing as ListAlertEvents and the feed
// show it, re-arming, DeleteBalanceAlert, the roles, and the auto-topup
// example: two consumers at once (and a replay) top up once per event.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';

import { create } from '@bufbuild/protobuf';
import { ConnectError, createRouterTransport } from '@connectrpc/connect';

import {
  AlertEventSchema, AlertNotFound, Code, CreditClient, CreditService, FeedContent, IdempotencyKeyReused, InvalidArgument,
  InvalidInput, NotFound, PermissionDenied, TooManyAlerts, TransactionSchema, TransactionType, UserNotFound,
  createCreditClient,
} from 'credit-ledger-client';

import { PKG, newKey, newUser, rejection, startServer } from './helpers.mjs';

/** The first `n` messages of a feed that are not heartbeats, each within `ms`. */
async function feedItems(feed, n, ms = 5_000) {
  const items = [];
  const iterator = feed[Symbol.asyncIterator]();
  try {
    while (items.length < n) {
      let timer;
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${items.length} of ${n} feed items within ${ms} ms`)), ms);
      });
      const next = await Promise.race([iterator.next(), timeout]).finally(() => clearTimeout(timer));
      assert.equal(next.done, false, 'the feed ended');
      if (next.value.transaction !== undefined || next.value.alertEvent !== undefined) items.push(next.value);
    }
  } finally {
    await iterator.return?.();
  }
  return items;
}

/** The cursor where a user's feed stands now: a watch from now starts with a heartbeat. */
async function cursorNow(client, userId, content = FeedContent.ALERT_EVENTS) {
  for await (const message of client.watchTransactions({ userId, content })) return message.cursor;
  throw new Error('the feed ended');
}

async function all(iterable) {
  const items = [];
  for await (const item of iterable) items.push(item);
  return items;
}

// ---------------------------------------------------------------------------
// On an in-memory transport

test('watchTransactions sends content and yields alertEvent; a heartbeat has neither; a reconnect keeps content', async () => {
  const requests = [];
  const event = create(AlertEventSchema, { eventId: 'e-1', alertId: 'a-1', userId: 'u', threshold: 50n, sequence: 2n });
  const tx = create(TransactionSchema, { transactionId: 't-2', userId: 'u', sequence: 2n });
  const scripts = [
    [{ cursor: 'c1' }, { transaction: tx, cursor: 'c2' }, { alertEvent: event, cursor: 'c3' }, 'unavailable'],
    [{ cursor: 'c4' }],
  ];
  const transport = createRouterTransport(({ service }) => {
    service(CreditService, {
      async *watchTransactions(request) {
        requests.push(request);
        const script = scripts.shift() ?? [];
        for (const message of script) {
          if (message === 'unavailable') throw new ConnectError('gone', Code.Unavailable);
          yield message;
        }
        await new Promise(() => {}); // until canceled
      },
    });
  });
  const client = new CreditClient(transport, { retry: { initialBackoffMs: 1, maxBackoffMs: 1 } });
  const messages = [];
  for await (const message of client.watchTransactions({ userId: 'u', content: FeedContent.TRANSACTIONS_AND_ALERT_EVENTS })) {
    messages.push(message);
    if (messages.length === 4) break;
  }
  assert.deepEqual(messages.map((m) => [m.cursor, m.transaction?.transactionId, m.alertEvent?.eventId]), [
    ['c1', undefined, undefined], ['c2', 't-2', undefined], ['c3', undefined, 'e-1'], ['c4', undefined, undefined],
  ]);
  assert.ok(!('transaction' in messages[2]) && !('alertEvent' in messages[0]), 'absent, not undefined-valued');
  assert.deepEqual(requests.map((r) => [r.content, r.startAfter]),
    [[FeedContent.TRANSACTIONS_AND_ALERT_EVENTS, ''], [FeedContent.TRANSACTIONS_AND_ALERT_EVENTS, 'c3']]);

  // Without content: transactions only (FEED_CONTENT_UNSPECIFIED).
  scripts.push([{ cursor: 'c9' }]);
  for await (const _ of client.watchTransactions({ userId: 'u' })) break;
  assert.equal(requests.at(-1).content, FeedContent.UNSPECIFIED);
});

test('setBalanceAlert refuses a threshold that is not an int64 before sending', async () => {
  const client = new CreditClient(createRouterTransport(() => {}));
  await rejection(client.setBalanceAlert('u', 1.5), InvalidInput);
  await rejection(client.setBalanceAlert('u', 2n ** 63n), InvalidInput);
  await rejection(client.listAlertEvents('u', { pageSize: 0.5 }), InvalidInput);
});

// ---------------------------------------------------------------------------
// Against a real credit-server

describe('against a credit-server', () => {
  let server;
  let client;

  before(async () => {
    server = await startServer({ args: ['--stream-heartbeat-secs', '1'] });
    client = createCreditClient({ baseUrl: server.baseUrl });
  });

  after(async () => {
    client?.close();
    await server?.stop();
  });

  test('setBalanceAlert: armed when the balance is at or above the threshold; the same threshold again is the same alert', async () => {
    const userId = await newUser(client);
    const low = await client.setBalanceAlert(userId, 50n);
    assert.equal(low.userId, userId);
    assert.equal(low.threshold, 50n);
    assert.equal(low.armed, false, 'the balance (0) is below 50');
    assert.ok(low.alertId !== '' && low.createdAt !== undefined && low.deletedAt === undefined);
    assert.equal((await client.setBalanceAlert(userId, 0)).armed, true, '0 >= 0');

    await client.grant({ userId, amount: 100n });
    const high = await client.setBalanceAlert(userId, 80, { idempotencyKey: `k-${userId}` });
    assert.equal(high.armed, true, '100 >= 80');
    assert.equal(high.threshold, 80n);

    // The same threshold: without a key, with a new key, with the same key.
    assert.equal((await client.setBalanceAlert(userId, 50n)).alertId, low.alertId);
    assert.equal((await client.setBalanceAlert(userId, 50n, { idempotencyKey: `other-${userId}` })).alertId, low.alertId);
    assert.equal((await client.setBalanceAlert(userId, 80n, { idempotencyKey: `k-${userId}` })).alertId, high.alertId);

    const reused = await rejection(client.setBalanceAlert(userId, 90n, { idempotencyKey: `k-${userId}` }), IdempotencyKeyReused);
    assert.equal(reused.code, Code.AlreadyExists);
    assert.equal(reused.reason, 'IDEMPOTENCY_KEY_REUSED');

    const negative = await rejection(client.setBalanceAlert(userId, -1n), InvalidArgument);
    assert.deepEqual(negative.fieldViolations.map((v) => v.field), ['threshold']);
    const missing = await rejection(client.setBalanceAlert(`nobody-${userId}`, 10n), UserNotFound);
    assert.equal(missing.reason, 'USER_NOT_FOUND');

    const { alerts } = await client.getBalance(userId);
    assert.deepEqual(alerts.map((a) => [a.threshold, a.armed]), [[0n, true], [50n, true], [80n, true]],
      'in force, lowest threshold first (the grant armed the 50)');
    assert.equal(alerts[1].alertId, low.alertId);
  });

  test('a downward crossing records one event: ListAlertEvents and the feed show the same eventId; a top-up re-arms', async () => {
    const userId = await newUser(client);
    await client.grant({ userId, amount: 100n });
    const alert = await client.setBalanceAlert(userId, 50n);
    assert.equal(alert.armed, true);
    const start = await cursorNow(client, userId);

    await client.spend({ userId, amount: 30n }); // 70: still above
    const crossing = await client.spend({ userId, amount: 30n }); // 40: crosses
    await client.spend({ userId, amount: 10n }); // 30: disarmed, no event
    const first = (await client.listAlertEvents(userId)).events;
    assert.equal(first.length, 1, 'exactly one event');
    const [event] = first;
    assert.deepEqual(
      [event.alertId, event.userId, event.threshold, event.balanceBefore, event.balanceAfter, event.transactionId, event.sequence],
      [alert.alertId, userId, 50n, 70n, 40n, crossing.transaction.transactionId, crossing.transaction.sequence]);
    assert.ok(event.eventId !== '' && event.createdAt !== undefined);
    assert.equal((await client.getBalance(userId)).alerts[0].armed, false);

    // The alert-events feed from before the spends: the same event, no transaction.
    const [watched] = await feedItems(client.watchTransactions({ userId, startAfter: start, content: FeedContent.ALERT_EVENTS }), 1);
    assert.equal(watched.transaction, undefined);
    assert.equal(watched.alertEvent.eventId, event.eventId);
    assert.equal(watched.alertEvent.transactionId, crossing.transaction.transactionId);

    // A top-up back to >= 50 re-arms it; the next crossing is a second event.
    const topUp = await client.topUp({ userId, amount: 100n }); // 130
    assert.equal((await client.getBalance(userId)).alerts[0].armed, true);
    const again = await client.spend({ userId, amount: 100n }); // 30: crosses again
    const events = await all(client.iterAlertEvents(userId, { pageSize: 1 }));
    assert.deepEqual(events.map((e) => [e.balanceBefore, e.balanceAfter, e.sequence]),
      [[130n, 30n, again.transaction.sequence], [70n, 40n, crossing.transaction.sequence]], 'newest first, across pages');
    assert.notEqual(events[0].eventId, event.eventId);
    const page = await client.listAlertEvents(userId, { pageSize: 1 });
    assert.equal(page.events[0].eventId, events[0].eventId);
    assert.ok(page.nextPageToken !== undefined);
    const last = await client.listAlertEvents(userId, { pageSize: 1, pageToken: page.nextPageToken });
    assert.equal(last.events[0].eventId, event.eventId);

    // Transactions and events: each event right after the transaction that crossed.
    const mixed = await feedItems(client.watchTransactions({
      userId, startAfter: start, content: FeedContent.TRANSACTIONS_AND_ALERT_EVENTS,
    }), 7);
    assert.deepEqual(mixed.map((m) => (m.alertEvent === undefined ? `tx ${m.transaction.sequence}` : `event ${m.alertEvent.sequence}`)),
      ['tx 2', 'tx 3', 'event 3', 'tx 4', 'tx 5', 'tx 6', 'event 6']);
    assert.equal(mixed[2].alertEvent.eventId, event.eventId);
    assert.equal(mixed[5].transaction.transactionId, again.transaction.transactionId);
    assert.equal(mixed[4].transaction.transactionId, topUp.transaction.transactionId);
    // The default feed carries no events.
    const plain = await feedItems(client.watchTransactions({ userId, startAfter: start }), 5);
    assert.ok(plain.every((m) => m.alertEvent === undefined && m.transaction !== undefined));
  });

  test('deleteBalanceAlert, then again; an unknown alert is AlertNotFound; a removed alert records nothing', async () => {
    const userId = await newUser(client);
    await client.grant({ userId, amount: 100n });
    const alert = await client.setBalanceAlert(userId, 50n);
    const removed = await client.deleteBalanceAlert(userId, alert.alertId);
    assert.equal(removed.alertId, alert.alertId);
    assert.ok(removed.deletedAt !== undefined);
    const again = await client.deleteBalanceAlert(userId, alert.alertId);
    assert.equal(again.alertId, alert.alertId);
    assert.deepEqual(again.deletedAt, removed.deletedAt, 'the same answer');
    assert.deepEqual((await client.getBalance(userId)).alerts, []);

    const unknown = await rejection(client.deleteBalanceAlert(userId, 'no-such-alert'), AlertNotFound);
    assert.ok(unknown instanceof NotFound);
    assert.deepEqual([unknown.code, unknown.reason, unknown.alertId], [Code.NotFound, 'ALERT_NOT_FOUND', 'no-such-alert']);

    await client.spend({ userId, amount: 60n }); // 40: would have crossed
    assert.deepEqual((await client.listAlertEvents(userId)).events, []);
    const fresh = await client.setBalanceAlert(userId, 50n);
    assert.notEqual(fresh.alertId, alert.alertId, 'a new alert: the old one is no longer in force');
  });

  test('more than 20 alerts in force is TooManyAlerts (limit 20)', async () => {
    const userId = await newUser(client);
    const alerts = [];
    for (let i = 1; i <= 20; i += 1) alerts.push(await client.setBalanceAlert(userId, BigInt(i)));
    assert.equal(new Set(alerts.map((a) => a.alertId)).size, 20);
    const err = await rejection(client.setBalanceAlert(userId, 21n), TooManyAlerts);
    assert.deepEqual([err.code, err.reason, err.limit], [Code.FailedPrecondition, 'TOO_MANY_ALERTS', 20]);
    assert.equal((await client.setBalanceAlert(userId, 7n)).alertId, alerts[6].alertId, 'a threshold in force still answers');
    await client.deleteBalanceAlert(userId, alerts[0].alertId);
    assert.equal((await client.setBalanceAlert(userId, 21n)).threshold, 21n, 'room again after a delete');
  });

  describe('the auto-topup example', () => {
    const example = path.join(PKG, '.build', 'examples', 'auto-topup.js');
    const run = (env = {}) => promisify(execFile)(process.execPath, [example], {
      cwd: PKG, env: { ...process.env, CREDIT_URL: server.baseUrl, ...env }, timeout: 30_000,
    }).then(({ stdout }) => stdout);
    const topUps = async (userId) => (await all(client.iterTransactions({ userId, types: [TransactionType.TOP_UP] }))).length;
    /** Waits until the user's balance is at least `amount` (a consumer topped up). */
    const balanceReaches = async (userId, amount) => {
      for (const deadline = Date.now() + 10_000; Date.now() < deadline; await sleep(20)) {
        if ((await client.getBalance(userId)).balance >= amount) return;
      }
      throw new Error(`the balance of ${userId} did not reach ${amount}`);
    };

    test('the demo: two consumers at once, two crossings, two top-ups', async () => {
      const stdout = await run();
      for (const name of ['a', 'b']) {
        assert.match(stdout, new RegExp(`^${name}: 100 -> 40 at #2: topped up \\(#3\\)$`, 'm'));
        assert.match(stdout, new RegExp(`^${name}: 240 -> 40 at #4: topped up \\(#5\\)$`, 'm'));
      }
      assert.match(stdout, /alert events: 2, top-ups: 2, balance: 240\n$/);
    });

    test('two consumer processes on the same events top up once per event; a replay tops up nothing', async () => {
      const userId = await newUser(client);
      await client.grant({ userId, amount: 100n });
      await client.setBalanceAlert(userId, 50n); // the consumers set the same one
      const start = await cursorNow(client, userId);
      const env = { CREDIT_USER: userId, CREDIT_START_AFTER: start, CREDIT_MAX_EVENTS: '2' };
      const consumers = [run(env), run(env)];
      await client.spend({ userId, amount: 60n }); // 40: crossing 1
      await balanceReaches(userId, 240n);
      await client.spend({ userId, amount: 200n }); // 40: crossing 2
      const outputs = await Promise.all(consumers);
      for (const stdout of outputs) {
        assert.match(stdout, /^consumer: 100 -> 40 at #2: topped up \(#3\)$/m);
        assert.match(stdout, /^consumer: 240 -> 40 at #4: topped up \(#5\)$/m);
      }
      assert.equal((await client.listAlertEvents(userId)).events.length, 2);
      assert.equal(await topUps(userId), 2, 'one top-up per event');
      assert.equal((await client.getBalance(userId)).balance, 240n);

      // A consumer that crashed before storing its cursor starts from the old one: same keys, nothing new.
      const replay = await run(env);
      assert.match(replay, /^consumer: 100 -> 40 at #2: topped up \(#3\)$/m);
      assert.match(replay, /^consumer: 240 -> 40 at #4: topped up \(#5\)$/m);
      assert.equal(await topUps(userId), 2);
      assert.equal((await client.getBalance(userId)).balance, 240n);
      const { events } = await client.listAlertEvents(userId);
      const keys = (await all(client.iterTransactions({ userId, types: [TransactionType.TOP_UP] }))).map((t) => t.idempotencyKey);
      assert.deepEqual(keys, events.map((e) => e.eventId), 'each top-up is keyed by its event');
    });
  });
});

describe('roles', () => {
  let server;
  let keys;
  const clients = [];
  const connect = (key) => {
    const c = createCreditClient({ baseUrl: server.baseUrl, apiKey: key });
    clients.push(c);
    return c;
  };

  before(async () => {
    keys = { admin: newKey('ops', 'admin'), service: newKey('billing', 'service'), reader: newKey('auditor', 'reader') };
    server = await startServer({ args: ['--api-keys', Object.values(keys).map((k) => k.line).join(',')] });
  });

  after(async () => {
    for (const c of clients) c.close();
    await server?.stop();
  });

  test('SetBalanceAlert and DeleteBalanceAlert need service; ListAlertEvents and the alert feed need reader', async () => {
    const billing = connect(keys.service.key);
    const auditor = connect(keys.reader.key);
    const userId = await newUser(connect(keys.admin.key)); // CreateUser needs admin
    await billing.topUp({ userId, amount: 100n });
    await rejection(auditor.setBalanceAlert(userId, 50n), PermissionDenied);
    const alert = await billing.setBalanceAlert(userId, 50n);
    await rejection(auditor.deleteBalanceAlert(userId, alert.alertId), PermissionDenied);
    const start = await cursorNow(auditor, userId);
    await billing.spend({ userId, amount: 60n });
    const { events } = await auditor.listAlertEvents(userId);
    assert.equal(events.length, 1);
    const [watched] = await feedItems(auditor.watchTransactions({ userId, startAfter: start, content: FeedContent.ALERT_EVENTS }), 1);
    assert.equal(watched.alertEvent.eventId, events[0].eventId);
    await rejection(auditor.watchTransactions({ content: FeedContent.ALERT_EVENTS }).next(), PermissionDenied);
    assert.ok((await billing.deleteBalanceAlert(userId, alert.alertId)).deletedAt !== undefined);
  });
});
