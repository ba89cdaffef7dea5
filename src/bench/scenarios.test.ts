import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { answered, drain } from './scenarios.js';

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

test('a request whose answer does not come fails instead of holding the bench', async () => {
  const quick = new PassThrough();
  assert.equal(await answered(Promise.resolve(quick), 200), quick);
  let deliver: (s: PassThrough) => void = () => undefined;
  const held = new Promise<PassThrough>((resolve) => (deliver = resolve));
  await assert.rejects(answered(held, 50), /stalled: no answer for 0\.05 s/);
  // The answer that comes after all is dropped, not left open.
  const late = new PassThrough();
  deliver(late);
  await new Promise((r) => setImmediate(r));
  assert.ok(late.destroyed);
});
