/**
 * The done-when for berth serve: a push webhook with a valid signature to a running server
 * produces a run that builds the example app (examples/webapp: build → test → push → probe →
 * deploy → tidy) and shows live in the dashboard (Debian's Chromium via Playwright).
 *
 * The repository is a copy of examples/webapp whose production container gets a test-only name;
 * its registry is started by examples/setup.sh on a free loopback port, for this file alone (a
 * shared one could be stopped, or its tags tidied, by another file running at the same time).
 * Everything the run deployed or tagged is removed afterwards.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import type { Browser } from 'playwright-core';
import { containers, images, networks } from '../src/engine/index.js';
import { tenantNetworkName } from '../src/guard/index.js';
import { startServer } from '../src/server/index.js';
import type { ServerHandle } from '../src/server/index.js';
import { ROOT, engine, sessionLabels, tempDir, uniqueName } from './support/index.js';
import { startExampleRegistry } from './support/registry.js';
import type { TestRegistry } from './support/registry.js';
import { apiClient, githubPush, makeRepo } from './support/server.js';

const CHROMIUM = '/usr/bin/chromium';
const SECRET = 'example-secret-1';
const TOKEN = 'example-token-1';
// A server run's persistent tenant is its project's own (see confine in src/server/service.ts).
const PROD_NET = tenantNetworkName('project/webapp/env/production');

describe(
  'berth serve builds the example app from a webhook, live in the dashboard',
  { skip: !existsSync(CHROMIUM) && 'chromium is not installed (apt-get install chromium)' },
  () => {
    const dir = tempDir('berth-serve-example-');
    const regState = tempDir('berth-serve-example-registry-');
    const c = engine();
    const deployName = uniqueName('webapp-prod');
    const repo = join(dir.path, 'repo');
    let server: ServerHandle;
    let browser: Browser;
    let registry: TestRegistry | undefined;
    let appRepo = '';
    let prodNetBefore = false;
    let sha = '';

    // The registry is this file's own, so every tag of its repository is this file's too.
    const appTags = async () =>
      (await images(c).list()).flatMap((i) => i.RepoTags ?? []).filter((t) => t.startsWith(`${appRepo}:`));

    before(async () => {
      registry = await startExampleRegistry(regState.path, ROOT);
      appRepo = `${registry.addr}/berth-example/webapp`;
      prodNetBefore = (await networks(c).list({ name: [PROD_NET] })).some((n) => n.Name === PROD_NET);
      const pipeline = readFileSync(join(ROOT, 'examples/webapp/berth.yml'), 'utf8');
      assert.match(pipeline, /DEPLOY_NAME: webapp-production/);
      assert.match(pipeline, /REGISTRY: 127\.0\.0\.1:5000/);
      sha = makeRepo(
        repo,
        {
          'berth.yml': pipeline
            .replace('DEPLOY_NAME: webapp-production', `DEPLOY_NAME: ${deployName}`)
            .replace('REGISTRY: 127.0.0.1:5000', `REGISTRY: ${registry.addr}`),
        },
        join(ROOT, 'examples/webapp'),
      );
      server = await startServer({
        port: 0,
        dataDir: join(dir.path, 'data'),
        concurrency: 1,
        token: TOKEN,
        labels: sessionLabels(),
      });
      await server.store.createProject({ name: 'webapp', repoUrl: repo, secret: SECRET });
      browser = await chromium.launch({
        executablePath: CHROMIUM,
        args: [
          '--no-sandbox',
          '--disable-gpu',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-sync',
        ],
      });
    });

    after(async () => {
      await browser.close().catch(() => undefined);
      await server.close();
      await containers(c).remove(deployName, { force: true });
      if (appRepo)
        for (const t of await appTags())
          await images(c)
            .remove(t, true)
            .catch(() => false);
      if (!prodNetBefore)
        await networks(c)
          .remove(PROD_NET)
          .catch(() => false);
      await registry?.close();
      c.close();
      regState[Symbol.dispose]();
      dir[Symbol.dispose]();
    });

    test('signed push → run of the pushed commit → every job passes, followed live in the page', async () => {
      const hook = githubPush(SECRET, repo, sha);
      const res = await fetch(`${server.url}/hooks/webapp`, {
        method: 'POST',
        headers: hook.headers,
        body: hook.body,
      });
      assert.equal(res.status, 201, await res.clone().text());
      const queued = (await res.json()) as { id: string; sha: string };
      assert.equal(queued.sha, sha);

      const page = await browser.newPage();
      await page.goto(server.url);
      await page.evaluate((t) => localStorage.setItem('berth.token', t), TOKEN);
      await page.goto(`${server.url}/runs/${queued.id}`);
      // Live: the build's output shows in the page while the run is still going.
      await page.waitForFunction(
        () =>
          /\[build\]/.test(document.querySelector('#log')?.textContent ?? '') &&
          /running/.test(document.querySelector('h2')?.textContent ?? ''),
        null,
        { timeout: 120_000 },
      );
      await page.waitForFunction(
        () => /succeeded|failed|cancelled/.test(document.querySelector('h2')?.textContent ?? ''),
        null,
        { timeout: 300_000 },
      );
      const api = apiClient(server.url, TOKEN);
      const done = (
        await api.call<{ status: string; jobs: { name: string; status: string }[] }>(
          'GET',
          `/api/runs/${queued.id}`,
        )
      ).json;
      const logs = (
        await api.call<{ job: string; text: string }[]>('GET', `/api/runs/${queued.id}/logs?limit=100000`)
      ).json;
      assert.equal(
        done.status,
        'succeeded',
        logs
          .slice(-40)
          .map((l) => `[${l.job}] ${l.text}`)
          .join('\n'),
      );
      const statuses = Object.fromEntries(done.jobs.map((j) => [j.name, j.status]));
      assert.deepEqual(statuses, {
        build: 'passed',
        test: 'passed',
        push: 'passed',
        probe: 'passed',
        deploy: 'passed',
        tidy: 'passed',
      });
      const text = logs.map((l) => l.text).join('\n');
      assert.match(text, /PASS: 6 checks/);
      assert.match(text, /deployed \S+: healthy/);
      // The page shows the finished graph and the logs of the deploy.
      const nodes = await page.$$eval('#dag g.node', (els) => els.map((e) => e.getAttribute('data-status')));
      assert.deepEqual(nodes, ['passed', 'passed', 'passed', 'passed', 'passed', 'passed']);
      assert.match((await page.textContent('#log')) ?? '', /deployed \S+: healthy/);
      const deployed = await containers(c).inspect(deployName);
      assert.ok(deployed.State.Running, 'the app runs under its test-only production name');
      await page.close();
    });
  },
);
