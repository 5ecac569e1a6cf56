// gRPC-Web from a real browser: a page served from its own origin (a tiny
// node http server on 127.0.0.1) runs examples/browser.ts, bundled with
// esbuild, against credit-server --grpc-web --grpc-web-allowed-origins
// <page origin>, in headless Debian Chromium driven by playwright-core. The
// result the page shows is checked against calls made from Node; typed
// errors and a server stream (watchBalance) are checked from the page too.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { build } from 'esbuild';
import { chromium } from 'playwright-core';

import { TransactionType, createCreditClient } from 'credit-ledger-client';

import { PKG, freePort, newUser, serverBinary, startServer, tempDir } from './helpers.mjs';

const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

let server;
let page;
let pageServer;
let pageOrigin;
let context;
let profile;
let client;

async function bundle(options) {
  const result = await build({
    bundle: true, platform: 'browser', format: 'esm', target: 'es2022', write: false, logLevel: 'silent',
    absWorkingDir: PKG, ...options,
  });
  return result.outputFiles[0].text;
}

before(async () => {
  const help = execFileSync(serverBinary(), ['--help'], { encoding: 'utf8' });
  assert.match(help, /--grpc-web-allowed-origins/, 'this credit-server has no gRPC-Web support');
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing (scripts/test-typescript.sh installs Debian's chromium)`);

  const files = {
    '/': ['text/html', '<!doctype html><meta charset="utf-8"><title>credits</title>'
      + '<pre id="out">loading</pre><script type="module" src="/app.js"></script>'
      + '<script type="module" src="/lib.js"></script>'],
    // The README's browser example, as a page script.
    '/app.js': ['text/javascript', await bundle({ entryPoints: ['examples/browser.ts'] })],
    // The whole web entry point, for the error checks below.
    '/lib.js': ['text/javascript', await bundle({
      stdin: { contents: 'import * as credit from "credit-ledger-client/web"; window.credit = credit;', resolveDir: PKG },
    })],
  };
  pageServer = http.createServer((req, res) => {
    const file = files[new URL(req.url, 'http://x').pathname];
    if (!file) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': file[0], 'cache-control': 'no-store' }).end(file[1]);
  });
  const pagePort = await freePort();
  await new Promise((resolve) => pageServer.listen(pagePort, '127.0.0.1', resolve));
  pageOrigin = `http://127.0.0.1:${pagePort}`;

  server = await startServer({ args: ['--grpc-web', '--grpc-web-allowed-origins', pageOrigin] });
  client = createCreditClient({ baseUrl: server.baseUrl });

  profile = tempDir('credit-ts-chromium-');
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  page = context.pages()[0] ?? await context.newPage();
});

after(async () => {
  await context?.close();
  if (profile) rmSync(profile, { recursive: true, force: true });
  client?.close();
  await server?.stop();
  await new Promise((resolve) => (pageServer ? pageServer.close(resolve) : resolve()));
});

test('the page tops up and reads the balance through gRPC-Web, across origins', async () => {
  assert.notEqual(new URL(server.baseUrl).port, new URL(pageOrigin).port, 'the page and the API are other origins');
  const userId = await newUser(client, 'web');
  await client.topUp({ userId, amount: 100n });

  const consoleErrors = [];
  page.on('console', (msg) => { if (msg.type() === 'error') consoleErrors.push(msg.text()); });
  const query = new URLSearchParams({ server: server.baseUrl, user: userId });
  await page.goto(`${pageOrigin}/?${query}`);
  await page.waitForSelector('#out[data-done="true"]', { timeout: 30_000 });
  const text = await page.textContent('#out');
  assert.ok(!text.startsWith('error'), `the page failed: ${text}\nconsole: ${consoleErrors.join('\n')}`);
  const shown = JSON.parse(text);

  // What the page shows agrees with what Node reads.
  const balance = await client.getBalance(userId);
  assert.equal(shown.balance, String(balance.balance));
  assert.equal(shown.balanceAfterTopUp, '125');
  assert.equal(balance.balance, 125n);
  const tx = await client.getTransaction(userId, shown.transactionId);
  assert.equal(tx.type, TransactionType.TOP_UP);
  assert.equal(tx.amount, 25n);
  assert.deepEqual(tx.metadata, { from: 'browser' });
  assert.equal(tx.idempotencyKey, shown.idempotencyKey);
  assert.match(tx.idempotencyKey, UUID, 'the browser made the idempotency key');
});

test('typed errors decode in the browser (grpc-status-details-bin over gRPC-Web)', async () => {
  const userId = await newUser(client, 'web');
  await client.topUp({ userId, amount: 3n });
  await page.waitForFunction(() => window.credit !== undefined);
  const seen = await page.evaluate(async ({ baseUrl, userId }) => {
    const credits = window.credit.createCreditClient({ baseUrl });
    const outcomes = [];
    for (const call of [
      () => credits.spend({ userId, amount: 50n }),
      () => credits.getBalance(`${userId}-missing`),
      () => credits.spend({ userId, amount: 0n }),
    ]) {
      try {
        await call();
        outcomes.push('succeeded');
      } catch (err) {
        outcomes.push({
          name: err.name,
          isCreditError: err instanceof window.credit.CreditError,
          code: err.code,
          reason: err.reason,
          available: err instanceof window.credit.InsufficientBalance ? String(err.availableBalance) : null,
          fields: err.fieldViolations.map((v) => v.field),
        });
      }
    }
    return outcomes;
  }, { baseUrl: server.baseUrl, userId });
  assert.deepEqual(seen, [
    { name: 'InsufficientBalance', isCreditError: true, code: 9, reason: 'INSUFFICIENT_BALANCE', available: '3', fields: [] },
    { name: 'UserNotFound', isCreditError: true, code: 5, reason: 'USER_NOT_FOUND', available: null, fields: [] },
    { name: 'InvalidArgument', isCreditError: true, code: 3, reason: 'INVALID_ARGUMENT', available: null, fields: ['amount'] },
  ]);
});

test('watchBalance streams over gRPC-Web: the current balance first, then the change', async () => {
  const userId = await newUser(client, 'web');
  await client.topUp({ userId, amount: 40n });
  await page.waitForFunction(() => window.credit !== undefined);
  const seen = await page.evaluate(async ({ baseUrl, userId }) => {
    const credits = window.credit.createCreditClient({ baseUrl });
    const values = [];
    for await (const balance of credits.watchBalance(userId)) {
      values.push(`${balance.balance}@${balance.lastSequence}`);
      if (values.length === 2) break; // ends the stream
      await credits.spend({ userId, amount: 15n });
    }
    return values;
  }, { baseUrl: server.baseUrl, userId });
  assert.deepEqual(seen, ['40@1', '25@2']);
  assert.equal((await client.getBalance(userId)).balance, 25n);
});
