import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { rssOf } from './contenders.js';

test('rssOf counts the processes under a process too (a guard and its front)', async () => {
  const before = rssOf(process.pid) ?? 0;
  // A child that holds 64 MiB it has written to (so it is resident), then says so.
  const child = spawn(
    process.execPath,
    [
      '-e',
      "const b = Buffer.alloc(64 << 20, 1); process.stdout.write('ready'); setInterval(() => b[0]++, 1000);",
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  try {
    await once(child.stdout, 'data');
    const childAlone = rssOf(child.pid ?? -1) ?? 0;
    assert.ok(childAlone > 64 << 20, `the child holds its 64 MiB: ${childAlone}`);
    const tree = rssOf(process.pid) ?? 0;
    assert.ok(
      tree - before > 60 << 20,
      `this process's tree counts the child: ${tree} vs ${before} before it`,
    );
  } finally {
    child.kill('SIGKILL');
    await once(child, 'exit');
  }
  assert.equal(rssOf(999_999_999), undefined, 'a process that is gone has none');
});
