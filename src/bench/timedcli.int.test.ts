/**
 * The bench's docker CLI timing against the real engine: a download that completes is timed, a
 * failing command fails the round with the CLI's own message, and one that does not finish in time
 * is killed (a stalled contender must not hold the bench).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rawContender } from './contenders.js';
import { timedCli } from './scenarios.js';

const raw = rawContender();

test('the docker CLI is timed from start to exit, its output thrown away', async () => {
  const ms = await timedCli(raw, ['version', '--format', '{{.Server.Version}}']);
  assert.ok(ms > 0 && ms < 30_000, `took ${ms} ms`);
});

test('a failing docker command fails the measurement with what the CLI said', async () => {
  await assert.rejects(
    timedCli(raw, ['cp', 'berth-bench-no-such-container:/payload', '-']),
    /docker cp exited with 1: .*No such container/i,
  );
});

test('a docker command that does not finish in time is killed and fails as stalled', async () => {
  // `docker events` never ends by itself.
  const t0 = performance.now();
  await assert.rejects(timedCli(raw, ['events'], 300), /docker events: stalled, killed after 0\.3 s/);
  assert.ok(performance.now() - t0 < 10_000);
});
