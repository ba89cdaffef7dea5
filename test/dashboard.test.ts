/**
 * The dashboard in a real browser (Debian's Chromium driven by Playwright): a webhook starts a run,
 * its logs stream into the page as they are written, the Cancel button stops it, and after a
 * server restart the history is still there.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import type { Browser } from 'playwright-core';
import { startServer } from '../src/server/index.js';
import type { ServerHandle } from '../src/server/index.js';
import { sessionLabels, tempDir } from './support/index.js';
import { apiClient, git, makeRepo } from './support/server.js';

const CHROMIUM = '/usr/bin/chromium';
const SECRET = 'dashboard-secret-1';
const TOKEN = 'dash-token-1';

describe(
  'dashboard in Chromium',
  { skip: !existsSync(CHROMIUM) && 'chromium is not installed (apt-get install chromium)' },
  () => {
    const dir = tempDir('berth-dash-');
    const repo = join(dir.path, 'repo');
    const data = join(dir.path, 'data');
    let server: ServerHandle;
    let browser: Browser;
    let sha = '';

    let port = 0;
    const boot = async () => {
      const s = await startServer({
        port,
        dataDir: data,
        concurrency: 1,
        token: TOKEN,
        labels: sessionLabels(),
      });
      port = Number(new URL(s.url).port); // a restarted server keeps the origin (and the page's token)
      return s;
    };

    before(async () => {
      mkdirSync(repo, { recursive: true });
      git(repo, 'init', '-q', '-b', 'main');
      writeFileSync(
        join(repo, 'berth.yml'),
        [
          'image: berth-local/busybox',
          'docker: none',
          'jobs:',
          '  slow:',
          '    steps:',
          '      - for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do echo "line $i"; sleep 0.5; done',
          '',
        ].join('\n'),
      );
      git(repo, 'add', '.');
      git(repo, 'commit', '-q', '-m', 'slow pipeline');
      sha = git(repo, 'rev-parse', 'HEAD');
      server = await boot();
      await server.store.createProject({ name: 'slow', repoUrl: repo, secret: SECRET });
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: [
          '--no-sandbox',
          '--disable-gpu',
          '--disable-quic',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
        ],
      });
    });

    after(async () => {
      await browser.close();
      await server.close();
      dir[Symbol.dispose]();
    });

    test('webhook → live logs in the page → cancel → history survives a restart', async () => {
      const body = JSON.stringify({ ref: 'refs/heads/main', after: sha, repository: { clone_url: repo } });
      const res = await fetch(`${server.url}/hooks/slow`, {
        method: 'POST',
        headers: {
          'Content-Type': 'application/json',
          'X-Gitea-Event': 'push',
          'X-Gitea-Signature': createHmac('sha256', SECRET).update(body).digest('hex'),
        },
        body,
      });
      assert.equal(res.status, 201);
      const run = (await res.json()) as { id: string };
      const page = await browser.newPage();
      await page.goto(server.url);
      await page.evaluate((t) => localStorage.setItem('berth.token', t), TOKEN);
      await page.goto(`${server.url}/runs/${run.id}`);
      // Logs arrive while the job runs.
      await page.waitForFunction(
        () => /line 3/.test(document.querySelector('#log')?.textContent ?? ''),
        null,
        { timeout: 60_000 },
      );
      const seenEarly = (await page.textContent('#log')) ?? '';
      assert.doesNotMatch(seenEarly, /line 20/, 'the page shows logs before the job is over');
      await page.screenshot({ path: join(dir.path, 'run.png') });
      await page.click('#cancel');
      await page.waitForFunction(
        () => /cancelled/.test(document.querySelector('h2')?.textContent ?? ''),
        null,
        { timeout: 60_000 },
      );
      // Restart the server on the same data: the run is still in the history.
      await server.close();
      server = await boot();
      await page.goto(server.url);
      await page.waitForSelector('#runs');
      const table = (await page.textContent('#runs')) ?? '';
      assert.match(table, new RegExp(run.id));
      assert.match(table, /cancelled/);
      await page.close();
    });

    test('the run page draws the job DAG and the busy job’s CPU and memory samples', async () => {
      const graph = join(dir.path, 'graph');
      const graphSha = makeRepo(graph, {
        'berth.yml': [
          'image: berth-local/busybox',
          'docker: none',
          'jobs:',
          '  a: { steps: ["echo a"] }',
          '  b: { needs: [a], steps: ["echo b > b.txt"], artifacts: [b.txt] }',
          '  c: { needs: [a], steps: ["echo c"] }',
          '  d:',
          '    needs: [b, c]',
          '    steps:',
          '      - for k in 1 2 3; do head -c 30000000 /dev/urandom | od -An -x | sort > /dev/null; done; echo d-done',
          '',
        ].join('\n'),
      });
      await server.store.createProject({ name: 'graph', repoUrl: graph, secret: SECRET });
      const api = apiClient(server.url, TOKEN);
      const run = (await api.call<{ id: string }>('POST', '/api/projects/graph/runs', { sha: graphSha }))
        .json;
      const page = await browser.newPage();
      await page.goto(server.url);
      await page.evaluate((t) => localStorage.setItem('berth.token', t), TOKEN);
      await page.goto(`${server.url}/runs/${run.id}`);
      // The graph is there from the start (jobs queued), then follows the run to the end.
      await page.waitForFunction(() => document.querySelectorAll('#dag g.node').length === 4, null, {
        timeout: 60_000,
      });
      await page.waitForFunction(
        () => /succeeded/.test(document.querySelector('h2')?.textContent ?? ''),
        null,
        { timeout: 120_000 },
      );
      const nodes = await page.$$eval('#dag g.node', (els) =>
        els.map((e) => ({
          job: e.getAttribute('data-job'),
          status: e.getAttribute('data-status'),
          x: Number(/translate\(([\d.]+),/.exec(e.getAttribute('transform') ?? '')?.[1]),
        })),
      );
      const x: Record<string, number> = Object.fromEntries(nodes.map((n) => [n.job ?? '', n.x]));
      assert.deepEqual(
        nodes.map((n) => n.status),
        ['passed', 'passed', 'passed', 'passed'],
      );
      assert.ok((x.a ?? 0) < (x.b ?? 0) && x.b === x.c && (x.c ?? 0) < (x.d ?? 0), JSON.stringify(x));
      const edges = await page.$$eval('#dag path.edge', (els) =>
        els.map((e) => `${e.getAttribute('data-from')}>${e.getAttribute('data-to')}`).sort(),
      );
      assert.deepEqual(edges, ['a>b', 'a>c', 'b>d', 'c>d']);
      // Select d: its steps and its resource chart, one point per sample.
      await page.click('#dag g.node[data-job="d"]');
      const samples = (await api.call<unknown[]>('GET', `/api/runs/${run.id}/samples?job=d`)).json;
      assert.ok(samples.length >= 2, `${samples.length} samples`);
      await page.waitForFunction(() => document.querySelectorAll('#chart polyline').length === 2, null, {
        timeout: 30_000,
      });
      const points = await page.$$eval('#chart polyline', (els) =>
        els.map((e) => (e.getAttribute('points') ?? '').trim().split(/\s+/).length),
      );
      assert.deepEqual(points, [samples.length, samples.length]);
      assert.match((await page.textContent('#steps')) ?? '', /passed/);
      // b's artifact: listed on the finished run's page, downloaded with the token; the server's
      // line saying what it kept is in the log shown (written after the last log event).
      const link = await page.waitForSelector('#artifacts a', { timeout: 30_000 });
      assert.equal(await link.textContent(), 'b.txt');
      const [download] = await Promise.all([page.waitForEvent('download'), link.click()]);
      assert.equal(download.suggestedFilename(), 'b.txt');
      assert.equal(readFileSync(await download.path(), 'utf8'), 'b\n');
      assert.match((await page.textContent('#log')) ?? '', /artifacts: 1 file\(s\)/);
      await page.screenshot({ path: join(dir.path, 'dag.png'), fullPage: true });
      await page.close();
    });
  },
);
