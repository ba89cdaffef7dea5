import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { ImageWatch, eventMillis, imageEventEffect } from './imagewatch.js';
import type { ImageEvent } from './imagewatch.js';
import { TenantState } from './ownership.js';

const ID = `sha256:${'a'.repeat(64)}`;
const OTHER = `sha256:${'b'.repeat(64)}`;

test('image events: what each means for claims', () => {
  const at = 1_700_000_000_123_456_000;
  assert.deepEqual(imageEventEffect({ Type: 'image', Action: 'delete', Actor: { ID }, timeNano: at }), {
    kind: 'gone',
    id: ID,
    atMs: at / 1e6,
  });
  assert.deepEqual(imageEventEffect({ Action: 'untag', Actor: { ID } }), { kind: 'untagged', id: ID });
  // A tag event names the new tag in its attributes; a pull event in its actor.
  assert.deepEqual(
    imageEventEffect({ Action: 'tag', Actor: { ID, Attributes: { name: 'app:1' } }, time: 5 }),
    {
      kind: 'written',
      ref: 'app:1',
      atMs: 5000,
    },
  );
  assert.deepEqual(imageEventEffect({ Action: 'pull', Actor: { ID: 'busybox:latest' }, time: 6 }), {
    kind: 'written',
    ref: 'busybox:latest',
    atMs: 6000,
  });
  // Older engines: status and id.
  assert.deepEqual(imageEventEffect({ status: 'delete', id: ID, time: 1 }), {
    kind: 'gone',
    id: ID,
    atMs: 1000,
  });
  // A volume's removal names the volume; its other events mean nothing here.
  assert.deepEqual(imageEventEffect({ Type: 'volume', Action: 'destroy', Actor: { ID: 'berth-tag-x' } }), {
    kind: 'volumeGone',
    name: 'berth-tag-x',
  });
  assert.deepEqual(imageEventEffect({ Type: 'volume', Action: 'prune', Actor: { ID: '' } }), {
    kind: 'volumesPruned',
  });
  for (const ev of [
    { Type: 'volume', Action: 'mount', Actor: { ID: 'v' } },
    { Type: 'volume', Action: 'destroy' },
    { Type: 'volume', Action: 'delete', Actor: { ID } },
    { Action: 'push', Actor: { ID: 'x:1' } },
    { Action: 'delete' },
    { Action: 'tag', Actor: { ID } },
    {},
  ] as ImageEvent[])
    assert.deepEqual(imageEventEffect(ev), { kind: 'none' });
  assert.equal(eventMillis({ time: 2, timeNano: 2_500_000_000 }), 2500);
});

test('claims: an image that left the engine takes the claims made before along, not those made after', () => {
  const s = new TenantState('t');
  s.setTag('app:1', ID);
  s.setTag('app:2', OTHER);
  s.digests.set('app@sha256:' + 'c'.repeat(64), ID);
  s.builtImages.add(ID);
  const before = Date.now() - 10_000;
  // An event replayed late (the image went before these claims were made) ends nothing.
  s.forgetImage(ID, before);
  assert.ok(s.ownsTagAt('app:1', ID) && s.builtImages.has(ID) && s.claimsOn(ID).length === 2);
  s.forgetImage(ID, Date.now() + 1);
  assert.equal(s.ownsTagAt('app:1', ID), false);
  assert.equal(s.builtImages.has(ID), false);
  assert.deepEqual(s.claimsOn(ID), []);
  assert.ok(s.ownsTagAt('app:2', OTHER), 'another image’s claim stays');
});

test('claims: a write of the name logged after the claim settled is someone else’s', () => {
  const s = new TenantState('t');
  s.setTag('app:1', ID);
  const settled = Date.now();
  // The tenant's own write, logged within the same millisecond the claim settled: kept.
  s.foreignWrite('app:1', settled + 0.9);
  assert.ok(s.ownsTagAt('app:1', ID));
  s.foreignWrite('docker.io/library/app:1', settled + 50);
  assert.equal(s.ownsTagAt('app:1', ID), false, 'the familiar and full names are one tag');
  // A claim in flight (its operation writes the name now) is not ended; digests are not tags.
  s.addTag('app:3');
  s.foreignWrite('app:3', Date.now() + 50);
  assert.ok(s.ownsTag('app:3'));
  s.foreignWrite(`app@sha256:${'c'.repeat(64)}`, Date.now() + 50);
  s.forgetClaim('app:3');
  assert.equal(s.ownsTag('app:3'), false);
});

test('watch: a sync replays the engine’s log since the last event and waits for every handler', async () => {
  const opened: string[] = [];
  const handled: string[] = [];
  const lines = (evs: ImageEvent[]) => Readable.from(evs.map((e) => `${JSON.stringify(e)}\n`));
  const w = new ImageWatch(
    {
      open: (path) => {
        opened.push(path);
        return Promise.resolve(
          lines([
            { Action: 'delete', Actor: { ID }, timeNano: 2_000_000_000_000 * 1e6 },
            { Action: 'untag', Actor: { ID: OTHER }, timeNano: 2_000_000_000_500 * 1e6 },
          ]),
        );
      },
      handle: async (ev) => {
        await new Promise((r) => setTimeout(r, 5));
        handled.push(ev.Action ?? '');
      },
    },
    1_999_999_999_000,
  );
  await w.sync();
  assert.deepEqual(handled, ['delete', 'untag']);
  const first = new URLSearchParams(opened[0]?.split('?')[1] ?? '');
  assert.equal(first.get('since'), '1999999998.000000');
  assert.ok(Number(first.get('until')) > 1_700_000_000);
  assert.deepEqual(JSON.parse(first.get('filters') ?? ''), {
    type: ['image', 'volume'],
    event: ['delete', 'untag', 'tag', 'pull', 'destroy', 'prune'],
  });
  // The next replay starts a second before the newest event seen.
  await w.sync();
  assert.equal(new URLSearchParams(opened[1]?.split('?')[1] ?? '').get('since'), '1999999999.500000');
  w.close();
});
