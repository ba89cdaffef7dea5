/**
 * The front's container-list walk (native/list-walk.h) against the walk it replaced, on generated
 * lists and mutations of them (native/list-walk-check.c): the same verdict on every input, walked
 * whole or fed in pieces as an answer arrives. Built
 * with AddressSanitizer and UBSan where the compiler has them, once with the SIMD mask builder
 * (where the machine has SSE2) and once with the portable one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { tempDir } from '../../test/support/index.js';

const SOURCE = new URL('./native/list-walk-check.c', import.meta.url).pathname;

function build(dir: string, name: string, defines: string[]): string {
  const out = join(dir, name);
  const cc = process.env.CC ?? 'cc';
  const common = ['-Wall', '-Wextra', '-Werror', ...defines, '-o', out, SOURCE];
  const sanitized = spawnSync(
    cc,
    ['-O1', '-g', '-fsanitize=address,undefined', '-fno-omit-frame-pointer', ...common],
    {
      encoding: 'utf8',
    },
  );
  if (sanitized.status === 0) return out;
  const plain = spawnSync(cc, ['-O2', ...common], { encoding: 'utf8' });
  assert.equal(plain.status, 0, `cc: ${plain.stderr}`);
  return out;
}

for (const [name, defines] of [
  ['SIMD masks', []],
  ['portable masks', ['-DBERTH_NO_SIMD']],
] as const) {
  test(`list walk, ${name}: the same verdict as the byte walk on 200000 generated lists, whole and fed in pieces`, () => {
    using dir = tempDir('berth-list-walk-');
    const bin = build(dir.path, 'list-walk-check', [...defines]);
    const r = spawnSync(bin, ['20261125', '200000'], {
      encoding: 'utf8',
      env: {
        ...process.env,
        ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1',
        UBSAN_OPTIONS: 'halt_on_error=1',
      },
    });
    assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
    const m = /^inputs (\d+) accepted (\d+) rejected (\d+) differ (\d+) fed (\d+)$/m.exec(r.stdout);
    assert.ok(m, r.stdout);
    const [inputs, accepted, rejected, differ, fed] = m.slice(1).map(Number);
    assert.equal(inputs, 200000);
    assert.equal(differ, 0);
    // The walk fed in pieces went into most lists before their end (not only ever the whole one).
    assert.ok((fed ?? 0) > 50000, r.stdout);
    // Both verdicts well represented: a generator that only made one kind would check little.
    assert.ok((accepted ?? 0) > 50000 && (rejected ?? 0) > 50000, r.stdout);
  });
}
