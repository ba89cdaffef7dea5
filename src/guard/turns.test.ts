import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SharedTurns, Turns } from './turns.js';

test('operations under one key take turns, failures included; other keys run alongside; idle keys are forgotten', async () => {
  const turns = new Turns();
  const log: string[] = [];
  const step =
    (name: string, ms: number, fail = false) =>
    async () => {
      log.push(`${name} start`);
      await new Promise((r) => setTimeout(r, ms));
      log.push(`${name} end`);
      if (fail) throw new Error(name);
      return name;
    };
  const a1 = turns.run('a', step('a1', 20, true));
  const a2 = turns.run('a', step('a2', 1));
  const b1 = turns.run('b', step('b1', 5));
  await assert.rejects(a1, /a1/);
  assert.equal(await a2, 'a2');
  assert.equal(await b1, 'b1');
  assert.ok(log.indexOf('a1 end') < log.indexOf('a2 start'), log.join(', '));
  assert.ok(log.indexOf('b1 start') < log.indexOf('a1 end'), log.join(', '));
  assert.equal(turns.size, 0);
});

test('shared operations run together; an exclusive one waits for those under way, and later ones wait for it', async () => {
  const gate = new SharedTurns();
  const log: string[] = [];
  const step =
    (name: string, ms: number, fail = false) =>
    async () => {
      log.push(`${name} start`);
      await new Promise((r) => setTimeout(r, ms));
      log.push(`${name} end`);
      if (fail) throw new Error(name);
      return name;
    };
  const s1 = gate.shared(step('s1', 30, true));
  const s2 = gate.shared(step('s2', 10));
  await new Promise((r) => setTimeout(r, 1));
  const x1 = gate.exclusive(step('x1', 10));
  const s3 = gate.shared(step('s3', 1));
  const x2 = gate.exclusive(step('x2', 1));
  await assert.rejects(s1, /s1/);
  assert.deepEqual(await Promise.all([s2, x1, s3, x2]), ['s2', 'x1', 's3', 'x2']);
  const at = (e: string) => log.indexOf(e);
  // s1 and s2 overlapped; x1 ran alone after both; s3 after x1; x2 after x1, never beside s3
  // (exclusive operations waiting go first: s3, waiting behind x1, also waits for x2).
  assert.ok(at('s2 start') < at('s1 end'), log.join(', '));
  assert.ok(at('x1 start') > at('s1 end') && at('x1 start') > at('s2 end'), log.join(', '));
  assert.ok(at('s3 start') > at('x1 end') && at('x2 start') > at('x1 end'), log.join(', '));
  assert.ok(at('s3 end') < at('x2 start') || at('x2 end') < at('s3 start'), log.join(', '));
});
