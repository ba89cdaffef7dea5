import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { drain } from './scenarios.js';

test('a drained stream that stops flowing fails instead of holding the bench', async () => {
  const flowing = new PassThrough();
  const counted = drain(flowing, 200);
  flowing.write(Buffer.alloc(10));
  flowing.end(Buffer.alloc(5));
  assert.equal(await counted, 15);

  const stalled = new PassThrough();
  const waiting = drain(stalled, 50);
  stalled.write(Buffer.alloc(7));
  await assert.rejects(waiting, /stalled: no bytes for 0\.05 s after 7 bytes/);
  assert.ok(stalled.destroyed, 'the stalled source is destroyed');
});
