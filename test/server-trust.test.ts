/**
 * A pushed berth.yml is whatever the pusher wrote (red-team pass 20). Through a real server, each
 * attack as a pipeline: naming the server's environment as secrets (its API token), a secret file
 * anywhere on the server, the host's Docker socket, another project's persistent tenant; and a
 * replayed webhook delivery. Checked on the engine and in the run's record, not only the status.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import type { ClientRequest } from 'node:http';
import { mkdirSync, readdirSync, symlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { containers, networks, volumes } from '../src/engine/index.js';
import { startServer } from '../src/server/index.js';
import type { ServerHandle } from '../src/server/index.js';
import { LABEL_TENANT } from '../src/common/index.js';
import { SESSION, engine, sessionLabels, tempDir } from './support/index.js';
import { apiClient, githubPush, makeRepo } from './support/server.js';

const SECRET = 'webhook-secret-p20';
const TOKEN = `api-token-p20-${SESSION}`;
/** A variable of the server's environment no project was granted. */
const UNGRANTED = 'BERTH_P20_UNGRANTED';
/** One a project was granted. */
const GRANTED = 'BERTH_P20_GRANTED';

describe('berth serve: a pushed pipeline gets only what its project was granted', () => {
  const c = engine();
  const dir = tempDir('berth-serve-trust-');
  let server: ServerHandle;
  let api: ReturnType<typeof apiClient>;
  const tenant = `env/p20-${SESSION.toLowerCase()}`;

  before(async () => {
    process.env[UNGRANTED] = `ungranted-value-${SESSION}`;
    process.env[GRANTED] = `granted-value-${SESSION}`;
    process.env.BERTH_TOKEN = TOKEN;
    server = await startServer({
      port: 0,
      dataDir: join(dir.path, 'data'),
      concurrency: 2,
      token: TOKEN,
      labels: sessionLabels(),
    });
    api = apiClient(server.url, TOKEN);
  });

  after(async () => {
    await server.close();
    // The kept tenants' objects (a deployment outlives its run on purpose).
    for (const t of [`project/p20a/${tenant}`, `project/p20b/${tenant}`]) {
      const filters = { label: [`${LABEL_TENANT}=${t}`] };
      for (const x of await containers(c).list({ all: true, filters }))
        await containers(c)
          .remove(x.Id, { force: true, volumes: true })
          .catch(() => false);
      for (const n of await networks(c).list(filters))
        await networks(c)
          .remove(n.Id)
          .catch(() => false);
      for (const v of await volumes(c).list(filters))
        await volumes(c)
          .remove(v.Name)
          .catch(() => false);
    }
    for (const k of [UNGRANTED, GRANTED, 'BERTH_TOKEN']) Reflect.deleteProperty(process.env, k);
    c.close();
    dir[Symbol.dispose]();
  });

  /** A project of this pipeline; a signed push of it; the settled run and its log text. */
  async function runOf(
    name: string,
    pipeline: string,
    grants?: { env?: string[]; docker?: string[] },
  ): Promise<{ status: string; error: string | null; log: string }> {
    const repo = join(dir.path, name);
    const sha = makeRepo(repo, { 'berth.yml': pipeline });
    const made = await api.call('POST', '/api/projects', { name, repoUrl: repo, secret: SECRET, grants });
    assert.equal(made.status, 201, JSON.stringify(made.json));
    const hook = githubPush(SECRET, repo, sha);
    const r = await fetch(`${server.url}/hooks/${name}`, {
      method: 'POST',
      headers: hook.headers,
      body: hook.body,
    });
    assert.equal(r.status, 201, await r.clone().text());
    const { id } = (await r.json()) as { id: string };
    const run = await api.settle<{ status: string; error: string | null }>(id);
    const logs = await api.call<{ text: string }[]>('GET', `/api/runs/${id}/logs`);
    return { status: run.status, error: run.error, log: logs.json.map((l) => l.text).join('\n') };
  }

  test("secrets: names of the server's environment find nothing unless granted (its API token least of all)", async () => {
    const pipeline = [
      'image: berth-local/busybox',
      'docker: none',
      `secrets: [BERTH_TOKEN, ${UNGRANTED}, ${GRANTED}]`,
      'jobs:',
      '  leak:',
      '    steps:',
      // Encoded, as an attacker would, so masking cannot hide it.
      `      - 'printf "token=%s\\n" "$(printf %s "$BERTH_TOKEN" | od -An -tx1 | tr -d " \\n")"'`,
      `      - 'printf "other=%s\\n" "$(printf %s "$${UNGRANTED}" | od -An -tx1 | tr -d " \\n")"'`,
      `      - 'test "$${GRANTED}" = "granted-value-${SESSION}" && echo granted-arrived'`,
      '',
    ].join('\n');
    const r = await runOf('p20env', pipeline, { env: [GRANTED] });
    assert.equal(r.status, 'succeeded', r.log);
    assert.match(r.log, /^token=$/m, 'the API token did not reach the job');
    assert.match(r.log, /^other=$/m, 'an ungranted variable did not reach the job');
    assert.match(r.log, /granted-arrived/);
    const hex = (s: string) => Buffer.from(s).toString('hex');
    assert.ok(!r.log.includes(hex(TOKEN)) && !r.log.includes(TOKEN));
    // The runner's own copy of the run (log files, artifacts) is gone: the store keeps the log.
    assert.deepEqual(readdirSync(join(dir.path, 'data', 'runner', 'runs')), []);
  });

  test('a berth.yml committed as a link is not followed', async () => {
    const repo = join(dir.path, 'p20link');
    mkdirSync(repo, { recursive: true });
    symlinkSync('/etc/hostname', join(repo, 'berth.yml'));
    const sha = makeRepo(repo, {});
    const made = await api.call('POST', '/api/projects', { name: 'p20link', repoUrl: repo, secret: SECRET });
    assert.equal(made.status, 201);
    const hook = githubPush(SECRET, repo, sha);
    const r = await fetch(`${server.url}/hooks/p20link`, {
      method: 'POST',
      headers: hook.headers,
      body: hook.body,
    });
    assert.equal(r.status, 201);
    const run = await api.settle<{ status: string; error: string | null }>(
      ((await r.json()) as { id: string }).id,
    );
    assert.equal(run.status, 'failed');
    assert.match(run.error ?? '', /berth\.yml is a symbolic link/);
  });

  test('a secret file is not read, wherever it points', async () => {
    const r = await runOf(
      'p20file',
      [
        'image: berth-local/busybox',
        'docker: none',
        'secrets: [{ name: S, file: /etc/hostname }]',
        'jobs:',
        '  leak:',
        '    steps: [\'echo "s=$S"\']',
        '',
      ].join('\n'),
    );
    assert.equal(r.status, 'failed');
    assert.match(
      r.error ?? '',
      /secret S: not read from \/etc\/hostname: a server run reads no file a pipeline names/,
    );
    assert.doesNotMatch(r.log, /^s=/m, 'no step ran');
  });

  test("docker: host (the host's socket) and dind are refused unless granted; nothing is started", async () => {
    for (const mode of ['host', 'dind']) {
      const name = `p20${mode}`;
      const r = await runOf(
        name,
        [
          'image: berth-local/busybox',
          'jobs:',
          '  escape:',
          `    docker: { mode: ${mode} }`,
          "    steps: ['echo escaped']",
          '',
        ].join('\n'),
      );
      assert.equal(r.status, 'failed', `${mode}: ${r.log}`);
      assert.match(r.error ?? '', new RegExp(`mode ${mode} is not granted to project ${name}`));
      assert.doesNotMatch(r.log, /^escaped$/m);
    }
  });

  test("another project's pipeline naming the same persistent tenant gets its own, and cannot reach the first one's deployment", async () => {
    const deploy = [
      'image: berth-local/tools',
      'jobs:',
      '  deploy:',
      `    docker: { mode: guard, tenant: ${tenant}, keep: true }`,
      '    steps:',
      `      - docker run -d --name p20app -e SECRET_OF_A=hunter2-${SESSION} --network none berth-local/busybox sleep 600`,
      '',
    ].join('\n');
    const a = await runOf('p20a', deploy);
    assert.equal(a.status, 'succeeded', a.log);
    const deployed = await containers(c).list({
      all: true,
      filters: { label: [`${LABEL_TENANT}=project/p20a/${tenant}`] },
    });
    assert.equal(deployed.length, 1, "A's deployment, in A's own tenant");
    const probe = [
      'image: berth-local/tools',
      'jobs:',
      '  probe:',
      `    docker: { mode: guard, tenant: ${tenant} }`,
      '    steps:',
      `      - 'echo "seen=$(docker ps -aq | wc -l)"'`,
      `      - 'docker inspect p20app || echo inspect-refused'`,
      `      - 'docker exec p20app true || echo exec-refused'`,
      '',
    ].join('\n');
    const b = await runOf('p20b', probe);
    assert.equal(b.status, 'succeeded', b.log);
    assert.match(b.log, /^seen=0$/m);
    assert.match(b.log, /inspect-refused/);
    assert.match(b.log, /exec-refused/);
    assert.ok(!b.log.includes(`hunter2-${SESSION}`));
    // B's job ended without keep: A's deployment is untouched.
    const still = await containers(c).inspect(deployed[0]?.Id ?? '');
    assert.equal(still.State.Running, true);
  });

  test('a webhook delivery is taken once: a replay of the same delivery queues nothing', async () => {
    const repo = join(dir.path, 'p20replay');
    const sha = makeRepo(repo, {
      'berth.yml': "image: berth-local/busybox\ndocker: none\njobs:\n  j:\n    steps: ['true']\n",
    });
    const made = await api.call('POST', '/api/projects', {
      name: 'p20replay',
      repoUrl: repo,
      secret: SECRET,
    });
    assert.equal(made.status, 201);
    const hook = githubPush(SECRET, repo, sha);
    const headers = { ...hook.headers, 'X-GitHub-Delivery': `d-${SESSION}` };
    const first = await fetch(`${server.url}/hooks/p20replay`, { method: 'POST', headers, body: hook.body });
    assert.equal(first.status, 201, await first.clone().text());
    const { id } = (await first.json()) as { id: string };
    for (let i = 0; i < 3; i++) {
      const again = await fetch(`${server.url}/hooks/p20replay`, {
        method: 'POST',
        headers,
        body: hook.body,
      });
      assert.equal(again.status, 409, await again.clone().text());
      assert.match(((await again.json()) as { message: string }).message, /this delivery was taken already/);
    }
    // The delivery header is not signed: the same signed body under another ID, or none, is the
    // same delivery.
    for (const h of [{ ...hook.headers, 'X-GitHub-Delivery': `other-${SESSION}` }, hook.headers]) {
      const again = await fetch(`${server.url}/hooks/p20replay`, {
        method: 'POST',
        headers: h,
        body: hook.body,
      });
      assert.equal(again.status, 409, await again.clone().text());
    }
    await api.settle(id);
    const runs = await api.call<unknown[]>('GET', '/api/projects/p20replay/runs');
    assert.equal(runs.json.length, 1);
  });
  test('the HTTP face: bodies checked before they are read, inputs validated, the token not taken from URLs, the page not framable', async () => {
    const made = await api.call('POST', '/api/projects', {
      name: 'p20http',
      repoUrl: join(dir.path, 'none'),
      secret: SECRET,
    });
    assert.equal(made.status, 201);
    // A declared body is not waited for where the answer needs none of it.
    const raw = (path: string, headers: Record<string, string>) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = request(`${server.url}${path}`, { method: 'POST', headers }, (res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d.toString()));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
        req.write('{'); // and never the rest
      });
    const big = { 'Content-Type': 'application/json', 'Content-Length': String(6 * 1024 * 1024) };
    // One sender holds at most four bodies in reading at once.
    const slow: ClientRequest[] = [];
    const hold = () => {
      const req = request(`${server.url}/hooks/p20http`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Content-Length': '100', 'X-GitHub-Event': 'push' },
      });
      req.on('error', () => undefined);
      req.write('{');
      slow.push(req);
    };
    for (let i = 0; i < 4; i++) hold();
    await new Promise((r) => setTimeout(r, 300));
    const fifth = await raw('/hooks/p20http', {
      'Content-Type': 'application/json',
      'Content-Length': '100',
      'X-GitHub-Event': 'push',
    });
    assert.equal(fifth.status, 503, fifth.body);
    for (const r of slow) r.destroy();
    assert.equal((await raw('/hooks/p20-nobody', big)).status, 404);
    assert.equal((await raw('/hooks/p20http', big)).status, 400, 'no forge header');
    assert.equal((await raw('/hooks/p20http', { ...big, 'X-GitHub-Event': 'push' })).status, 413);
    // Inputs.
    for (const q of ['limit=-1', 'limit=abc', 'limit=1.5'])
      assert.equal((await api.call('GET', `/api/runs?${q}`)).status, 400, q);
    assert.equal((await fetch(`${server.url}/api/%E0%A4%A`)).status, 400);
    // A target node passes on that is no URL (red-team pass 34: it was a 500).
    const target = await new Promise<string>((resolve, reject) => {
      const u = new URL(server.url);
      const s = connect(Number(u.port), u.hostname, () =>
        s.end('GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n'),
      );
      let out = '';
      s.on('data', (d: Buffer) => (out += d.toString()));
      s.on('end', () => resolve(out));
      s.on('error', reject);
    });
    assert.match(target, /^HTTP\/1\.1 400 /, target);
    for (const body of [{ sha: '--pathspec-from-file=/etc/shadow' }, { branch: '-x' }, { branch: 'a..b' }])
      assert.equal(
        (await api.call('POST', '/api/projects/p20http/runs', body)).status,
        400,
        JSON.stringify(body),
      );
    // The token in a URL: only for the event stream.
    assert.equal((await fetch(`${server.url}/api/runs?token=${TOKEN}`)).status, 401);
    const events = new AbortController();
    const stream = await fetch(`${server.url}/api/events?token=${TOKEN}`, { signal: events.signal });
    assert.equal(stream.status, 200);
    events.abort();
    // The dashboard: its own script only, never in a frame.
    const page = await fetch(`${server.url}/`);
    assert.equal(page.headers.get('x-frame-options'), 'DENY');
    assert.match(
      page.headers.get('content-security-policy') ?? '',
      /frame-ancestors 'none'.*|script-src 'sha256-/,
    );
    assert.match(page.headers.get('content-security-policy') ?? '', /script-src 'sha256-[A-Za-z0-9+/=]+'/);
    await page.text();
  });
  test("leftovers of a dead runner with the server's labels are reaped while it runs, not only at its start", async () => {
    const mark = { 'io.berth.test-p20reap': SESSION };
    const reaping = await startServer({
      port: 0,
      dataDir: join(dir.path, 'reaping'),
      concurrency: 1,
      token: TOKEN,
      labels: sessionLabels(mark),
      reapSeconds: 1,
    });
    try {
      // A job container whose runner (a server that died) is gone: its pid is no process.
      const { Id } = await containers(c).create({
        Image: 'berth-local/busybox',
        Cmd: ['true'],
        Labels: sessionLabels({
          ...mark,
          'io.berth.run': `r-p20-${SESSION.toLowerCase()}`,
          'io.berth.owner.host': hostname(),
          'io.berth.owner.pid': '999999999',
        }),
        HostConfig: { NetworkMode: 'none' },
      });
      let left = true;
      for (let i = 0; i < 100 && left; i++) {
        await new Promise((r) => setTimeout(r, 100));
        left = (await containers(c).list({ all: true, filters: { id: [Id] } })).length > 0;
      }
      assert.equal(left, false, 'the leftover went');
    } finally {
      await reaping.close();
    }
  });
});
