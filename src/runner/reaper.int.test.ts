/**
 * `berth reap` and tenant objects: a run's guard tenant may label its containers with any
 * io.berth.* label but its tenant's, and its build step containers (made by dockerd's builder)
 * carry its Dockerfile's labels and no tenant label at all. Such a container is removed if it
 * looks stale, but its labels never pick the host folder that goes with a run: a folder goes on
 * the owner file its runner wrote in it.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { LABEL_TEST_SESSION } from '../common/index.js';
import { containers, images, volumes } from '../engine/index.js';
import { SESSION, engine, sessionLabels, uniqueName } from '../../test/support/index.js';
import { RUN_OWNER_FILE, createRunTempRoot, jobTempRoot } from './paths.js';
import { reap, reapTenant } from './reaper.js';

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

/** A run folder as the runner makes it, owned by `pid` on this host (or with no owner file). */
function runDir(runId: string, pid?: number): string {
  const d = pid === undefined ? jobTempRoot(runId) : createRunTempRoot(runId, { pid, host: hostname() });
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
  const tenantDir = runDir(tenantRun, 999999999);
  const ownDir = runDir(ownRun, 999999999);
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

test("a build step container's forged run and owner labels do not make a live run dead", async () => {
  // dockerd's builder makes the step container: the labels are the Dockerfile's, no tenant label.
  const victim = uniqueName('run');
  const legacy = uniqueName('run');
  const victimDir = runDir(victim, process.pid);
  const legacyDir = runDir(legacy);
  const step = await container(dead(victim));
  const step2 = await container(dead(legacy));
  const r = await reap(client, { labelFilter: [`${LABEL_TEST_SESSION}=${SESSION}`] });
  assert.deepEqual(r.errors, []);
  assert.equal(await containers(client).find(step), undefined, 'the stale-looking container itself goes');
  assert.equal(await containers(client).find(step2), undefined);
  assert.deepEqual(r.runs, [], 'no run is reported dead');
  assert.ok(existsSync(join(victimDir, 'keep.txt')), "a live run's folder stays");
  assert.ok(existsSync(join(victimDir, RUN_OWNER_FILE)));
  assert.ok(existsSync(join(legacyDir, 'keep.txt')), 'a folder with no owner file is not judged on labels');
  // The operator can still remove a run by name.
  const forced = await reap(client, {
    runId: victim,
    force: true,
    labelFilter: [`${LABEL_TEST_SESSION}=${SESSION}`],
  });
  assert.deepEqual(forced.runs, [victim]);
  assert.equal(existsSync(victimDir), false);
});

/** A guard's record of a tag (as tagrecords.ts writes one): `recorded` set to `image` by `tenant`. */
const tagRecord = (image: string, recorded: string, tenant: string, extra: Record<string, string> = {}) =>
  volumes(client).create({
    Name: `berth-tag-${uniqueName('k')}`,
    Labels: sessionLabels({
      ...extra,
      'io.berth.role': 'tag-record',
      'io.berth.tag.key': 'k',
      'io.berth.tag.name': recorded,
      'io.berth.tag.image': image,
      'io.berth.tag.tenant': tenant,
    }),
  });

/** Removes the test's tag and records, whatever the test left of them. */
async function dropTagAndRecords(tag: string, records: string[]): Promise<void> {
  await images(client)
    .remove(tag)
    .catch(() => false);
  for (const v of records)
    await volumes(client)
      .remove(v)
      .catch(() => false);
}

test("a guard's tag record stays while its tag still names the image recorded, and goes once it does not", async () => {
  const run = uniqueName('run');
  runDir(run, 999999999);
  const tag = `berth-reap-kept-${SESSION}:1`;
  const { Id: image } = await images(client).inspect('berth-local/busybox');
  await images(client).tag('berth-local/busybox', tag.split(':')[0] ?? '', '1');
  const holds = await tagRecord(image, tag, 'job-x', dead(run));
  const stale = await tagRecord(image, `berth-reap-gone-${SESSION}:1`, 'job-x', dead(run));
  try {
    await reap(client, { labelFilter: [`${LABEL_TEST_SESSION}=${SESSION}`] });
    const left = (await volumes(client).list()).map((v) => v.Name);
    assert.ok(left.includes(holds.Name), 'the record of a tag that still names its image stays');
    assert.ok(!left.includes(stale.Name), 'the record of a name that is gone is reaped');
    await images(client).remove(tag);
    await reap(client, { labelFilter: [`${LABEL_TEST_SESSION}=${SESSION}`] });
    assert.ok(!(await volumes(client).list()).some((v) => v.Name === holds.Name), 'reaped once the tag went');
  } finally {
    await dropTagAndRecords(tag, [holds.Name, stale.Name]);
  }
});

test('berth reap --tenant also takes the records of tags its guard wrote, once their tags are gone', async () => {
  const tenant = uniqueName('gone-guard');
  const tag = `berth-reap-tenant-${SESSION}:1`;
  const { Id: image } = await images(client).inspect('berth-local/busybox');
  await images(client).tag('berth-local/busybox', tag.split(':')[0] ?? '', '1');
  const holds = await tagRecord(image, tag, tenant);
  const stale = await tagRecord(image, `berth-reap-tenant-gone-${SESSION}:1`, tenant);
  try {
    await reapTenant(client, tenant, [`${LABEL_TEST_SESSION}=${SESSION}`]);
    const left = (await volumes(client).list()).map((v) => v.Name);
    assert.ok(left.includes(holds.Name), 'the record of a tag that still names its image stays');
    assert.ok(!left.includes(stale.Name), 'the record of a tag that is gone is reaped');
  } finally {
    await dropTagAndRecords(tag, [holds.Name, stale.Name]);
  }
});
