/**
 * berth serve end to end (without a browser): a signed push webhook to a running server produces
 * a run of the pushed commit's berth.yml; bad signatures, malformed payloads and unknown projects
 * are rejected and queue nothing; logs and the live event stream follow the run.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startServer } from '../src/server/index.js';
import type { ServerHandle } from '../src/server/index.js';
import { sessionLabels, tempDir } from './support/index.js';
import { git } from './support/server.js';

const SECRET = 'webhook-secret-123';
const TOKEN = 'api-token-456';

describe('berth serve', () => {
  const dir = tempDir('berth-serve-');
  const repo = join(dir.path, 'repo');
  let server: ServerHandle;
  let sha = '';

  before(async () => {
    mkdirSync(repo, { recursive: true });
    git(repo, 'init', '-q', '-b', 'main');
    writeFileSync(
      join(repo, 'berth.yml'),
      [
        'image: berth-local/busybox',
        'docker: none',
        'jobs:',
        '  hello:',
        '    steps:',
        '      - echo "hello from run $BERTH_RUN_ID"',
        '      - cat message.txt',
        '      - echo "on $BERTH_BRANCH at $BERTH_COMMIT_SHA"',
        '',
      ].join('\n'),
    );
    writeFileSync(join(repo, 'message.txt'), 'pushed content\n');
    git(repo, 'add', '.');
    git(repo, 'commit', '-q', '-m', 'first');
    sha = git(repo, 'rev-parse', 'HEAD');
    server = await startServer({
      port: 0,
      dataDir: join(dir.path, 'data'),
      concurrency: 2,
      token: TOKEN,
      labels: sessionLabels(),
    });
    const r = await fetch(`${server.url}/api/projects`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: 'app', repoUrl: repo, secret: SECRET }),
    });
    assert.equal(r.status, 201, await r.text());
  });

  after(async () => {
    await server.close();
    dir[Symbol.dispose]();
  });

  const push = (body: string, headers: Record<string, string>, project = 'app') =>
    fetch(`${server.url}/hooks/${project}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...headers },
      body,
    });
  const payload = () =>
    JSON.stringify({
      ref: 'refs/heads/main',
      after: sha,
      repository: { clone_url: repo, full_name: 't/app' },
      head_commit: { message: 'first' },
    });
  const sign = (b: string) => `sha256=${createHmac('sha256', SECRET).update(b).digest('hex')}`;
  const queuedCount = async () =>
    (
      (await (
        await fetch(`${server.url}/api/runs`, { headers: { Authorization: `Bearer ${TOKEN}` } })
      ).json()) as unknown[]
    ).length;

  test('bad signature → 401, malformed payload → 400, unknown project → 404; nothing queued', async () => {
    const body = payload();
    const bad = await push(body, { 'X-GitHub-Event': 'push', 'X-Hub-Signature-256': sign(`${body} `) });
    assert.equal(bad.status, 401);
    assert.match(((await bad.json()) as { message: string }).message, /signature does not match/);
    const malformed = '{"ref": 1}';
    const m = await push(malformed, { 'X-GitHub-Event': 'push', 'X-Hub-Signature-256': sign(malformed) });
    assert.equal(m.status, 400);
    const unknown = await push(body, { 'X-GitHub-Event': 'push', 'X-Hub-Signature-256': sign(body) }, 'nope');
    assert.equal(unknown.status, 404);
    assert.equal(await queuedCount(), 0);
    const noToken = await fetch(`${server.url}/api/runs`);
    assert.equal(noToken.status, 401);
  });

  test('a signed push runs the pushed commit; logs and the event stream follow it', async () => {
    const ac = new AbortController();
    const seen: string[] = [];
    const stream = fetch(`${server.url}/api/events?token=${TOKEN}`, { signal: ac.signal })
      .then(async (res) => {
        const reader = res.body!.getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          seen.push(Buffer.from(value).toString('utf8'));
        }
      })
      .catch(() => undefined);
    const body = payload();
    const r = await push(body, { 'X-GitHub-Event': 'push', 'X-Hub-Signature-256': sign(body) });
    assert.equal(r.status, 201, await r.clone().text());
    const run = (await r.json()) as { id: string; sha: string };
    assert.equal(run.sha, sha);
    let status = 'queued';
    for (let i = 0; i < 600 && (status === 'queued' || status === 'running'); i++) {
      await new Promise((res) => setTimeout(res, 100));
      status = (
        (await (
          await fetch(`${server.url}/api/runs/${run.id}`, { headers: { Authorization: `Bearer ${TOKEN}` } })
        ).json()) as { status: string }
      ).status;
    }
    assert.equal(status, 'succeeded');
    const logs = (await (
      await fetch(`${server.url}/api/runs/${run.id}/logs`, { headers: { Authorization: `Bearer ${TOKEN}` } })
    ).json()) as { text: string }[];
    const text = logs.map((l) => l.text).join('\n');
    assert.match(text, /hello from run \S+/);
    assert.match(text, /pushed content/);
    // The checkout is detached (the pushed commit); the branch is the push's.
    assert.ok(text.includes(`on main at ${sha}`), text);
    const page = (await (
      await fetch(`${server.url}/api/runs/${run.id}/logs?after=1&limit=1`, {
        headers: { Authorization: `Bearer ${TOKEN}` },
      })
    ).json()) as { seq: number }[];
    assert.deepEqual(
      page.map((l) => l.seq),
      [2],
    );
    ac.abort();
    await stream;
    const events = seen.join('');
    assert.match(events, /event: run.queued/);
    assert.match(events, /pushed content/);
    const badge = await fetch(`${server.url}/badge/app.svg`);
    assert.match(await badge.text(), /succeeded/);
    const page2 = await fetch(`${server.url}/runs/${run.id}`);
    assert.match(await page2.text(), /<title>berth<\/title>/);
  });

  test('a job that overwrites its checkout’s git objects leaves the project’s repository intact', async () => {
    // Red-team pass 34: a clone of a local path hardlinks the source's object files, and a job
    // (root in its container, the workspace mounted) could rewrite them: another project's next
    // run, or the next clone of the repository, would then check out what the job wrote.
    const src = join(dir.path, 'tamper-src');
    mkdirSync(src, { recursive: true });
    git(src, 'init', '-q', '-b', 'main');
    const pipeline = [
      'image: berth-local/busybox',
      'docker: none',
      'jobs:',
      '  tamper:',
      '    steps:',
      '      - find /workspace/.git/objects -type f | while read f; do chmod u+w "$f"; echo tampered > "$f"; done',
      '      - echo "overwrote $(find /workspace/.git/objects -type f | wc -l) object files"',
      '',
    ].join('\n');
    writeFileSync(join(src, 'berth.yml'), pipeline);
    git(src, 'add', '.');
    git(src, 'commit', '-q', '-m', 'tamper');
    const head = git(src, 'rev-parse', 'HEAD');
    const p = await server.store.createProject({ name: 'tamper', repoUrl: src, secret: SECRET });
    const run = await server.service.enqueue({
      projectId: p.id,
      trigger: 'manual',
      branch: 'main',
      sha: head,
    });
    let status = 'queued';
    for (let i = 0; i < 600 && (status === 'queued' || status === 'running'); i++) {
      await new Promise((res) => setTimeout(res, 100));
      status = (await server.store.runs({ projectId: p.id }))[0]?.status ?? 'queued';
    }
    assert.equal(status, 'succeeded', `run ${run.id}`);
    git(src, 'fsck', '--full', '--strict');
    assert.equal(git(src, 'show', 'HEAD:berth.yml'), pipeline.trim());
  });

  test('polling a branch queues a run when its head moves, and only then', async () => {
    const p = await server.store.createProject({
      name: 'polled',
      repoUrl: repo,
      secret: SECRET,
      branch: 'main',
      pollSeconds: 5,
    });
    const t0 = Date.now();
    assert.equal(await server.service.pollOnce(t0), 1, 'an unseen head is built');
    assert.equal(await server.service.pollOnce(t0 + 10_000), 0, 'the same head is not built twice');
    writeFileSync(join(repo, 'message.txt'), 'second\n');
    git(repo, 'commit', '-q', '-am', 'second');
    const head = git(repo, 'rev-parse', 'HEAD');
    assert.equal(await server.service.pollOnce(t0 + 20_000), 1);
    const runs = await server.store.runs({ projectId: p.id });
    assert.deepEqual(runs.map((r) => [r.trigger, r.sha]).slice(0, 1), [['poll', head]]);
    for (
      let i = 0;
      i < 600 && (await server.store.runs({ projectId: p.id, status: ['queued', 'running'] })).length > 0;
      i++
    ) {
      await new Promise((res) => setTimeout(res, 100));
    }
  });
});
