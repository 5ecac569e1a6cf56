// @ts-check
/**
 * Starts a real credit-server for a test file: free loopback port, fresh
 * SQLite file in a temp dir, ready once grpc.health.v1 says SERVING.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const STARTUP_MS = 30_000;

// grpc.health.v1 is two tiny messages; no need for another dependency.
const health = protobuf.parse(`
  syntax = "proto3";
  package grpc.health.v1;
  message HealthCheckRequest { string service = 1; }
  message HealthCheckResponse { int32 status = 1; }
`).root;
const CheckRequest = health.lookupType('grpc.health.v1.HealthCheckRequest');
const CheckResponse = health.lookupType('grpc.health.v1.HealthCheckResponse');
const SERVING = 1;

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {net.AddressInfo} */ (probe.address());
      probe.close(() => resolve(port));
    });
  });
}

/** @param {string} target */
function checkHealth(target) {
  const client = new grpc.Client(target, grpc.credentials.createInsecure());
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      '/grpc.health.v1.Health/Check',
      (/** @type {object} */ m) => Buffer.from(CheckRequest.encode(CheckRequest.create(m)).finish()),
      (/** @type {Buffer} */ b) => CheckResponse.decode(b),
      {},
      { deadline: new Date(Date.now() + 1000) },
      (err, reply) => {
        client.close();
        resolve(!err && /** @type {any} */ (reply).status === SERVING);
      },
    );
  });
}

/**
 * @returns {Promise<{target: string, stop: () => Promise<void>}>}
 */
export async function startServer() {
  const configured = process.env.CREDIT_SERVER_BIN ?? 'target/debug/credit-server';
  const binary = path.resolve(REPO_ROOT, configured);
  if (!existsSync(binary)) {
    throw new Error(`credit-server binary not found at ${binary} (cargo build -p credit-server)`);
  }
  const dir = mkdtempSync(path.join(os.tmpdir(), 'credit-node-'));
  const logPath = path.join(dir, 'server.log');
  // The port is free when picked, but another process may take it before the
  // server binds; then the server exits and we try another port.
  for (let attempt = 0; attempt < 3; attempt += 1) {
    const target = `127.0.0.1:${await freePort()}`;
    const log = openSync(logPath, 'a');
    const child = spawn(binary, [
      '--listen', target, '--database-url', `sqlite://${path.join(dir, 'credits.db')}?mode=rwc`,
    ], { stdio: ['ignore', log, log], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' } });
    let exited = false;
    child.once('exit', () => { exited = true; });
    const deadline = Date.now() + STARTUP_MS;
    while (!exited && Date.now() < deadline) {
      if (await checkHealth(target)) {
        return {
          target,
          stop: async () => {
            if (!exited) {
              const gone = new Promise((resolve) => { child.once('exit', resolve); });
              child.kill('SIGTERM');
              const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
              await gone;
              clearTimeout(killer);
            }
            rmSync(dir, { recursive: true, force: true });
          },
        };
      }
      await sleep(100);
    }
    if (!exited) child.kill('SIGKILL');
  }
  throw new Error(`credit-server did not become SERVING; log:\n${readFileSync(logPath, 'utf8')}`);
}
