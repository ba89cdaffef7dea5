/** berth serve on PostgreSQL: the same webhook-to-history path as on SQLite, against a real server. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer } from '../src/server/index.js';
import { postgresAvailable, startPostgres } from './support/postgres.js';
import { sessionLabels, tempDir } from './support/index.js';

test(
  'berth serve --db postgres:// records a webhook run and keeps it across a restart',
  { skip: !postgresAvailable() && 'PostgreSQL is not installed' },
  async () => {
    using dir = tempDir('berth-serve-pg-');
    const pg = await startPostgres();
    try {
      const repo = join(dir.path, 'repo');
      mkdirSync(repo, { recursive: true });
      const git = (...a: string[]) =>
        execFileSync('git', ['-c', 'user.name=t', '-c', 'user.email=t@example.invalid', ...a], {
          cwd: repo,
          encoding: 'utf8',
        }).trim();
      git('init', '-q', '-b', 'main');
      writeFileSync(
        join(repo, 'berth.yml'),
        'image: berth-local/busybox\ndocker: none\njobs:\n  hi:\n    steps:\n      - echo stored in postgres\n',
      );
      git('add', '.');
      git('commit', '-q', '-m', 'pg');
      const sha = git('rev-parse', 'HEAD');
      const opts = {
        port: 0,
        dataDir: join(dir.path, 'data'),
        db: pg.url,
        concurrency: 1,
        labels: sessionLabels(),
      };
      let server = await startServer(opts);
      await server.store.createProject({ name: 'pg-app', repoUrl: repo, secret: 'gitlab-token-1' });
      const body = JSON.stringify({
        ref: 'refs/heads/main',
        after: sha,
        project: { path_with_namespace: 'g/pg-app' },
      });
      const r = await fetch(`${server.url}/hooks/pg-app`, {
        method: 'POST',
        headers: { 'X-Gitlab-Event': 'Push Hook', 'X-Gitlab-Token': 'gitlab-token-1' },
        body,
      });
      assert.equal(r.status, 201, await r.clone().text());
      const run = (await r.json()) as { id: string };
      for (
        let i = 0;
        i < 600 && ['queued', 'running'].includes((await server.store.run(run.id))?.status ?? '');
        i++
      )
        await new Promise((res) => setTimeout(res, 100));
      assert.equal((await server.store.run(run.id))?.status, 'succeeded');
      await server.close();
      server = await startServer(opts);
      try {
        const logs = await server.store.logs(run.id);
        assert.ok(logs.some((l) => l.text.includes('stored in postgres')));
      } finally {
        await server.close();
      }
    } finally {
      await pg.stop();
    }
  },
);
