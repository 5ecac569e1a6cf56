// API keys (authorization: Bearer <key>) and TLS with a client certificate,
// against real servers started with --api-keys and --tls-cert/--tls-key/
// --tls-client-ca (certificates made here with the openssl CLI).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';

import {
  Code, CreditError, NO_RETRY, PermissionDenied, Unauthenticated, createCreditClient,
} from 'credit-ledger-client';

import { PKG, makeCerts, newKey, newUser, rejection, startServer, tempDir } from './helpers.mjs';

describe('API keys', () => {
  let server;
  let keys;
  const clients = [];
  const connect = (key, extra = {}) => {
    const client = createCreditClient({ baseUrl: server.baseUrl, apiKey: key, ...extra });
    clients.push(client);
    return client;
  };

  before(async () => {
    keys = {
      billing: newKey('billing', 'service'),
      auditor: newKey('auditor', 'reader'),
      ops: newKey('ops', 'admin'),
    };
    server = await startServer({ args: ['--api-keys', Object.values(keys).map((k) => k.line).join(',')] });
  });

  after(async () => {
    for (const client of clients) client.close();
    await server?.stop();
  });

  test('every call carries authorization: Bearer <key>', async () => {
    const seen = [];
    const billing = connect(keys.billing.key, {
      interceptors: [(next) => async (req) => { seen.push(req.header.get('authorization')); return next(req); }],
    });
    const userId = await newUser(connect(keys.ops.key)); // CreateUser needs the admin role
    await billing.topUp({ userId, amount: 5n });
    await billing.getBalance(userId);
    assert.deepEqual(seen, Array(2).fill(`Bearer ${keys.billing.key}`));
  });

  test('no key or an unknown key is UNAUTHENTICATED', async () => {
    const anonymous = connect(undefined);
    const err = await rejection(anonymous.getBalance('x'), Unauthenticated);
    assert.equal(err.code, Code.Unauthenticated);
    assert.equal(err.retryable, false);
    await rejection(connect('ck_not-a-real-key').getBalance('x'), Unauthenticated);
  });

  test('roles: a reader cannot write, only an admin verifies', async () => {
    const billing = connect(keys.billing.key);
    const userId = await newUser(connect(keys.ops.key));
    const reader = connect(keys.auditor.key);
    assert.equal((await reader.getBalance(userId)).balance, 0n);
    assert.deepEqual((await reader.listLots({ userId, includeEmpty: true })).lots, [], 'ListLots is a read');
    const denied = await rejection(reader.topUp({ userId, amount: 1n }), PermissionDenied);
    assert.equal(denied.code, Code.PermissionDenied);
    await rejection(billing.verifyLedger(userId), PermissionDenied);
    assert.equal((await connect(keys.ops.key).verifyLedger(userId)).clean, true);
  });

  test('writes record the key name (createdBy), and history filters by it', async () => {
    const billing = connect(keys.billing.key);
    const ops = connect(keys.ops.key);
    const userId = await newUser(ops);
    const { transaction } = await billing.topUp({ userId, amount: 10n });
    assert.equal(transaction.createdBy, 'billing');
    await ops.grant({ userId, amount: 2n, reason: 'ops grant' });
    const by = async (createdBy) => {
      const out = [];
      for await (const tx of billing.iterTransactions({ userId, createdBy })) out.push([tx.createdBy, tx.amount]);
      return out;
    };
    assert.deepEqual(await by('billing'), [['billing', 10n]]);
    assert.deepEqual(await by('ops'), [['ops', 2n]]);
    assert.deepEqual(await by(undefined), [['ops', 2n], ['billing', 10n]]);
  });
});

describe('TLS with a client certificate', () => {
  let server;
  let certs;
  let dir;
  let key;
  const tlsOptions = () => ({
    caCertificatePem: readFileSync(certs.ca),
    clientCertificatePem: readFileSync(certs.clientCert),
    clientKeyPem: readFileSync(certs.clientKey),
  });

  before(async () => {
    dir = tempDir('credit-ts-certs-');
    certs = makeCerts(dir);
    key = newKey('ops', 'admin'); // the example creates a user: admin only
    server = await startServer({
      scheme: 'https',
      args: ['--tls-cert', certs.serverCert, '--tls-key', certs.serverKey, '--tls-client-ca', certs.ca,
        '--api-keys', key.line],
      probe: (baseUrl) => ({ baseUrl, tls: tlsOptions() }),
    });
  });

  after(async () => {
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('calls over mutual TLS with a key; the certificate subject is recorded', async () => {
    const client = createCreditClient({ baseUrl: server.baseUrl, apiKey: key.key, tls: tlsOptions() });
    try {
      const userId = await newUser(client);
      const { transaction, balance } = await client.topUp({ userId, amount: 12n });
      assert.equal(balance, 12n);
      assert.equal(transaction.createdBy, 'ops');
      assert.match(transaction.createdByCertificateSubject, /CN=billing/);
      assert.match(transaction.createdByCertificateSubject, /O=Example/);
    } finally {
      client.close();
    }
  });

  test('without a client certificate, or without trusting the CA, no call gets through', async () => {
    const { caCertificatePem } = tlsOptions();
    for (const tls of [{ caCertificatePem }, {}]) {
      const client = createCreditClient({ baseUrl: server.baseUrl, apiKey: key.key, tls, retry: NO_RETRY });
      try {
        const err = await rejection(client.getBalance('x'), CreditError);
        assert.ok([Code.Unavailable, Code.Unknown, Code.Internal].includes(err.code), `${err.codeName}: ${err.message}`);
      } finally {
        client.close();
      }
    }
  });

  test('the TLS example runs against it', async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [path.join(PKG, '.build/examples/tls-and-key.js')], {
      cwd: PKG,
      timeout: 30_000,
      env: {
        ...process.env,
        CREDIT_URL: server.baseUrl,
        CREDIT_API_KEY: key.key,
        CREDIT_CA: certs.ca,
        CREDIT_CLIENT_CERT: certs.clientCert,
        CREDIT_CLIENT_KEY: certs.clientKey,
      },
    });
    assert.match(stdout, /written by ops \(.*CN=billing.*\)/);
  });

  test('tls settings need an https URL', () => {
    assert.throws(() => createCreditClient({ baseUrl: 'http://127.0.0.1:1', tls: {} }), /https/);
  });
});
