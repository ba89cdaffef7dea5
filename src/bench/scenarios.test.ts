import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import type { DockerClient } from '../engine/index.js';
import { answered, apiRoundTrip, apiTogether, drain } from './scenarios.js';
import type { BenchOptions, Contender, ContenderId } from './types.js';

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

test('the API round trips take the contenders in turns: each measures until its turn is over', async () => {
  const calls: string[] = [];
  const fake = (id: ContenderId): Contender => {
    let made = 0;
    const client = {
      ping: () => {
        calls.push(`${id} ping`);
        return Promise.resolve({});
      },
      json: (method: string, path: string) => {
        if (method === 'POST') return Promise.resolve({ Id: `${id}-${made++}`, Warnings: null });
        calls.push(`${id} ${path === '/containers/json' ? 'list' : 'inspect'}`);
        return Promise.resolve(path === '/containers/json' ? [] : {});
      },
    } as unknown as DockerClient;
    return { id, title: id, dockerHost: '', client, shared: true, stop: () => Promise.resolve() };
  };
  const cs = [fake('raw'), fake('guard')];
  const o = { quick: true } as BenchOptions;
  assert.equal((await apiRoundTrip.prepareTogether?.(cs, o))?.size, 0);
  const runs = async (turnMs: number, shuffle = <T>(xs: T[]) => xs) => {
    calls.length = 0;
    const values = await apiTogether(cs, o, turnMs, shuffle);
    for (const c of cs) {
      const v = values.get(c.id);
      assert.ok(v && Number.isFinite(v.list_p50) && Number.isFinite(v.inspect_p99), c.id);
      // Lists compared with the raw socket's of the same cycle: a proxy's only.
      assert.equal(v.list_added_p50 === undefined, c.id === 'raw', c.id);
      if (c.id !== 'raw') assert.ok(Number.isFinite(v.list_added_p50), c.id);
    }
    // 20 warm-up rounds (ping and inspect, a list every fourth: 90 calls for two), then the
    // measured ones: 50 pings, 25 lists (n / 2) and 50 inspects each.
    assert.equal(calls.length, 90 + 2 * (50 + 25 + 50));
    return calls.slice(90);
  };
  // Turns shorter than a request: one request each, raw then guard.
  const timed = await runs(0);
  for (let i = 0; i < timed.length; i += 2) {
    assert.match(timed[i] ?? '', /^raw /);
    assert.equal(timed[i + 1], (timed[i] ?? '').replace('raw', 'guard'));
  }
  assert.deepEqual([...new Set(timed.map((t) => t.split(' ')[1]))], ['ping', 'list', 'inspect']);
  // Each round in a new order: here reversed every other round.
  let round = 0;
  const swapped = await runs(0, <T>(xs: T[]) => (round++ % 2 ? xs.reverse() : xs));
  assert.deepEqual(swapped.slice(0, 6), [
    'raw ping',
    'guard ping',
    'guard ping',
    'raw ping',
    'raw ping',
    'guard ping',
  ]);
  // Turns longer than a whole kind: all of raw's pings, then all of guard's; lists in cycles of
  // one each whatever the turn.
  assert.deepEqual(
    (await runs(60_000)).map((t) => t.split(' ').reverse().join(' ')),
    [
      ...Array<string>(50).fill('ping raw'),
      ...Array<string>(50).fill('ping guard'),
      ...Array.from({ length: 25 }, () => ['list raw', 'list guard']).flat(),
      ...Array<string>(50).fill('inspect raw'),
      ...Array<string>(50).fill('inspect guard'),
    ],
  );
});

test('the API scenario makes its containers in turns, one per contender at a time; a contender whose create fails is left out', async () => {
  const creates: string[] = [];
  const fake = (id: ContenderId, failAt = Infinity): Contender => {
    let made = 0;
    const client = {
      json: () => {
        if (made === failAt) return Promise.reject(new Error(`${id}: no more`));
        creates.push(id);
        return Promise.resolve({ Id: `${id}-${made++}`, Warnings: null });
      },
    } as unknown as DockerClient;
    return { id, title: id, dockerHost: '', client, shared: true, stop: () => Promise.resolve() };
  };
  const failed = await apiRoundTrip.prepareTogether?.([fake('raw'), fake('haproxy', 3), fake('guard')], {
    quick: true,
  } as BenchOptions);
  assert.deepEqual([...(failed?.keys() ?? [])], ['haproxy']);
  assert.match(failed?.get('haproxy')?.message ?? '', /no more/);
  assert.deepEqual(creates.slice(0, 9), [
    'raw',
    'haproxy',
    'guard',
    'raw',
    'haproxy',
    'guard',
    'raw',
    'haproxy',
    'guard',
  ]);
  assert.deepEqual(creates.slice(9, 13), ['raw', 'guard', 'raw', 'guard']);
  assert.equal(creates.filter((c) => c === 'raw').length, 50);
  assert.equal(creates.filter((c) => c === 'guard').length, 50);
});
