import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Turns } from './turns.js';

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
