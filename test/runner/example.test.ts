/**
 * The example that proves it: examples/webapp builds, tests, pushes, probes and (re)deploys its app.
 * Uses the local registry on 127.0.0.1:5000 (started by examples/setup.sh if none answers, and then
 * stopped again) and a test-only production container name.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { LABEL_TENANT } from '../../src/common/index.js';
import { containers, images, networks } from '../../src/engine/index.js';
import { hasDockerAccess } from '../../src/runner/index.js';
import { ROOT, engine, run, tempDir, uniqueName } from '../support/index.js';
import { jobStatus, leftovers, logLines, removeRun, runJson } from './helpers.js';

const FILE = join(ROOT, 'examples/webapp/berth.yml');

function skipReason(mode: 'guard' | 'dind'): string | false {
  if (!hasDockerAccess(mode)) return `docker mode ${mode} is not available (src/${mode} has not landed)`;
  return false;
}

async function registryAnswers(): Promise<boolean> {
  try {
    const res = await fetch('http://127.0.0.1:5000/v2/', { signal: AbortSignal.timeout(2000) });
    return res.ok;
  } catch {
    return false;
  }
}

for (const mode of ['guard', 'dind'] as const) {
  test(
    `examples/webapp passes end to end in ${mode} mode, and a second run replaces the deployed app`,
    {
      skip: skipReason(mode),
    },
    async () => {
      using store = tempDir('berth-example-store-');
      using regState = tempDir('berth-example-registry-');
      const startedRegistry = !(await registryAnswers());
      // The production tenant's network outlives runs; if this test is what made it, it goes too.
      const prodNet = 'berth-env-production';
      const prodNetBefore = await (async () => {
        using c = engine();
        return (await networks(c).list({ name: [prodNet] })).some((n) => n.Name === prodNet);
      })();
      if (startedRegistry) {
        const s = await run('sh', [join(ROOT, 'examples/setup.sh')], {
          env: { BERTH_EXAMPLE_STATE: regState.path, BERTH_TEST_SESSION: '' },
        });
        assert.equal(s.code, 0, s.stderr);
      }
      const deployName = uniqueName('webapp-prod');
      const args = [
        '--docker',
        mode,
        '--registry',
        '127.0.0.1:5000',
        '--var',
        `DEPLOY_NAME=${deployName}`,
        '--store',
        store.path,
      ];
      const runIds: string[] = [];
      try {
        const first = await runJson(FILE, args);
        runIds.push(first.runId);
        assert.equal(first.code, 0, first.stdout.slice(-4000) + first.stderr);
        for (const j of ['build', 'test', 'push', 'probe', 'deploy', 'tidy'])
          assert.equal(jobStatus(first.events, j), 'passed', j);
        assert.ok(logLines(first.events, 'test').includes('PASS: 6 checks'));
        assert.ok(logLines(first.events, 'deploy').includes('running before: none'));
        const second = await runJson(FILE, args);
        runIds.push(second.runId);
        assert.equal(second.code, 0, second.stdout.slice(-4000) + second.stderr);
        const before = logLines(second.events, 'deploy').find((l) => l.startsWith('running before:'));
        assert.equal(before, `running before: 127.0.0.1:5000/berth-example/webapp:${first.runId}`);
        using c = engine();
        const deployed = await containers(c).inspect(deployName);
        assert.equal(deployed.Config.Image, `127.0.0.1:5000/berth-example/webapp:${second.runId}`);
        assert.equal(deployed.Config.Labels?.[LABEL_TENANT], 'env/production');
        for (const id of runIds)
          assert.deepEqual(await leftovers(id), [], 'only the production tenant outlives the runs');
      } finally {
        using c = engine();
        await containers(c).remove(deployName, { force: true });
        if (!prodNetBefore)
          await networks(c)
            .remove(prodNet)
            .catch(() => false);
        for (const id of runIds) {
          await removeRun(id);
          await images(c).remove(`127.0.0.1:5000/berth-example/webapp:${id}`, true);
        }
        if (startedRegistry)
          await run('sh', [join(ROOT, 'examples/setup.sh'), 'stop'], {
            env: { BERTH_EXAMPLE_STATE: regState.path },
          });
      }
    },
  );
}
