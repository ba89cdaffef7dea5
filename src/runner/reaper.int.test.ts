/**
 * `berth reap` and tenant objects: a run's guard tenant may label its containers with any
 * io.berth.* label but its tenant's; such a container is removed with its run, but its labels
 * never pick the host folder that goes with a run.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { LABEL_TEST_SESSION } from '../common/index.js';
import { containers } from '../engine/index.js';
import { SESSION, engine, sessionLabels, uniqueName } from '../../test/support/index.js';
import { jobTempRoot } from './paths.js';
import { reap } from './reaper.js';

const client = engine();
const made = { containers: [] as string[], dirs: [] as string[] };

after(async () => {
  for (const id of made.containers)
    await containers(client)
      .remove(id, { force: true, volumes: true })
      .catch(() => undefined);
  for (const d of made.dirs) rmSync(d, { recursive: true, force: true });
  client.close();
});

function runDir(runId: string): string {
  const d = jobTempRoot(runId);
  mkdirSync(d, { recursive: true });
  made.dirs.push(d);
  writeFileSync(join(d, 'keep.txt'), 'keep');
  return d;
}

async function container(labels: Record<string, string>): Promise<string> {
  const { Id } = await containers(client).create(
    {
      Image: 'berth-local/busybox',
      Cmd: ['true'],
      Labels: sessionLabels(labels),
      HostConfig: { NetworkMode: 'none' },
    },
    uniqueName('rr'),
  );
  made.containers.push(Id);
  return Id;
}

const dead = (run: string) => ({
  'io.berth.run': run,
  'io.berth.owner.host': hostname(),
  'io.berth.owner.pid': '999999999',
});

test("reap removes a run's stale tenant container but lets only berth's own objects choose the run folder", async () => {
  const tenantRun = uniqueName('run');
  const ownRun = uniqueName('run');
  const tenantDir = runDir(tenantRun);
  const ownDir = runDir(ownRun);
  const t = await container({ ...dead(tenantRun), 'io.berth.tenant': `run/${tenantRun}/build` });
  const o = await container(dead(ownRun));
  const r = await reap(client, { labelFilter: [`${LABEL_TEST_SESSION}=${SESSION}`] });
  assert.deepEqual(r.errors, []);
  assert.equal(r.containers, 2);
  assert.equal(await containers(client).find(t), undefined, "the run's tenant container is removed");
  assert.equal(await containers(client).find(o), undefined);
  assert.deepEqual(r.runs, [ownRun]);
  assert.ok(existsSync(join(tenantDir, 'keep.txt')), "a tenant's labels do not pick a folder to delete");
  assert.equal(existsSync(ownDir), false, "berth's own stale run folder goes");
});
