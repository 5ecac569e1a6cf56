// `npm pack` makes a tarball that installs into an empty project outside the
// repo (dependencies from the npm cache) and works there from `import` and
// from `require`, with types for both, including a real call to the server.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';

import { PKG, startServer, tempDir } from './helpers.mjs';

const run = promisify(execFile);
const npm = process.env.npm_execpath && process.env.npm_execpath.endsWith('.js')
  ? [process.execPath, process.env.npm_execpath]
  : ['npm'];

let server;
let project;
let tarball;

before(async () => {
  server = await startServer();
  project = tempDir('credit-ts-consumer-');
  const packDir = path.join(project, 'pack');
  mkdirSync(packDir);
  // --ignore-scripts: the test script has just built dist/; prepack would rebuild it.
  const { stdout } = await run(npm[0], [...npm.slice(1), 'pack', '--ignore-scripts', '--json', '--pack-destination', packDir],
    { cwd: PKG });
  const [info] = JSON.parse(stdout);
  tarball = { file: path.join(packDir, info.filename), files: info.files.map((f) => f.path) };
  const app = path.join(project, 'app');
  mkdirSync(app);
  writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
  await run(npm[0], [...npm.slice(1), 'install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error',
    tarball.file], { cwd: app, timeout: 120_000 });
});

after(async () => {
  await server?.stop();
  if (project) rmSync(project, { recursive: true, force: true });
});

test('the tarball holds the built package and nothing of the repo', () => {
  const manifest = JSON.parse(readFileSync(path.join(PKG, 'package.json'), 'utf8'));
  assert.notEqual(manifest.private, true, 'the package is publishable');
  for (const file of ['package.json', 'README.md', 'dist/esm/index.js', 'dist/esm/index.d.ts', 'dist/esm/web.js',
    'dist/cjs/index.js', 'dist/cjs/index.d.ts', 'dist/cjs/web.js', 'dist/cjs/package.json',
    'dist/esm/gen/credit/v1/credit_pb.js', 'dist/esm/gen/google/rpc/error_details_pb.js']) {
    assert.ok(tarball.files.includes(file), `${file} is in the tarball`);
  }
  assert.deepEqual(tarball.files.filter((f) => !f.startsWith('dist/') && !['package.json', 'README.md'].includes(f)), []);
});

test('import (ESM) works in the empty project, with a real call', async () => {
  const app = path.join(project, 'app');
  writeFileSync(path.join(app, 'esm.mjs'), `
    import { createCreditClient, CreditService, InsufficientBalance } from 'credit-ledger-client';
    import * as web from 'credit-ledger-client/web';
    const client = createCreditClient({ baseUrl: process.argv[2] });
    const userId = 'esm-' + Date.now();
    await client.createUser({ userId, email: userId + '@example.com' });
    const { balance } = await client.topUp({ userId, amount: 42n });
    let refused = '';
    try { await client.spend({ userId, amount: 100n }); } catch (e) { refused = e instanceof InsufficientBalance ? String(e.availableBalance) : 'wrong'; }
    client.close();
    console.log(JSON.stringify({ balance: String(balance), refused, rpcs: CreditService.methods.length,
      web: typeof web.createCreditClient, webErrors: typeof web.InsufficientBalance }));
  `);
  const { stdout } = await run(process.execPath, ['esm.mjs', server.baseUrl], { cwd: app, timeout: 30_000 });
  const proto = readFileSync(path.join(PKG, '../../proto/credit/v1/credit.proto'), 'utf8');
  const rpcs = [...proto.matchAll(/^\s*rpc\s+\w+\s*\(/gm)].length;
  assert.deepEqual(JSON.parse(stdout), { balance: '42', refused: '42', rpcs, web: 'function', webErrors: 'function' });
});

test('require (CommonJS) works in the empty project, with a real call', async () => {
  const app = path.join(project, 'app');
  writeFileSync(path.join(app, 'cjs.cjs'), `
    const { createCreditClient, UserNotFound, TransactionType } = require('credit-ledger-client');
    const web = require('credit-ledger-client/web');
    (async () => {
      const client = createCreditClient(process.argv[2]);
      const userId = 'cjs-' + Date.now();
      await client.createUser({ userId, email: userId + '@example.com' });
      const { transaction } = await client.grant({ userId, amount: 7, reason: 'cjs' });
      let missing = '';
      try { await client.getUser('nobody-' + userId); } catch (e) { missing = e instanceof UserNotFound ? e.reason : 'wrong'; }
      client.close();
      console.log(JSON.stringify({ type: TransactionType[transaction.type], amount: String(transaction.amount), missing,
        web: typeof web.createCreditClient }));
    })().catch((e) => { console.error(e); process.exit(1); });
  `);
  const { stdout } = await run(process.execPath, ['cjs.cjs', server.baseUrl], { cwd: app, timeout: 30_000 });
  assert.deepEqual(JSON.parse(stdout), { type: 'GRANT', amount: '7', missing: 'USER_NOT_FOUND', web: 'function' });
});

test('the types resolve for both import and require', async () => {
  const app = path.join(project, 'app');
  const body = (from) => `
    import { createCreditClient, InsufficientBalance, type Receipt, type Transaction } from '${from}';
    export async function f(): Promise<bigint> {
      const client = createCreditClient({ baseUrl: 'http://127.0.0.1:1', apiKey: 'k' });
      const r: Receipt = await client.spend({ userId: 'u', amount: 1n, usage: { graphExecId: 'e' } });
      const t: Transaction = r.transaction;
      try { return t.runningBalance; } catch (e) { if (e instanceof InsufficientBalance) return e.availableBalance; throw e; }
    }
  `;
  writeFileSync(path.join(app, 'check.mts'), body('credit-ledger-client'));
  writeFileSync(path.join(app, 'check.cts'), body('credit-ledger-client'));
  writeFileSync(path.join(app, 'check-web.mts'), body('credit-ledger-client/web'));
  writeFileSync(path.join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      strict: true, noEmit: true, module: 'node16', moduleResolution: 'node16', target: 'es2022',
      lib: ['es2022', 'dom'], types: ['node'], typeRoots: [path.join(PKG, 'node_modules', '@types')],
    },
    files: ['check.mts', 'check.cts', 'check-web.mts'],
  }));
  const tsc = path.join(PKG, 'node_modules', 'typescript', 'bin', 'tsc');
  await run(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: app }).catch((err) => {
    assert.fail(`tsc in the consumer project failed:\n${err.stdout}${err.stderr}`);
  });
});
