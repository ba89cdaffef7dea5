import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pickRunsToStart } from './schedule.js';

const q = (id: string, project: string, seq: number) => ({ id, project, seq });

test('global concurrency bounds how many start', () => {
  const picked = pickRunsToStart([q('a1', 'a', 1), q('b1', 'b', 2), q('c1', 'c', 3)], [], {
    concurrency: 2,
    perProject: 1,
  });
  assert.deepEqual(
    picked.map((r) => r.id),
    ['a1', 'b1'],
  );
  assert.deepEqual(
    pickRunsToStart(
      [q('c1', 'c', 3)],
      [
        { id: 'x', project: 'a' },
        { id: 'y', project: 'b' },
      ],
      { concurrency: 2, perProject: 1 },
    ),
    [],
  );
});

test('a project runs one at a time, in queue order, while other projects proceed', () => {
  const picked = pickRunsToStart([q('a2', 'a', 5), q('a1', 'a', 1), q('b1', 'b', 7)], [], {
    concurrency: 4,
    perProject: 1,
  });
  assert.deepEqual(
    picked.map((r) => r.id),
    ['a1', 'b1'],
  );
  const next = pickRunsToStart([q('a2', 'a', 5), q('b2', 'b', 8)], [{ id: 'a1', project: 'a' }], {
    concurrency: 4,
    perProject: 1,
  });
  assert.deepEqual(
    next.map((r) => r.id),
    ['b2'],
  );
});

test('perProject > 1 still starts a project’s runs in order', () => {
  const picked = pickRunsToStart(
    [q('a3', 'a', 3), q('a1', 'a', 1), q('a2', 'a', 2)],
    [{ id: 'a0', project: 'a' }],
    { concurrency: 10, perProject: 2 },
  );
  assert.deepEqual(
    picked.map((r) => r.id),
    ['a1'],
  );
});

test('nothing queued, nothing started', () => {
  assert.deepEqual(pickRunsToStart([], [], { concurrency: 3, perProject: 1 }), []);
});
