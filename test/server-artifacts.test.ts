/**
 * berth serve keeps its runs' artifacts: a job's `artifacts` are listed and downloaded through the
 * API (as downloads, never as pages a browser would render), a path cannot leave the run's
 * artifacts, and a project keeps only its newest runs' artifacts.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { startServer } from '../src/server/index.js';
import type { ServerHandle } from '../src/server/index.js';
import { sessionLabels, tempDir } from './support/index.js';
import { apiClient, makeRepo } from './support/server.js';

const TOKEN = 'artifacts-token';
const PAGE = '<html><script>document.title = "ran"</script></html>';

describe('berth serve: artifacts', () => {
  const dir = tempDir('berth-serve-artifacts-');
  const data = join(dir.path, 'data');
  let server: ServerHandle;
  let api: ReturnType<typeof apiClient>;

  before(async () => {
    makeRepo(join(dir.path, 'repo'), {
      'berth.yml': [
        'image: berth-local/busybox',
        'docker: none',
        'jobs:',
        '  build:',
        '    steps:',
        '      - mkdir -p out/sub',
        `      - printf '%s' '${PAGE}' > out/report.html`,
        '      - printf "run %s\\n" "$BERTH_RUN_ID" > out/sub/run.txt',
        '      - ln -s /etc/hostname out/host-name',
        '    artifacts: [out/]',
        '  quiet:',
        '    steps: [echo no artifacts]',
        '',
      ].join('\n'),
    });
    server = await startServer({
      port: 0,
      dataDir: data,
      concurrency: 1,
      token: TOKEN,
      labels: sessionLabels(),
      artifacts: { keepRuns: 2 },
    });
    api = apiClient(server.url, TOKEN);
    const p = await api.call('POST', '/api/projects', {
      name: 'arts',
      repoUrl: join(dir.path, 'repo'),
      secret: 'artifacts-secret',
    });
    assert.equal(p.status, 201);
  });

  after(async () => {
    await server.close();
    dir[Symbol.dispose]();
  });

  const runOnce = async (): Promise<string> => {
    const r = await api.call<{ id: string }>('POST', '/api/projects/arts/runs', {});
    assert.equal(r.status, 201);
    const done = await api.settle<{ status: string }>(r.json.id);
    assert.equal(done.status, 'succeeded');
    return r.json.id;
  };
  const listOf = async (id: string) =>
    (await api.call<{ job: string; path: string; size: number }[]>('GET', `/api/runs/${id}/artifacts`)).json;
  const get = (path: string, token = TOKEN) =>
    fetch(`${server.url}${path}`, { headers: { Authorization: `Bearer ${token}` } });

  let first = '';

  test('the data folder and the store (webhook secrets) are the server user’s only (red-team pass 29)', () => {
    assert.equal(statSync(data).mode & 0o777, 0o700);
    assert.equal(statSync(join(data, 'server.db')).mode & 0o777, 0o600);
  });

  test("a run's artifacts are listed and downloaded, links left out", async () => {
    first = await runOnce();
    const listed = await listOf(first);
    assert.deepEqual(
      listed.map((a) => [a.job, a.path]),
      [
        ['build', 'out/report.html'],
        ['build', 'out/sub/run.txt'],
      ],
    );
    assert.equal(listed[0]?.size, Buffer.byteLength(PAGE));
    const page = await get(`/api/runs/${first}/artifacts/build/out/report.html`);
    assert.equal(page.status, 200);
    assert.equal(await page.text(), PAGE);
    // A job's HTML is a download, not a page of the server's origin.
    assert.equal(page.headers.get('content-type'), 'application/octet-stream');
    assert.match(page.headers.get('content-disposition') ?? '', /^attachment; filename="report.html"/);
    assert.equal(page.headers.get('x-content-type-options'), 'nosniff');
    assert.match(page.headers.get('content-security-policy') ?? '', /sandbox/);
    const run = await get(`/api/runs/${first}/artifacts/build/out/sub/run.txt`);
    const runText = await run.text();
    assert.match(runText, /^run \S+\n$/);
    assert.equal(listed[1]?.size, Buffer.byteLength(runText));
    // The runner's own copy is gone; the server's is under its data folder.
    assert.ok(existsSync(join(data, 'artifacts', first, 'build', 'out', 'report.html')));
    const logs = (await api.call<{ text: string }[]>('GET', `/api/runs/${first}/logs?limit=10000`)).json;
    assert.ok(
      logs.some((l) => /^artifacts: 2 file\(s\)/.test(l.text)),
      logs.map((l) => l.text).join('\n'),
    );
  });

  test('paths out of the artifacts, links, and requests without the token answer no file', async () => {
    const base = `/api/runs/${first}/artifacts`;
    for (const path of [
      `${base}/build/out/host-name`,
      `${base}/build/out`,
      `${base}/build/..%2F..%2F..%2Fserver.db`,
      `${base}/build/%2e%2e/%2e%2e/%2e%2e/server.db`,
      `${base}/..%2F..%2Fserver.db/x`,
      `${base}/quiet/x`,
      `/api/runs/r_nosuchrun/artifacts/build/out/report.html`,
    ]) {
      const r = await get(path);
      assert.equal(r.status, 404, path);
      const body = (await r.json()) as { message?: string };
      assert.equal(typeof body.message, 'string', path);
    }
    const anon = await get(`${base}/build/out/report.html`, 'wrong');
    assert.equal(anon.status, 401);
    await anon.body?.cancel();
  });

  test('a file and a folder of one name from two artifact paths fail that artifact, not the server (red-team pass 27)', async () => {
    makeRepo(join(dir.path, 'clash'), {
      'berth.yml': [
        'image: berth-local/busybox',
        'docker: none',
        'jobs:',
        '  clash:',
        '    steps:',
        '      - echo hi > a',
        '      - mkdir -p /tmp/x/a && echo z > /tmp/x/a/b',
        '    artifacts: [a, /tmp/x/a]',
        '',
      ].join('\n'),
    });
    assert.equal(
      (
        await api.call('POST', '/api/projects', {
          name: 'clash',
          repoUrl: join(dir.path, 'clash'),
          secret: 'artifacts-secret',
        })
      ).status,
      201,
    );
    const r = await api.call<{ id: string }>('POST', '/api/projects/clash/runs', {});
    const done = await api.settle<{ status: string }>(r.json.id);
    assert.equal(done.status, 'succeeded');
    assert.deepEqual(
      (await listOf(r.json.id)).map((a) => a.path),
      ['a'],
    );
    const logs = (await api.call<{ text: string }[]>('GET', `/api/runs/${r.json.id}/logs?limit=10000`)).json;
    assert.ok(
      logs.some((l) => /artifact \/tmp\/x\/a: .*(ENOTDIR|EEXIST|not a directory)/i.test(l.text)),
      logs.map((l) => l.text).join('\n'),
    );
  });

  test("a project keeps its newest runs' artifacts only", async () => {
    const second = await runOnce();
    const third = await runOnce();
    assert.deepEqual(await listOf(first), []);
    assert.equal(existsSync(join(data, 'artifacts', first)), false);
    assert.equal((await listOf(second)).length, 2);
    assert.equal((await listOf(third)).length, 2);
  });
});

test('berth serve: the runner saves no more artifacts than the server keeps of a run, empty ones included', async () => {
  const dir = tempDir('berth-serve-budget-');
  makeRepo(join(dir.path, 'repo'), {
    'berth.yml': [
      'image: berth-local/busybox',
      'docker: none',
      'jobs:',
      '  big:',
      '    steps:',
      '      - head -c 300000 /dev/zero > big.bin',
      "      - 'mkdir -p many && for i in $(seq 1 100); do touch many/f$i; done'",
      '    artifacts: [many, big.bin]',
      '',
    ].join('\n'),
  });
  const server = await startServer({
    port: 0,
    dataDir: join(dir.path, 'data'),
    concurrency: 1,
    token: TOKEN,
    labels: sessionLabels(),
    artifacts: { keepRuns: 2, maxRunBytes: 64 * 1024 },
  });
  try {
    const api = apiClient(server.url, TOKEN);
    await api.call('POST', '/api/projects', {
      name: 'budget',
      repoUrl: join(dir.path, 'repo'),
      secret: 'artifacts-secret',
    });
    const r = await api.call<{ id: string }>('POST', '/api/projects/budget/runs', {});
    const settled = await api.settle<{ status: string; error?: string }>(r.json.id);
    assert.equal(settled.status, 'succeeded', JSON.stringify(settled));
    const kept = (await api.call<{ path: string }[]>('GET', `/api/runs/${r.json.id}/artifacts`)).json;
    // A block (4 KiB) for each file and folder, empty ones too: of the 64 KiB, the runner saved the
    // folder and 15 empty files, then stopped (big.bin is past the budget); the server kept 14 of
    // them (its job folder and the folder count too).
    assert.ok(!kept.some((a) => a.path === 'big.bin'));
    assert.ok(kept.length > 0 && kept.length < 16, `${kept.length} kept`);
    const logs = (await api.call<{ text: string }[]>('GET', `/api/runs/${r.json.id}/logs?limit=10000`)).json;
    assert.ok(
      logs.some((l) => /over the run's budget/.test(l.text)),
      logs.map((l) => l.text).join('\n'),
    );
  } finally {
    await server.close();
    dir[Symbol.dispose]();
  }
});
