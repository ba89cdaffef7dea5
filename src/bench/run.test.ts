import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DockerClient } from '../engine/index.js';
import { measureRounds } from './run.js';
import type { BenchOptions, Contender, ContenderId, Scenario } from './types.js';

const client = new DockerClient({ env: { DOCKER_HOST: 'unix:///nonexistent/berth-bench-test.sock' } });
const fake = (id: ContenderId): Contender => ({
  id,
  title: id,
  dockerHost: 'unix:///nonexistent',
  client,
  shared: true,
  stop: () => Promise.resolve(),
});
const contenders = [fake('raw'), fake('haproxy'), fake('guard')];
const options = (quick: boolean): BenchOptions => ({
  quick,
  reps: 2,
  only: [],
  contenders: [],
  payloadMiB: 1,
  logsMiB: 1,
  soakSeconds: 1,
  loadClients: 1,
  outDir: '/nonexistent',
  log: () => undefined,
});
const metrics = { throughput: { unit: 'MiB/s', better: 'higher' } } as const;
/** Runs a scenario's rounds over the three fake contenders; answers the samples and the failures. */
async function measure(
  sc: Scenario,
  {
    quick = false,
    shuffle,
    log,
  }: { quick?: boolean; shuffle?: <T>(xs: T[]) => T[]; log?: (l: string) => void } = {},
  cs: readonly Contender[] = contenders,
) {
  const retried: { id: string; reason: string }[] = [];
  const skipped: { id: string; reason: string }[] = [];
  const o = { ...options(quick), ...(log ? { log } : {}) };
  const s = await measureRounds(sc, cs, o, {
    stopping: () => false,
    retried,
    skipped,
    ...(shuffle ? { shuffle } : {}),
  });
  return { s, retried, skipped };
}
/** A scenario of three rounds a repetition that measures with `run`. */
const fakeScenario = (run: Scenario['run']): Scenario => ({
  id: 'fake',
  title: 'fake',
  roundsPerRep: 3,
  metrics,
  run,
});

test('each round measures every contender once, in the order the shuffle gives, and keeps the round', async () => {
  const calls: string[] = [];
  let n = 0;
  const sc = fakeScenario((c) => {
    calls.push(c.id);
    return Promise.resolve({ throughput: ++n });
  });
  let shuffles = 0;
  // Odd rounds reversed, even rounds as given: the driver must take the order from the shuffle.
  const shuffle = <T>(xs: T[]): T[] => (shuffles++ % 2 ? xs.reverse() : xs);
  const { s, retried, skipped } = await measure(sc, { shuffle });
  assert.equal(shuffles, 6);
  assert.deepEqual(calls.slice(0, 6), ['raw', 'haproxy', 'guard', 'guard', 'haproxy', 'raw']);
  assert.equal(calls.length, 18);
  for (const c of contenders) assert.deepEqual(s.get(c.id)?.get('throughput')?.rounds, [0, 1, 2, 3, 4, 5]);
  // Round 1 ran guard first: its value is the fourth call's.
  assert.equal(s.get('guard')?.get('throughput')?.values[1], 4);
  assert.deepEqual(retried, []);
  assert.deepEqual(skipped, []);

  // Quick mode: one round per repetition.
  calls.length = 0;
  await measure(sc, { quick: true });
  assert.equal(calls.length, 6);
});

test('a failed unit is run again in the same round; a second failure leaves that round out', async () => {
  // The driver shuffles once per round: that tells the scenario which round it is in.
  let round = -1;
  const tries = new Map<string, number>();
  const sc = fakeScenario((c) => {
    const t = (tries.get(`${c.id}#${round}`) ?? 0) + 1;
    tries.set(`${c.id}#${round}`, t);
    // The guard fails once in round 2 and twice in round 4.
    if (c.id === 'guard' && ((round === 2 && t === 1) || round === 4))
      return Promise.reject(new Error(`stalled (try ${t})`));
    return Promise.resolve({ throughput: round });
  });
  const { s, retried, skipped } = await measure(sc, {
    shuffle: (xs) => {
      round++;
      return xs;
    },
  });
  assert.deepEqual(s.get('guard')?.get('throughput'), { values: [0, 1, 2, 3, 5], rounds: [0, 1, 2, 3, 5] });
  assert.deepEqual(s.get('raw')?.get('throughput')?.rounds, [0, 1, 2, 3, 4, 5]);
  assert.deepEqual(retried, [
    { id: 'fake/guard#3', reason: 'stalled (try 1)' },
    { id: 'fake/guard#5', reason: 'stalled (try 1)' },
  ]);
  assert.deepEqual(skipped, [{ id: 'fake/guard#5', reason: 'stalled (try 2)' }]);
  assert.equal(tries.get('guard#4'), 2);
  assert.equal(tries.get('raw#4'), 1);
});

test('a scenario measured together records each contender under the round', async () => {
  const orders: string[][] = [];
  const sc: Scenario = {
    id: 'fake',
    title: 'fake',
    roundsPerRep: 2,
    metrics: { p50: { unit: 'ms', better: 'lower' } },
    run: () => Promise.reject(new Error('not used')),
    runTogether(cs) {
      orders.push(cs.map((c) => c.id));
      return Promise.resolve(new Map(cs.map((c, i) => [c.id, { p50: orders.length * 10 + i }])));
    },
  };
  const { s } = await measure(sc, { shuffle: (xs) => xs.reverse() }, contenders.slice(0, 2));
  assert.deepEqual(
    orders,
    Array.from({ length: 4 }, () => ['haproxy', 'raw']),
  );
  assert.deepEqual(s.get('raw')?.get('p50'), { values: [11, 21, 31, 41], rounds: [0, 1, 2, 3] });
  assert.deepEqual(s.get('haproxy')?.get('p50'), { values: [10, 20, 30, 40], rounds: [0, 1, 2, 3] });
});

test('a contender that fails two rounds in a row gets no more rounds of that scenario', async () => {
  const calls = new Map<string, number>();
  let round = -1;
  const sc = fakeScenario((c) => {
    calls.set(c.id, (calls.get(c.id) ?? 0) + 1);
    // The guard stalls from round 1 on; HAProxy fails round 0 and round 2 only (never twice in a row).
    if (c.id === 'guard' && round >= 1) return Promise.reject(new Error('stalled'));
    if (c.id === 'haproxy' && (round === 0 || round === 2)) return Promise.reject(new Error('flaky'));
    return Promise.resolve({ throughput: round });
  });
  const logged: string[] = [];
  const { s, skipped } = await measure(sc, {
    log: (l) => logged.push(l),
    shuffle: (xs) => {
      round++;
      return xs;
    },
  });
  // Round 0 measured, rounds 1 and 2 failed twice each: four tries, then none.
  assert.equal(calls.get('guard'), 1 + 2 + 2);
  assert.deepEqual(s.get('guard')?.get('throughput')?.rounds, [0]);
  assert.deepEqual(
    skipped.filter((x) => x.id.startsWith('fake/guard')).map((x) => x.id),
    ['fake/guard#2', 'fake/guard#3', 'fake/guard'],
  );
  assert.match(skipped.at(-1)?.reason ?? '', /failed two rounds in a row \(last: stalled\)/);
  assert.ok(logged.some((l) => l.includes('guard: failed two rounds in a row')));
  // HAProxy failed rounds 0 and 2 (twice each), with a measured round between: it keeps its rounds.
  assert.deepEqual(s.get('haproxy')?.get('throughput')?.rounds, [1, 3, 4, 5]);
  assert.deepEqual(s.get('raw')?.get('throughput')?.rounds, [0, 1, 2, 3, 4, 5]);
});
