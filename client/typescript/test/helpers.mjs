// Test helpers: a real credit-server on a free loopback port with a fresh
// SQLite file, API keys made with `credit-server new-key`, and a CA, server
// and client certificate made with the openssl CLI.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import { Code, CreditError, NO_RETRY, createCreditClient } from 'credit-ledger-client';

export const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const REPO_ROOT = path.resolve(PKG, '../..');
const STARTUP_MS = 30_000;

export function serverBinary() {
  const binary = path.resolve(REPO_ROOT, process.env.CREDIT_SERVER_BIN ?? 'target/debug/credit-server');
  if (!existsSync(binary)) {
    throw new Error(`credit-server binary not found at ${binary} (set CREDIT_SERVER_BIN)`);
  }
  return binary;
}

export function tempDir(prefix = 'credit-ts-') {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** A new API key: `{ key, line }` (line goes into --api-keys). */
export function newKey(name, role) {
  const out = execFileSync(serverBinary(), ['new-key', '--name', name, '--role', role], { encoding: 'utf8' });
  const key = /key \(.*?\): (\S+)/.exec(out)?.[1];
  const line = /keys file line: (.+)/.exec(out)?.[1]?.trim();
  assert.ok(key && line, `unexpected new-key output: ${out}`);
  return { key, line };
}

/** A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM file paths. */
export function makeCerts(dir) {
  const file = (name) => path.join(dir, name);
  const openssl = (...args) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=credit-test-ca',
    '-keyout', file('ca.key'), '-out', file('ca.pem'),
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  const issue = (name, subject, ext) => {
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', subject, '-keyout', file(`${name}.key`), '-out', file(`${name}.csr`));
    writeFileSync(file(`${name}.ext`), ext);
    openssl('x509', '-req', '-in', file(`${name}.csr`), '-CA', file('ca.pem'), '-CAkey', file('ca.key'),
      '-CAcreateserial', '-days', '2', '-extfile', file(`${name}.ext`), '-out', file(`${name}.pem`));
  };
  issue('server', '/CN=localhost',
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n');
  issue('client', '/O=Example/CN=billing', 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n');
  return {
    ca: file('ca.pem'),
    serverCert: file('server.pem'),
    serverKey: file('server.key'),
    clientCert: file('client.pem'),
    clientKey: file('client.key'),
  };
}

/**
 * Starts credit-server with extra `args` and extra environment variables
 * `env`; resolves once a call gets an answer from the service. `probe` makes
 * the client options for that call (plaintext by default; TLS servers need
 * their certificates). `port` fixes the port (else a free one is picked);
 * `dir` is a directory of the caller's for the SQLite file (credits.db) and
 * the log, which `stop()` leaves in place, so a second server can be started
 * on the same port and database (else a fresh one, removed by `stop()`).
 * `stop(signal)` sends SIGTERM unless told otherwise.
 */
export async function startServer({
  args = [], env = {}, scheme = 'http', probe = (baseUrl) => ({ baseUrl }), port: fixedPort, dir: ownDir,
} = {}) {
  const binary = serverBinary();
  const dir = ownDir ?? tempDir('credit-ts-server-');
  const logPath = path.join(dir, 'server.log');
  // The port is free when picked, but another process may take it before the
  // server binds; then the server exits and we try another port.
  for (let attempt = 0; attempt < 3; attempt += 1) {
    const port = fixedPort ?? await freePort();
    const baseUrl = `${scheme}://127.0.0.1:${port}`;
    const log = openSync(logPath, 'a');
    const child = spawn(binary, [
      '--listen', `127.0.0.1:${port}`, '--database-url', `sqlite://${path.join(dir, 'credits.db')}?mode=rwc`, ...args,
    ], { stdio: ['ignore', log, log], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn', ...env } });
    let exited = false;
    child.once('exit', () => { exited = true; });
    const deadline = Date.now() + STARTUP_MS;
    while (!exited && Date.now() < deadline) {
      if (await answers(probe(baseUrl))) {
        return {
          baseUrl,
          port,
          dir,
          log: () => readFileSync(logPath, 'utf8'),
          stop: async (signal = 'SIGTERM') => {
            if (!exited) {
              const gone = new Promise((resolve) => { child.once('exit', resolve); });
              child.kill(signal);
              const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
              await gone;
              clearTimeout(killer);
            }
            if (ownDir === undefined) rmSync(dir, { recursive: true, force: true });
          },
        };
      }
      await sleep(100);
    }
    if (!exited) child.kill('SIGKILL');
  }
  throw new Error(`credit-server did not start; log:\n${readFileSync(logPath, 'utf8')}`);
}

/** Whether the service answers (any status but UNAVAILABLE / DEADLINE_EXCEEDED). */
async function answers(options) {
  const client = createCreditClient({ ...options, retry: NO_RETRY, deadlineMs: 1000 });
  try {
    await client.getBalance('__probe__');
    return true;
  } catch (err) {
    return err instanceof CreditError && err.code !== Code.Unavailable && err.code !== Code.DeadlineExceeded;
  } finally {
    client.close();
  }
}

/** A fresh user id (and its user, when `client` is given). */
export async function newUser(client, prefix = 'ts') {
  const userId = `${prefix}-${randomUUID()}`;
  if (client) await client.createUser({ userId, email: `${userId}@example.com`, name: 'TS Test' });
  return userId;
}

/** Awaits a rejection of class `Kind` and returns the error. */
export async function rejection(promise, Kind) {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof Kind, `expected ${Kind.name}, got ${err?.name}: ${err?.message}`);
    return err;
  }
  throw new assert.AssertionError({ message: `expected ${Kind.name}, but the call succeeded` });
}
