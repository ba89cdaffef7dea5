/**
 * What a guard tenant can create on the shared engine (names and io.berth.* labels of its own
 * choosing, always with its io.berth.tenant label) never becomes a dind object of berth's. The
 * "tenant" objects here are made on the raw socket with the labels the guard would give them.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { isBerthError } from '../common/index.js';
import { containers, images, volumes } from '../engine/index.js';
import { DOCKER_CLI, SESSION, engine, run, sessionLabels, uniqueName } from '../../test/support/index.js';
import { dindNames, listDind, purgeCache, socketDirBase, startDind, stopDind } from './index.js';
import type { DindHandle, DindOptions } from './index.js';

const client = engine();
const made = {
  containers: [] as string[],
  volumes: [] as string[],
  dirs: [] as string[],
  images: [] as string[],
};

after(async () => {
  const quietly = (p: Promise<unknown>) => p.catch(() => undefined);
  for (const id of made.containers)
    await quietly(containers(client).remove(id, { force: true, volumes: true }));
  for (const v of made.volumes) await quietly(volumes(client).remove(v, true));
  for (const i of made.images) await quietly(images(client).remove(i, true));
  for (const d of made.dirs) rmSync(d, { recursive: true, force: true });
  client.close();
});

/** Expects startDind to be refused; a daemon that starts anyway is stopped (and its cache kept). */
async function refused(o: DindOptions, check: (err: unknown) => void): Promise<void> {
  let h: DindHandle | undefined;
  try {
    h = await startDind(o);
  } catch (err) {
    check(err);
    return;
  }
  await h.close().catch(() => undefined);
  assert.fail(`startDind was not refused (daemon ${h.name} started)`);
}

const tenantLabels = (extra: Record<string, string> = {}) =>
  sessionLabels({ ...extra, 'io.berth.tenant': 'x' });

async function container(name: string, labels: Record<string, string>): Promise<string> {
  const { Id } = await containers(client).create(
    { Image: 'berth-local/busybox', Cmd: ['true'], Labels: labels, HostConfig: { NetworkMode: 'none' } },
    name,
  );
  made.containers.push(Id);
  return Id;
}

async function volume(name: string, labels: Record<string, string>): Promise<void> {
  await volumes(client).create({ Name: name, Labels: labels });
  made.volumes.push(name);
}

function hostDir(base = tmpdir(), prefix = 'berth-trust-'): string {
  const d = mkdtempSync(join(base, prefix));
  made.dirs.push(d);
  writeFileSync(join(d, 'keep.txt'), 'keep');
  return d;
}

const opts = (extra: { name?: string; cache?: string } = {}) => ({
  name: extra.name ?? uniqueName('trust'),
  network: 'none',
  labels: sessionLabels(),
  cacheBusy: 'wait' as const,
  cacheWaitMs: 5_000,
  readyTimeoutMs: 90_000,
  ...(extra.cache ? { cache: extra.cache } : {}),
  client,
});

test("a tenant's volume under a cache volume's name is refused, left untouched, and the lock released", async () => {
  const key = uniqueName('tk');
  const name = dindNames.cacheVolume(key);
  // What a tenant's `POST /volumes/create {"Name":"berth-dind-cache-<key>"}` makes through its guard.
  await volume(name, tenantLabels());
  const before = await volumes(client).inspect(name);
  await refused(opts({ cache: key }), (err: unknown) => {
    assert.ok(isBerthError(err, 'DIND_START_FAILED'), String(err));
    assert.match(err.message, new RegExp(`cache volume ${name} .*not made by berth.*guard tenant "x"`));
  });
  const afterwards = await volumes(client).inspect(name);
  assert.deepEqual(afterwards.Labels, before.Labels, 'labels untouched');
  assert.equal(afterwards.Mountpoint, before.Mountpoint);
  assert.equal(await containers(client).find(dindNames.cacheLock(key)), undefined, 'cache lock released');
  // purge (`berth dind purge KEY`) does not remove it either.
  await assert.rejects(purgeCache(client, key), (err: unknown) => isBerthError(err, 'DIND_NOT_FOUND'));
  assert.ok(await volumes(client).inspect(name));
});

test("a tenant's container under a cache lock's name is neither waited on nor removed", async () => {
  const key = uniqueName('tl');
  const lockName = dindNames.cacheLock(key);
  // Even with the labels a berth lock carries (the guard passes other io.berth.* labels through).
  const id = await container(
    lockName,
    tenantLabels({
      'io.berth.role': 'dind-cache-lock',
      'io.berth.dind': 'ghost',
      'io.berth.dind.cache': key,
    }),
  );
  const t0 = Date.now();
  await refused(opts({ cache: key }), (err: unknown) => {
    assert.ok(isBerthError(err, 'DIND_START_FAILED'), String(err));
    assert.match(err.message, /cache lock container .* not made by berth/);
  });
  assert.ok(Date.now() - t0 < 5_000, 'failed at once rather than waiting');
  assert.equal((await containers(client).find(lockName))?.Id, id, 'still there');
  await assert.rejects(volumes(client).inspect(dindNames.cacheVolume(key)), 'no cache volume made');
});

