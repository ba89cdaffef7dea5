/**
 * The example that proves it: examples/webapp builds, tests, pushes, probes and (re)deploys its app.
 * Uses a registry started by examples/setup.sh on a free loopback port (stopped again at the end)
 * and a test-only production container name.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { LABEL_TENANT } from '../../src/common/index.js';
import { containers, images, networks } from '../../src/engine/index.js';
import { tenantNetworkName } from '../../src/guard/index.js';
import { hasDockerAccess } from '../../src/runner/index.js';
import { ROOT, engine, tempDir, uniqueName } from '../support/index.js';
import { startExampleRegistry } from '../support/registry.js';
import { jobStatus, leftovers, logLines, removeRun, runJson } from './helpers.js';

const FILE = join(ROOT, 'examples/webapp/berth.yml');

function skipReason(mode: 'guard' | 'dind'): string | false {
  if (!hasDockerAccess(mode)) return `docker mode ${mode} is not available (src/${mode} has not landed)`;
  return false;
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
      // The production tenant's network outlives runs; if this test is what made it, it goes too.
      const prodNet = tenantNetworkName('env/production');
      const prodNetBefore = await (async () => {
        using c = engine();
        return (await networks(c).list({ name: [prodNet] })).some((n) => n.Name === prodNet);
      })();
      await using registry = await startExampleRegistry(regState.path, ROOT);
      const appRepo = `${registry.addr}/berth-example/webapp`;
      const deployName = uniqueName('webapp-prod');
      const args = [
        '--docker',
        mode,
        '--registry',
        registry.addr,
        '--var',
        `REGISTRY=${registry.addr}`,
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
        assert.equal(before, `running before: ${appRepo}:${first.runId}`);
        using c = engine();
        const deployed = await containers(c).inspect(deployName);
        assert.equal(deployed.Config.Image, `${appRepo}:${second.runId}`);
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
          await images(c).remove(`${appRepo}:${id}`, true);
        }
      }
    },
  );
}
