import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { openPostgres, openSqlite } from './sql.js';
import { ServerStore } from './store.js';
import { BerthError } from '../common/index.js';
import { startPostgres } from '../../test/support/postgres.js';
import type { TestPostgres } from '../../test/support/postgres.js';

// The same behaviour on both backends: the embedded default and a real PostgreSQL server.
for (const backend of ['sqlite', 'postgres'] as const) {
  describe(`server store on ${backend}`, () => {
    let pg: TestPostgres | undefined;
    let store: ServerStore;
    before(async () => {
      if (backend === 'postgres') {
        pg = await startPostgres();
        store = await ServerStore.open(await openPostgres(pg.url));
      } else {
        store = await ServerStore.open(openSqlite(':memory:'));
      }
    });
    after(async () => {
      await store.close();
      await pg?.stop();
    });

    test('projects: created once, found by id or name, validated', async () => {
      const p = await store.createProject({ name: 'app', repoUrl: '/srv/app.git', secret: 'secret-123' });
      assert.equal((await store.project(p.id))?.name, 'app');
      assert.equal((await store.project('app'))?.id, p.id);
      await assert.rejects(
        store.createProject({ name: 'app', repoUrl: '/x', secret: 'secret-123' }),
        /already exists/,
      );
      await assert.rejects(
        store.createProject({ name: 'Bad Name', repoUrl: '/x', secret: 'secret-123' }),
        BerthError,
      );
      await assert.rejects(store.createProject({ name: 'short', repoUrl: '/x', secret: 'x' }), /at least 8/);
    });

    test('runs queue in order, start once, and finish', async () => {
      const p = await store.createProject({ name: 'queue-app', repoUrl: '/srv/q.git', secret: 'secret-123' });
      const a = await store.enqueue({ projectId: p.id, trigger: 'manual' });
      const b = await store.enqueue({
        projectId: p.id,
        trigger: 'webhook',
        sha: 'f'.repeat(40),
        branch: 'main',
      });
      assert.ok(b.seq > a.seq);
      assert.deepEqual(
        (await store.queued()).filter((r) => r.projectId === p.id).map((r) => r.id),
        [a.id, b.id],
      );
      assert.equal(await store.markStarted(a.id), true);
      assert.equal(await store.markStarted(a.id), false, 'a run starts once');
      await store.markFinished(a.id, 'succeeded', 0);
      const done = await store.run(a.id);
      assert.equal(done?.status, 'succeeded');
      assert.equal(done?.exitCode, 0);
      assert.ok(typeof done?.finishedAt === 'number');
    });

    test('a restart marks running runs interrupted and keeps queued ones', async () => {
      const p = await store.createProject({
        name: 'restart-app',
        repoUrl: '/srv/r.git',
        secret: 'secret-123',
      });
      const running = await store.enqueue({ projectId: p.id, trigger: 'manual' });
      const waiting = await store.enqueue({ projectId: p.id, trigger: 'manual' });
      await store.markStarted(running.id);
      await store.upsertJob({
        runId: running.id,
        name: 'build',
        status: 'running',
        needs: [],
        startedAt: Date.now(),
        finishedAt: null,
        exitCode: null,
      });
      const interrupted = await store.interruptRunning();
      assert.ok(interrupted.includes(running.id));
      assert.equal((await store.run(running.id))?.status, 'interrupted');
      assert.equal((await store.run(waiting.id))?.status, 'queued');
      assert.equal((await store.jobs(running.id))[0]?.status, 'interrupted');
    });

    test('jobs, steps, logs with ranges, and samples round-trip', async () => {
      const p = await store.createProject({ name: 'logs-app', repoUrl: '/srv/l.git', secret: 'secret-123' });
      const r = await store.enqueue({ projectId: p.id, trigger: 'manual' });
      await store.upsertJob({
        runId: r.id,
        name: 'test',
        status: 'running',
        needs: ['build'],
        startedAt: 5,
        finishedAt: null,
        exitCode: null,
      });
      await store.upsertJob({
        runId: r.id,
        name: 'test',
        status: 'succeeded',
        needs: ['build'],
        startedAt: null,
        finishedAt: 9,
        exitCode: 0,
      });
      assert.deepEqual(await store.jobs(r.id), [
        {
          runId: r.id,
          name: 'test',
          status: 'succeeded',
          needs: ['build'],
          startedAt: 5,
          finishedAt: 9,
          exitCode: 0,
        },
      ]);
      await store.upsertStep({
        runId: r.id,
        job: 'test',
        idx: 0,
        name: 'make',
        status: 'failed',
        startedAt: 6,
        finishedAt: 8,
        exitCode: 2,
      });
      assert.equal((await store.steps(r.id, 'test'))[0]?.exitCode, 2);
      const lines = await store.appendLogs(
        r.id,
        Array.from({ length: 5 }, (_, i) => ({ job: 'test', step: 0, stream: 'stdout', text: `line ${i}` })),
      );
      assert.deepEqual(
        lines.map((l) => l.seq),
        [1, 2, 3, 4, 5],
      );
      const page = await store.logs(r.id, { after: 2, limit: 2 });
      assert.deepEqual(
        page.map((l) => l.text),
        ['line 2', 'line 3'],
      );
      await store.addSample(r.id, 'test', { ts: 1, cpuPercent: 12.5, memBytes: 1024 });
      assert.deepEqual(await store.samples(r.id, 'test'), [{ ts: 1, cpuPercent: 12.5, memBytes: 1024 }]);
    });
  });
}
