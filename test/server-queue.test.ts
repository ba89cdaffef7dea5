/**
 * berth serve, the queue and the run record: with one slot, a run cancelled while queued never
 * starts (no job, no log, no container) while the one ahead of it completes; a re-run builds the
 * same commit again; the job graph (needs) is recorded before anything runs; and a busy job gets
 * CPU and memory samples from the engine's stats while it runs.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { LABEL_RUN } from '../src/common/index.js';
import { encodeFilters } from '../src/engine/index.js';
import { startServer } from '../src/server/index.js';
import type { ServerHandle } from '../src/server/index.js';
import { engine, sessionLabels, tempDir, uniqueName } from './support/index.js';
import { apiClient, makeRepo } from './support/server.js';

const TOKEN = 'queue-token-1';
/** Marks what this file's server makes, so the engine's event log can be read for it alone. */
const MARK = 'io.berth.test-server';

/**
 * Watches the engine's live event stream for containers this server's runs create; `stop()`
 * returns the runner run id of each one seen. Live, not replayed with `since`/`until`: dockerd
 * keeps only its last 256 events for replay, and the other test files running beside this one
 * push older events out of that buffer on a busy engine.
 */
async function watchContainerCreates(mark: string): Promise<{ stop(): Promise<string[]> }> {
  const c = engine();
  const abort = new AbortController();
  // dockerd sends the headers as soon as it has subscribed, so nothing created after this
  // resolves is missed.
  const res = await c.request({
    path: '/events',
    query: { filters: encodeFilters({ type: ['container'], event: ['create'], label: [`${MARK}=${mark}`] }) },
    signal: abort.signal,
  });
  let text = '';
  res.setEncoding('utf8');
  res.on('data', (chunk: string) => (text += chunk));
  res.on('error', () => undefined);
  return {
    async stop() {
      // Events already published reach the stream within milliseconds; give them a moment.
      await new Promise((r) => setTimeout(r, 200));
      abort.abort();
      res.destroy();
      c.close();
      return text
        .split('\n')
        .filter((l) => l.trim())
        .map(
          (l) =>
            (JSON.parse(l) as { Actor: { Attributes: Record<string, string> } }).Actor.Attributes[
              LABEL_RUN
            ] ?? '',
        );
    },
  };
}

interface RunJson {
  id: string;
  status: string;
  sha: string | null;
  trigger: string;
  startedAt: number | null;
  jobs: { name: string; status: string; needs: string[] }[];
  steps: unknown[];
}

describe('berth serve: queue, re-run, job graph, resource samples', () => {
  const dir = tempDir('berth-serve-q-');
  let server: ServerHandle;
  let api: ReturnType<typeof apiClient>;
  let sha = '';
  const mark = uniqueName('q');

  before(async () => {
    sha = makeRepo(join(dir.path, 'repo'), {
      'berth.yml': [
        'image: berth-local/busybox',
        'docker: none',
        'jobs:',
        '  a: { steps: ["echo a; sleep 2"] }',
        '  b: { needs: [a], steps: ["echo b"] }',
        '  c: { needs: [a], steps: ["echo c"] }',
        '  d:',
        '    needs: [b, c]',
        '    steps:',
        '      - name: busy',
        '        run: for k in 1 2 3; do head -c 30000000 /dev/urandom | od -An -x | sort > /dev/null; done; echo d-done',
        '',
      ].join('\n'),
    });
    server = await startServer({
      port: 0,
      dataDir: join(dir.path, 'data'),
      concurrency: 1,
      token: TOKEN,
      labels: sessionLabels({ [MARK]: mark }),
      sampleSeconds: 1,
    });
    api = apiClient(server.url, TOKEN);
    const p = await api.call('POST', '/api/projects', {
      name: 'q',
      repoUrl: join(dir.path, 'repo'),
      secret: 'queue-secret-123',
    });
    assert.equal(p.status, 201);
  });

  after(async () => {
    await server.close();
    dir[Symbol.dispose]();
  });

  test('cancel while queued: it never starts; the run ahead completes; re-run builds the commit again', async () => {
    const creates = await watchContainerCreates(mark);
    const first = (await api.call<RunJson>('POST', '/api/projects/q/runs', { sha })).json;
    const second = (await api.call<RunJson>('POST', '/api/projects/q/runs', { sha })).json;
    // One slot: the second waits behind the first.
    const running = await api.settle<RunJson>(first.id, (r) => r.status !== 'queued');
    assert.equal(running.status, 'running');
    assert.equal((await api.call<RunJson>('GET', `/api/runs/${second.id}`)).json.status, 'queued');
    const cancelled = await api.call<RunJson>('POST', `/api/runs/${second.id}/cancel`);
    assert.equal(cancelled.status, 200);
    assert.equal(cancelled.json.status, 'cancelled');

    const done = await api.settle<RunJson>(first.id);
    assert.equal(done.status, 'succeeded');
    const never = (await api.call<RunJson>('GET', `/api/runs/${second.id}`)).json;
    assert.equal(never.status, 'cancelled');
    assert.equal(never.startedAt, null, 'it never started');
    assert.deepEqual(never.jobs, []);
    assert.deepEqual(never.steps, []);
    assert.deepEqual((await api.call<unknown[]>('GET', `/api/runs/${second.id}/logs`)).json, []);
    // No container was ever created for the cancelled run: every container made while both were
    // in play belongs to one runner run (the first's) — one per job.
    const made = await creates.stop();
    assert.equal(made.length, 4, `containers created: ${made.join(', ')}`);
    assert.equal(new Set(made).size, 1, `containers of more than one run: ${made.join(', ')}`);

    const again = await api.call<RunJson>('POST', `/api/runs/${first.id}/rerun`);
    assert.equal(again.status, 201);
    assert.notEqual(again.json.id, first.id);
    assert.equal(again.json.sha, sha, 'the re-run builds the same commit');
    const rerun = await api.settle<RunJson>(again.json.id);
    assert.equal(rerun.status, 'succeeded');
  });

  test('the job graph is recorded with each job’s needs', async () => {
    const runs = (await api.call<RunJson[]>('GET', '/api/projects/q/runs')).json;
    const done = runs.find((r) => r.status === 'succeeded');
    assert.ok(done);
    const { jobs } = (await api.call<RunJson>('GET', `/api/runs/${done.id}`)).json;
    const needs = Object.fromEntries(jobs.map((j) => [j.name, [...j.needs].sort()]));
    assert.deepEqual(needs, { a: [], b: ['a'], c: ['a'], d: ['b', 'c'] });
    assert.ok(jobs.every((j) => j.status === 'passed'));
  });

  test('a busy job is sampled: CPU and memory over time from the engine’s stats', async () => {
    const runs = (await api.call<RunJson[]>('GET', '/api/projects/q/runs')).json;
    const done = runs.find((r) => r.status === 'succeeded');
    assert.ok(done);
    const samples = (
      await api.call<{ ts: number; cpuPercent: number; memBytes: number }[]>(
        'GET',
        `/api/runs/${done.id}/samples?job=d`,
      )
    ).json;
    assert.ok(samples.length >= 2, `${samples.length} samples`);
    assert.ok(
      samples.some((s) => s.cpuPercent > 0),
      'some CPU use was seen',
    );
    assert.ok(
      samples.every((s) => s.memBytes > 0),
      'memory is read on every sample',
    );
    assert.ok(
      samples.every((s, i) => i === 0 || s.ts > (samples[i - 1]?.ts ?? 0)),
      'samples are in time order',
    );
    const missing = await api.call<{ message: string }>('GET', `/api/runs/${done.id}/samples`);
    assert.equal(missing.status, 400);
  });
});
