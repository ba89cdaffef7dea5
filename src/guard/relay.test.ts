import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough, Readable, Writable } from 'node:stream';
import { WHOLE_PIECE, relay } from './relay.js';

/** A destination that records each write; `slow` holds every callback until `release()`. */
function sink(opts: { slow?: boolean; highWaterMark?: number } = {}) {
  const writes: Buffer[] = [];
  const held: (() => void)[] = [];
  const w = new Writable({
    highWaterMark: opts.highWaterMark ?? 16 * 1024,
    write(chunk: Buffer, _e, cb) {
      writes.push(chunk);
      if (opts.slow) held.push(cb);
      else cb();
    },
  });
  return {
    w,
    writes,
    release: (): void => {
      for (const cb of held.splice(0)) cb();
    },
  };
}

test('relay: small pieces of one tick go out as one write; a large piece goes out uncopied', async () => {
  const src = new PassThrough();
  const { w, writes } = sink();
  const done = relay(src, w);
  for (let i = 0; i < 50; i++) src.write(Buffer.from(`piece ${i};`));
  await new Promise((r) => setImmediate(r));
  assert.equal(writes.length, 1, 'fifty small pieces, one write');
  assert.equal(writes[0]?.toString(), Array.from({ length: 50 }, (_, i) => `piece ${i};`).join(''));
  const big = Buffer.alloc(WHOLE_PIECE * 2, 7);
  src.write(big);
  await new Promise((r) => setImmediate(r));
  assert.equal(writes.length, 2);
  assert.equal(writes[1]?.buffer, big.buffer, 'the large piece is the same memory, not a copy');
  src.end(Buffer.from('tail'));
  await done;
  const small = Array.from({ length: 50 }, (_, i) => `piece ${i};`).join('');
  assert.deepEqual(Buffer.concat(writes), Buffer.concat([Buffer.from(small), big, Buffer.from('tail')]));
  assert.ok(w.writableFinished, 'the destination was ended');
});

test('relay: keeps backpressure (the source is paused while the destination is full) and loses nothing', async () => {
  const pieces = Array.from({ length: 64 }, (_, i) => Buffer.alloc(WHOLE_PIECE, i));
  const src = Readable.from(pieces, { objectMode: false, highWaterMark: WHOLE_PIECE });
  const { w, writes, release } = sink({ slow: true, highWaterMark: WHOLE_PIECE });
  const done = relay(src, w);
  await new Promise((r) => setTimeout(r, 20));
  assert.ok(writes.length <= 2, `with the destination stuck, the source stops (${writes.length} writes)`);
  assert.ok(src.isPaused(), 'the source is paused');
  const timer = setInterval(release, 1);
  await done;
  clearInterval(timer);
  assert.deepEqual(Buffer.concat(writes), Buffer.concat(pieces));
});

test('relay: a destination that closes early destroys the source, or with discard drains it', async () => {
  for (const mode of ['destroy', 'discard'] as const) {
    const src = new PassThrough();
    const { w } = sink();
    const done = relay(src, w, { onEarlyClose: mode });
    src.write(Buffer.from('a'));
    w.destroy();
    await done;
    if (mode === 'destroy') assert.ok(src.destroyed, 'destroyed');
    else {
      assert.ok(!src.destroyed, 'kept');
      // Read on to its end (a paused source would never end): the writer is not held up.
      src.end(Buffer.alloc(1 << 20));
      await new Promise((r) => src.once('end', r));
    }
  }
});

test('relay: a source error destroys the destination; end:false leaves it open; onData sees every byte', async () => {
  const src = new PassThrough();
  const { w } = sink();
  const failed = new Promise<Error>((r) => w.once('error', r));
  const done = relay(src, w);
  src.destroy(new Error('boom'));
  await done;
  assert.ok(w.destroyed);
  assert.equal((await failed).message, 'boom', 'with the source’s error');

  const src2 = new PassThrough();
  const s2 = sink();
  const seen: Buffer[] = [];
  const done2 = relay(src2, s2.w, { end: false, onData: (c) => seen.push(c) });
  src2.end(Buffer.from('xyz'));
  await done2;
  assert.ok(!s2.w.writableEnded, 'left open for the caller');
  assert.equal(Buffer.concat(seen).toString(), 'xyz');
});
