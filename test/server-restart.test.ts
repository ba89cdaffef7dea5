/**
 * Killing the server (kill -9) mid-run and starting it again loses no run record and leaves no
 * container behind: the run becomes "interrupted" and its job container is reaped.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { containers } from '../src/engine/index.js';
import { BERTH_CMD, berth, engine, start, tempDir } from './support/index.js';
import { git } from './support/server.js';

const SECRET = 'restart-secret-1';

function serve(data: string, port: number): Promise<{ child: ChildProcess; url: string }> {
  const [node = process.execPath, ...pre] = BERTH_CMD;
  const child = start(node, [...pre, 'serve', '--port', String(port), '--data', data, '--token', 't0ken']);
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (b: Buffer) => {
      out += b.toString();
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m?.[1]) resolve({ child, url: m[1] });
    });
    child.on('exit', (code) => reject(new Error(`berth serve exited ${code}`)));
  });
}

test('kill -9 of the server, then a restart: the run is interrupted, its container reaped', async () => {
  using dir = tempDir('berth-restart-');
  using c = engine();
  const repo = join(dir.path, 'repo');
  const data = join(dir.path, 'data');
  mkdirSync(repo, { recursive: true });
  git(repo, 'init', '-q', '-b', 'main');
  writeFileSync(
    join(repo, 'berth.yml'),
    'image: berth-local/busybox\ndocker: none\njobs:\n  long:\n    steps:\n      - sleep 300\n',
  );
  git(repo, 'add', '.');
  git(repo, 'commit', '-q', '-m', 'long');
  const sha = git(repo, 'rev-parse', 'HEAD');
  const add = await berth(['project', 'add', 'long', '--repo', repo, '--secret', SECRET, '--data', data]);
  assert.equal(add.code, 0, add.stderr);
  // Grants from the CLI: set, shown, refused when unknown, and replaced (none: nothing granted).
  const grant = await berth([
    'project',
    'grant',
    'long',
    '--pass-env',
    'A_KEY',
    '--allow-docker',
    'dind',
    '--data',
    data,
  ]);
  assert.equal(grant.code, 0, grant.stderr);
  assert.match(
    (await berth(['project', 'ls', '--data', data])).stdout,
    /long\t.*\tenv: A_KEY; docker: guard,none,dind/,
  );
  const bad = await berth(['project', 'grant', 'long', '--allow-docker', 'privileged', '--data', data]);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /grants\.docker must be a list of: dind, host/);
  assert.equal((await berth(['project', 'grant', 'long', '--data', data])).code, 0);
  assert.match(
    (await berth(['project', 'ls', '--data', data])).stdout,
    /long\t.*\tenv: -; docker: guard,none\n/,
  );
  const port = 20000 + Math.floor(Math.random() * 20000);
  let { child, url } = await serve(data, port);
  try {
    const body = JSON.stringify({ ref: 'refs/heads/main', after: sha, repository: {} });
    const r = await fetch(`${url}/hooks/long`, {
      method: 'POST',
      headers: {
        'X-GitHub-Event': 'push',
        'X-Hub-Signature-256': `sha256=${createHmac('sha256', SECRET).update(body).digest('hex')}`,
      },
      body,
    });
    assert.equal(r.status, 201);
    const run = (await r.json()) as { id: string };
    const ownedByServer = async () =>
      (await containers(c).list({ filters: { label: [`io.berth.owner.pid=${child.pid ?? 0}`] } })).map(
        (x) => x.Id,
      );
    let ids: string[] = [];
    for (let i = 0; i < 300 && ids.length === 0; i++) {
      await new Promise((res) => setTimeout(res, 100));
      ids = await ownedByServer();
    }
    assert.ok(ids.length > 0, 'the run started a job container');
    const died = new Promise((res) => child.once('exit', res));
    child.kill('SIGKILL');
    await died;
    assert.ok(
      (await containers(c).find(ids[0]!)) !== undefined,
      'kill -9 left the container behind (for the restart to reap)',
    );
    const entries = (p: string) => (existsSync(p) ? readdirSync(p) : []);
    assert.equal(entries(join(data, 'workspaces')).length, 1, 'kill -9 left the run workspace');
    assert.equal(entries(join(data, 'runner', 'runs')).length, 1, "kill -9 left the runner's copy");
    ({ child, url } = await serve(data, port));
    // The interrupted run's workspace and the runner's copy of it went at the restart.
    assert.deepEqual(entries(join(data, 'workspaces')), []);
    assert.deepEqual(entries(join(data, 'runner', 'runs')), []);
    const got = (await (
      await fetch(`${url}/api/runs/${run.id}`, { headers: { Authorization: 'Bearer t0ken' } })
    ).json()) as { status: string };
    assert.equal(got.status, 'interrupted');
    for (const id of ids) assert.equal(await containers(c).find(id), undefined, `container ${id} was reaped`);
  } finally {
    const exited = new Promise((res) => child.once('exit', res));
    child.kill('SIGTERM');
    await exited;
  }
});
