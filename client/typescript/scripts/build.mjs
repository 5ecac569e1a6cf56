// npm run build: generates src/gen from ../../proto with buf and the local
// protoc-gen-es, compiles src/ with tsc --strict to dist/esm (ES modules and
// .d.ts), then makes dist/cjs (CommonJS) from dist/esm with esbuild.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { transformSync } from 'esbuild';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const PROTO = path.resolve(PKG, '../../proto');
const BIN = path.join(PKG, 'node_modules', '.bin');
// buf finds protoc-gen-es (buf.gen.yaml: `local: protoc-gen-es`) on PATH.
const env = { ...process.env, PATH: `${BIN}${path.delimiter}${process.env.PATH ?? ''}` };
const run = (cmd, args) => execFileSync(path.join(BIN, cmd), args, { cwd: PKG, stdio: 'inherit', env });

/** Generates src/gen (buf.gen.yaml: protoc-gen-es, target=ts) from ../../proto. */
export function generate() {
  rmSync(path.join(PKG, 'src', 'gen'), { recursive: true, force: true });
  run('buf', ['generate', PROTO, '--template', 'buf.gen.yaml']);
  // proto/buf.yaml excludes the vendored google.rpc protos from its module,
  // so they are an input of their own, with an empty config.
  run('buf', ['generate', path.join(PROTO, 'third_party'), '--template', 'buf.gen.yaml', '--config', '{"version":"v2"}']);
}

function walk(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (
    e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}

function build() {
  const started = Date.now();
  generate();
  rmSync(path.join(PKG, 'dist'), { recursive: true, force: true });
  run('tsc', ['-p', 'tsconfig.json']);
  const esm = path.join(PKG, 'dist', 'esm');
  const cjs = path.join(PKG, 'dist', 'cjs');
  for (const file of walk(esm)) {
    const target = path.join(cjs, path.relative(esm, file));
    mkdirSync(path.dirname(target), { recursive: true });
    if (file.endsWith('.d.ts')) {
      cpSync(file, target);
    } else if (file.endsWith('.js')) {
      const { code } = transformSync(readFileSync(file, 'utf8'), { format: 'cjs', target: 'es2022', platform: 'neutral' });
      writeFileSync(target, code);
    }
  }
  writeFileSync(path.join(cjs, 'package.json'), `${JSON.stringify({ type: 'commonjs' }, null, 2)}\n`);
  console.log(`built dist/esm and dist/cjs in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) build();
