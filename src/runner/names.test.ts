import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateName } from '../dind/index.js';
import { composeProject } from './job.js';
import { dindName } from './modes.js';

test("a job's nested daemon name fits dind's 128 characters, and long job names stay apart", () => {
  const run = '20261124-154710-7da2';
  assert.equal(dindName(run, 'build'), `${run}-build`);
  const a = dindName(run, 'l'.repeat(200));
  const b = dindName(run, `${'l'.repeat(199)}m`);
  assert.equal(a.length, 128);
  assert.notEqual(a, b);
  // red-team pass 26: a valid job name of 110 characters failed the run with this error.
  for (const n of [a, b, dindName(run, 'x'.repeat(108))]) assert.equal(validateName('name', n), n);
});

test('compose project names: one per job, even for names compose would shorten (a.b and ab)', () => {
  const run = '20261124-162047-2f2f';
  assert.equal(composeProject(run, 'ab'), `${run}-ab`);
  const dotted = composeProject(run, 'a.b');
  assert.notEqual(dotted, composeProject(run, 'ab'));
  for (const n of [dotted, composeProject(run, 'a_b'), composeProject(run, 'x.y.z')])
    assert.match(n, /^[a-z0-9][a-z0-9_-]*$/);
});
