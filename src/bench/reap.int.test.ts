/**
 * The bench reaper on a shared engine: a guard tenant can label its containers like bench objects
 * and dind sidecars (the guard passes io.berth.* labels other than the tenant's own), but never
 * without its io.berth.tenant label; its build step containers carry its Dockerfile's labels and
 * no tenant label, so a label never points the reaper at another container. Scoped to this test
 * session's objects with labelFilter.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { hostname, tmpdir } from 'node:os';
import { LABEL_TEST_SESSION } from '../common/index.js';
import { containers, networks } from '../engine/index.js';
import { dindNames } from '../dind/index.js';
import { SESSION, engine, sessionLabels, uniqueName } from '../../test/support/index.js';
import { reapBench } from './reap.js';

const client = engine();
const made = { containers: [] as string[], networks: [] as string[], dirs: [] as string[] };
const scope = { labelFilter: [`${LABEL_TEST_SESSION}=${SESSION}`] };

after(async () => {
  for (const id of made.containers)
    await containers(client)
      .remove(id, { force: true, volumes: true })
      .catch(() => undefined);
  for (const n of made.networks)
    await networks(client)
      .remove(n)
      .catch(() => undefined);
  for (const d of made.dirs) rmSync(d, { recursive: true, force: true });
  client.close();
});

function hostDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'berth-reap-test-'));
  made.dirs.push(d);
  writeFileSync(join(d, 'keep.txt'), 'keep');
  return d;
}

async function container(name: string, labels: Record<string, string>): Promise<string> {
  const { Id } = await containers(client).create(
    {
      Image: 'berth-local/busybox',
      Cmd: ['true'],
      Labels: sessionLabels(labels),
      HostConfig: { NetworkMode: 'none' },
    },
    name,
  );
  made.containers.push(Id);
  return Id;
}

/** The labels of the red-team proof: a bench dind sidecar whose owner is gone (no owner labels). */
const sidecarLabels = (name: string, dir: string) => ({
  'io.berth.bench': 'bench',
  'io.berth.role': 'dind',
  'io.berth.dind': name,
  'io.berth.dind.socket-dir': dir,
  'io.berth.dind.socket-dir-owned': '1',
});

test("reapBench skips a tenant's container with bench and dind labels: no stop, no rm -rf of the labelled dir", async () => {
  const name = uniqueName('rb');
  const dir = hostDir();
  const id = await container(dindNames.sidecar(name), {
    ...sidecarLabels(name, dir),
    'io.berth.tenant': 'x',
  });
  const plain = await container(uniqueName('rbt'), { 'io.berth.bench': 'bench', 'io.berth.tenant': 'x' });
  const r = await reapBench(client, scope);
  assert.deepEqual(r.errors, []);
  assert.equal(r.containers, 0);
  assert.ok(await containers(client).find(id), 'not treated as a sidecar');
  assert.ok(await containers(client).find(plain), "a tenant's bench-labelled container is not removed");
  assert.ok(existsSync(join(dir, 'keep.txt')), 'the labelled host dir is still there');
});

test("reapBench removes berth's own leftovers, but a socket dir only when berth made it", async () => {
  const name = uniqueName('rbo');
  const dir = hostDir();
  const side = await container(dindNames.sidecar(name), sidecarLabels(name, dir));
  const other = await container(uniqueName('rbp'), { 'io.berth.bench': 'bench' });
  const r = await reapBench(client, scope);
  assert.deepEqual(r.errors, []);
  assert.equal(r.containers, 2);
  assert.equal(await containers(client).find(side), undefined);
  assert.equal(await containers(client).find(other), undefined);
  assert.ok(existsSync(join(dir, 'keep.txt')), 'a dir berth did not make stays');
  assert.ok(
    r.notes.some((n) => n.includes(`left ${dir} in place`)),
    r.notes.join('\n'),
  );
});

test('reapBench never stops a sidecar that a stale container merely names in its labels', async () => {
  // A live bench sidecar, shaped as berth makes it (its name, role and daemon label, owner = this
  // process), and a build step container (dockerd's builder makes it: the tenant's Dockerfile
  // labels, no tenant label, a random name) that points at it.
  const name = uniqueName('rbs');
  const dir = hostDir();
  const side = await container(dindNames.sidecar(name), {
    ...sidecarLabels(name, dir),
    'io.berth.owner.pid': String(process.pid),
    'io.berth.owner.host': hostname(),
  });
  const step = await container(uniqueName('rbstep'), {
    'io.berth.bench': 'x',
    'io.berth.role': 'dind',
    'io.berth.dind': name,
    'io.berth.owner.pid': '999999999',
    'io.berth.owner.host': hostname(),
  });
  const r = await reapBench(client, scope);
  assert.deepEqual(r.errors, []);
  assert.equal(r.containers, 1);
  assert.equal(await containers(client).find(step), undefined, 'the stale step container itself goes');
  assert.ok(await containers(client).find(side), 'the sidecar it names stays');
  assert.ok(existsSync(join(dir, 'keep.txt')));
});

test('reapBench removes what a killed bench’s guard tenant left, and no other tenant’s objects', async () => {
  const dead = '999999998';
  const owner = { 'io.berth.owner.pid': dead, 'io.berth.owner.host': hostname() };
  const left = { ...owner, 'io.berth.bench': 'guard', 'io.berth.tenant': `bench-${dead}` };
  const net = uniqueName('rbnet');
  await networks(client).create({
    Name: net,
    Labels: sessionLabels({ ...left, 'io.berth.role': 'guard-network' }),
  });
  made.networks.push(net);
  const box = await container(uniqueName('rbg'), left);
  // Left a sidecar's labels by that tenant: removed as a container, never stopped as a daemon.
  const name = uniqueName('rbgs');
  const dir = hostDir();
  const side = await container(dindNames.sidecar(name), { ...sidecarLabels(name, dir), ...left });
  const kept = [
    // Another tenant's, however labelled.
    await container(uniqueName('rbk'), { ...left, 'io.berth.tenant': 'x' }),
    await container(uniqueName('rbk'), { ...left, 'io.berth.tenant': `bench-${process.pid}` }),
    // The tenant name of a bench whose owner is not that bench.
    await container(uniqueName('rbk'), { ...left, 'io.berth.tenant': 'bench-1' }),
    // Not the guard contender's.
    await container(uniqueName('rbk'), { ...left, 'io.berth.bench': 'bench' }),
    // The live bench's own guard tenant (its guard removes those itself).
    await container(uniqueName('rbk'), {
      ...left,
      'io.berth.tenant': `bench-${process.pid}`,
      'io.berth.owner.pid': String(process.pid),
    }),
  ];
  const r = await reapBench(client, scope);
  assert.deepEqual(r.errors, []);
  assert.equal(r.containers, 2);
  assert.equal(r.networks, 1);
  assert.equal(await containers(client).find(box), undefined);
  assert.equal(await containers(client).find(side), undefined);
  assert.deepEqual(await networks(client).list({ name: [net] }), []);
  for (const id of kept) assert.ok(await containers(client).find(id), `kept ${id}`);
  assert.ok(existsSync(join(dir, 'keep.txt')), 'the labelled dir is left alone');
  assert.ok(!r.notes.some((n) => n.includes(dir)), r.notes.join('\n'));
});
