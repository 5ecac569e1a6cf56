// The examples compile under tsc --strict against the built package (its
// .d.ts, through the package's own exports), a misspelled request field does
// not, and the browser entry point bundles without Node-only modules.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { build } from 'esbuild';

import { PKG } from './helpers.mjs';

const TSC = path.join(PKG, 'node_modules', 'typescript', 'bin', 'tsc');

function tsc(...args) {
  const result = spawnSync(process.execPath, [TSC, ...args], { cwd: PKG, encoding: 'utf8' });
  return { status: result.status, output: `${result.stdout}${result.stderr}` };
}

test('every example compiles with tsc --strict', () => {
  const examples = readdirSync(path.join(PKG, 'examples')).filter((f) => f.endsWith('.ts') && !f.endsWith('.fail.ts'));
  assert.ok(examples.length >= 5, `examples: ${examples}`);
  const { status, output } = tsc('-p', 'tsconfig.examples.json', '--strict', '--noEmit');
  assert.equal(status, 0, output);
});

test('a misspelled request field does not compile, and the error names it', () => {
  const { status, output } = tsc('--strict', '--noEmit', '--module', 'nodenext', '--moduleResolution', 'nodenext',
    '--target', 'es2022', '--types', 'node', '--skipLibCheck', 'examples/misspelled-field.fail.ts');
  assert.notEqual(status, 0, 'tsc accepted the misspelled field');
  assert.match(output, /misspelled-field\.fail\.ts\(\d+,\d+\): error TS\d+: .*'amout' does not exist in type 'TopUpInput'/);
  assert.equal(output.trim().split('\n').length, 1, `only the misspelling is an error:\n${output}`);
});

test('the web entry point bundles for browsers without Node-only modules', async () => {
  const result = await build({
    stdin: { contents: 'export * from "credit-ledger-client/web";', resolveDir: PKG, loader: 'js' },
    bundle: true, platform: 'browser', format: 'esm', write: false, logLevel: 'silent', metafile: true,
  });
  const inputs = Object.keys(result.metafile.inputs);
  assert.ok(inputs.some((i) => i.includes('connect-web')), 'uses @connectrpc/connect-web');
  const nodeOnly = inputs.filter((i) => i.includes('connect-node') || i.startsWith('node:'));
  assert.deepEqual(nodeOnly, []);
});

test('every TypeScript snippet in README.md is an excerpt of a tested example', () => {
  const readme = readFileSync(path.join(PKG, 'README.md'), 'utf8');
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]);
  assert.ok(blocks.length >= 5, `README has ${blocks.length} ts blocks`);
  const examples = readdirSync(path.join(PKG, 'examples'))
    .filter((f) => f.endsWith('.ts') && !f.endsWith('.fail.ts'))
    .map((f) => readFileSync(path.join(PKG, 'examples', f), 'utf8'));
  for (const block of blocks) {
    assert.ok(examples.some((source) => source.includes(block)),
      `this README snippet is not in any examples/*.ts:\n${block}`);
  }
});

test('examples/every-rpc.ts calls every RPC but those of holds and lots (holds.ts and lots.ts show those)', async () => {
  const { CreditService } = await import('credit-ledger-client');
  const source = readFileSync(path.join(PKG, 'examples', 'every-rpc.ts'), 'utf8');
  const elsewhere = new Set(['Reserve', 'Capture', 'Release', 'GetHold', 'ListHolds', 'ListLots']);
  const missing = CreditService.methods
    .filter((m) => !elsewhere.has(m.name))
    // A list RPC counts when its page call or its iterator (listX / iterX) is used.
    .filter((m) => ![m.localName, m.localName.replace(/^list/, 'iter')].some((name) => source.includes(`.${name}(`)))
    .map((m) => m.name);
  assert.deepEqual(missing, []);
});