test("a tenant's container with a sidecar's name and labels is not a daemon: not listed, stopped or trusted for paths", async () => {
  const name = uniqueName('tv');
  const key = uniqueName('tvk');
  const dir = hostDir();
  // A real berth-made cache volume of that key must survive `purge`.
  await volume(
    dindNames.cacheVolume(key),
    sessionLabels({ 'io.berth.role': 'dind-cache', 'io.berth.dind.cache': key }),
  );
  const id = await container(
    dindNames.sidecar(name),
    tenantLabels({
      'io.berth.bench': 'bench',
      'io.berth.role': 'dind',
      'io.berth.dind': name,
      'io.berth.dind.socket-dir': dir,
      'io.berth.dind.socket-dir-owned': '1',
      'io.berth.dind.cache': key,
    }),
  );
  assert.equal(
    (await listDind(client)).some((d) => d.containerId === id),
    false,
    '`berth dind ls` does not list it',
  );
  await assert.rejects(stopDind(client, name, { purge: true }), (err: unknown) => {
    assert.ok(isBerthError(err, 'DIND_NOT_FOUND'), String(err));
    assert.match(err.message, /not made by berth .*guard tenant "x"/);
    return true;
  });
  assert.ok(await containers(client).find(id), 'container not removed');
  assert.equal(readFileSync(join(dir, 'keep.txt'), 'utf8'), 'keep', 'socket dir label not acted on');
  assert.ok(await volumes(client).inspect(dindNames.cacheVolume(key)), 'cache not purged');
  await refused(opts({ name }), (err: unknown) => {
    assert.ok(isBerthError(err, 'DIND_START_FAILED'), String(err));
    assert.match(err.message, /not made by berth/);
  });
  assert.ok(await containers(client).find(id));
});

test('a container that only names a daemon in its labels (a build step container) is not listed or stopped', async () => {
  // dockerd's builder makes step containers with the tenant's Dockerfile labels, no tenant label
  // and a random name.
  const name = uniqueName('tb');
  const ghost = uniqueName('tbg');
  const dir = hostDir();
  const stepLabels = (daemon: string) =>
    sessionLabels({
      'io.berth.role': 'dind',
      'io.berth.dind': daemon,
      'io.berth.dind.socket-dir': dir,
      'io.berth.dind.socket-dir-owned': '1',
    });
  const side = await container(
    dindNames.sidecar(name),
    sessionLabels({ 'io.berth.role': 'dind', 'io.berth.dind': name }),
  );
  const step = await container(uniqueName('tbs'), stepLabels(name));
  const step2 = await container(uniqueName('tbs'), stepLabels(ghost));
  const listed = (await listDind(client)).filter((d) => [side, step, step2].includes(d.containerId));
  assert.deepEqual(
    listed.map((d) => [d.containerId, d.name]),
    [[side, name]],
    '`berth dind ls` lists the sidecar only',
  );
  // `berth dind down <ghost>`: no daemon of that name, whatever a label says.
  await assert.rejects(stopDind(client, ghost), (err: unknown) => isBerthError(err, 'DIND_NOT_FOUND'));
  assert.ok(await containers(client).find(step2));
  assert.ok(existsSync(join(dir, 'keep.txt')));
  // `berth dind down <name>` acts on the sidecar of that name, not on what points at it.
  assert.deepEqual(await stopDind(client, name), { removed: true });
  assert.equal(await containers(client).find(side), undefined);
  assert.ok(await containers(client).find(step), 'the step container is not touched');
  assert.ok(existsSync(join(dir, 'keep.txt')), 'its labelled dir is not touched');
});

test('stopDind removes a socket dir named by a label only when berth made it (berth-dind-* in the runtime/temp dir)', async () => {
  const foreign = hostDir();
  const own = hostDir(socketDirBase(), 'berth-dind-');
  const fake = async (dir: string) => {
    const name = uniqueName('ts');
    await container(
      dindNames.sidecar(name),
      sessionLabels({
        'io.berth.role': 'dind',
        'io.berth.dind': name,
        'io.berth.dind.socket-dir': dir,
        'io.berth.dind.socket-dir-owned': '1',
      }),
    );
    return name;
  };
  const lines: string[] = [];
  const a = await fake(foreign);
  assert.deepEqual(await stopDind(client, a, { log: (l) => lines.push(l) }), { removed: true });
  assert.equal(await containers(client).find(dindNames.sidecar(a)), undefined);
  assert.ok(existsSync(join(foreign, 'keep.txt')), 'a dir berth did not make stays');
  assert.ok(
    lines.some((l) => l.includes(`left ${foreign} in place`)),
    lines.join('\n'),
  );
  const b = await fake(own);
  await stopDind(client, b);
  assert.equal(existsSync(own), false, "berth's own socket dir goes");
});

test('an image that names a guard tenant is refused as the dind image', async () => {
  const id = await container(uniqueName('timg'), sessionLabels());
  const tag = `berth-trust-${SESSION}:tenant`;
  const r = await run(DOCKER_CLI, ['commit', '--change', 'LABEL io.berth.tenant=x', id, tag]);
  assert.equal(r.code, 0, r.stderr);
  made.images.push(tag);
  await refused({ ...opts(), image: tag }, (err: unknown) => {
    assert.ok(isBerthError(err, 'DIND_START_FAILED'), String(err));
    assert.match(err.message, /carries io\.berth\.tenant=x/);
  });
});
