/**
 * Attacks from the fifteenth red-team pass, sent through the guard and checked on the engine:
 * - a container create checks its named volumes and its image's health check, then waits for the
 *   engine (its turn behind the tenant's other creates, or a slow engine: here a relay holds it);
 *   meanwhile the tenant removed its volume and another tenant made one of that name (mounted by
 *   the create), or nobody did (dockerd made one of no one's, outliving the cleanup), or the image
 *   named by ID arrived with a 1 ms health check;
 * - CPU and I/O weights and swap beyond the tenant's limits;
 * - a tag whose removal fails at the cleanup (a container uses its image) lost its squatting record.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { LABEL_TENANT } from '../../src/common/index.js';
import { containers, images, networks, volumes } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import type { Policy } from '../../src/guard/index.js';
import { defaultPolicy } from '../../src/guard/index.js';
import { SESSION, docker, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectAbsent, expectRefused, postBuild, postJson, send } from '../support/rawhttp.js';
import { holdingRelay } from '../support/holdrelay.js';
import { dockerContext } from '../support/tar.js';

const IMAGE = 'berth-local/busybox';
const HOST = 'unix:///var/run/docker.sock';
const CREATE = /^POST \S*\/containers\/create/;

/** A container of the host's (created on the raw socket, not started) from `image`; answers its ID. */
async function hostContainer(image: string): Promise<string> {
  const r = await docker(HOST, [
    'create',
    '--network',
    'none',
    '--label',
    `io.berth.test-session=${SESSION}`,
    image,
    'true',
  ]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.trim();
}

describe('attack: pass 15 (create checks go stale, weights and swap, records at a failed cleanup)', () => {
  const c = engine();
  const dir = tempDir('berth-pass15-');
  const sockA = join(dir.path, 'a.sock');
  const sockB = join(dir.path, 'b.sock');
  const tenantA = uniqueName('p15a');
  const tenantB = uniqueName('p15b');
  let relay: Awaited<ReturnType<typeof holdingRelay>>;
  let a: GuardHandle;
  let b: GuardHandle;

  const containersOf = async (tenant: string) =>
    containers(c).list({ all: true, filters: { label: [`${LABEL_TENANT}=${tenant}`] } });

  before(async () => {
    // A's engine answers container creates 1.5 s late: the window a queue of creates would open.
    relay = await holdingRelay(join(dir.path, 'engine.sock'), CREATE, 1500);
    a = await createGuard({
      tenant: tenantA,
      listen: sockA,
      upstream: `unix://${join(dir.path, 'engine.sock')}`,
      labels: sessionLabels(),
    });
    b = await createGuard({ tenant: tenantB, listen: sockB, labels: sessionLabels() });
  });

  after(async () => {
    await a.close({ cleanup: true }).catch(() => undefined);
    await b.close({ cleanup: true }).catch(() => undefined);
    await relay.close();
    dir[Symbol.dispose]();
  });

  test('a volume the tenant removed while its create waited, and another tenant then made, is not mounted', async () => {
    const name = `p15-shared-${SESSION}`;
    assert.equal(
      (await postJson(sockA, '/v1.41/volumes/create', JSON.stringify({ Name: name }))).status,
      201,
    );
    const creating = postJson(
      sockA,
      '/v1.41/containers/create',
      JSON.stringify({ Image: IMAGE, Cmd: ['cat', '/data/s'], HostConfig: { Binds: [`${name}:/data`] } }),
    );
    await relay.seen;
    const rm = await send(sockA, { method: 'DELETE', path: `/v1.41/volumes/${name}` });
    assert.equal(rm.status, 204, rm.text);
    const victim = await docker(`unix://${sockB}`, [
      'run',
      '--rm',
      '--network',
      'none',
      '-v',
      `${name}:/d`,
      IMAGE,
      'sh',
      '-c',
      'echo secret-of-b > /d/s',
    ]);
    assert.equal(victim.code, 0, victim.stderr);
    const r = await creating;
    expectAbsent(r, 'create that would mount the other tenant’s volume');
    assert.deepEqual(await containersOf(tenantA), []);
    // B's volume is untouched and still B's.
    const v = await volumes(c).inspect(name);
    assert.equal(v.Labels?.[LABEL_TENANT], tenantB);
  });

  test('a volume dockerd would make for the create, of no one’s, is removed with the refused container', async () => {
    const name = `p15-orphan-${SESSION}`;
    assert.equal(
      (await postJson(sockA, '/v1.41/volumes/create', JSON.stringify({ Name: name }))).status,
      201,
    );
    const creating = postJson(
      sockA,
      '/v1.41/containers/create',
      JSON.stringify({ Image: IMAGE, Cmd: ['true'], HostConfig: { Binds: [`${name}:/data`] } }),
    );
    await new Promise((r) => setTimeout(r, 300));
    assert.equal((await send(sockA, { method: 'DELETE', path: `/v1.41/volumes/${name}` })).status, 204);
    expectAbsent(await creating, 'create whose volume went meanwhile');
    assert.deepEqual(await containersOf(tenantA), []);
    assert.deepEqual(
      (await volumes(c).list()).filter((v) => v.Name === name),
      [],
      'the unlabelled volume must not outlive the refusal',
    );
  });

  test('an image named by ID that arrives while the create waits brings no health check past the rules', async () => {
    // The image: busybox committed on the host with a 1 ms health check, saved, and removed again.
    const hid = await hostContainer(IMAGE);
    const commit = await docker(HOST, [
      'commit',
      '--change',
      'HEALTHCHECK --interval=1ms --timeout=1s CMD true',
      '--change',
      `LABEL p15=${SESSION}`,
      hid,
    ]);
    assert.equal(commit.code, 0, commit.stderr);
    const id = commit.stdout.trim();
    const file = join(dir.path, 'hc.tar');
    assert.equal((await docker(HOST, ['save', '-o', file, id])).code, 0);
    await containers(c).remove(hid, { force: true });
    await images(c).remove(id);
    try {
      const creating = postJson(
        sockA,
        '/v1.41/containers/create',
        JSON.stringify({ Image: id, Cmd: ['sleep', '60'] }),
      );
      await relay.seen;
      const load = await docker(HOST, ['load', '-i', file]);
      assert.equal(load.code, 0, load.stderr);
      const r = await creating;
      expectRefused(r, 'resources', 'create whose image arrived with a 1 ms health check');
      assert.match(r.text, /health check Interval/);
      assert.deepEqual(await containersOf(tenantA), []);
      // The same create now that the image is there: refused at once, as before.
      expectRefused(
        await postJson(sockA, '/v1.41/containers/create', JSON.stringify({ Image: id, Cmd: ['true'] })),
        'resources',
      );
    } finally {
      await images(c)
        .remove(id, true)
        .catch(() => false);
    }
  });

  test('CPU and I/O weights above the defaults are refused (create, update, build)', async () => {
    for (const [field, value] of [
      ['CpuShares', 262144],
      ['BlkioWeight', 1000],
    ] as const) {
      const r = await postJson(
        sockB,
        '/v1.41/containers/create',
        JSON.stringify({ Image: IMAGE, Cmd: ['true'], HostConfig: { NetworkMode: 'none', [field]: value } }),
      );
      expectRefused(r, 'limits', `${field} ${value}`);
    }
    assert.deepEqual(await containersOf(tenantB), []);
    const made = await docker(`unix://${sockB}`, [
      'create',
      '--network',
      'none',
      '--cpu-shares',
      '512',
      IMAGE,
      'true',
    ]);
    assert.equal(made.code, 0, made.stderr);
    const id = made.stdout.trim();
    expectRefused(
      await postJson(sockB, `/v1.41/containers/${id}/update`, JSON.stringify({ CpuShares: 262144 })),
      'limits',
      'update CpuShares',
    );
    assert.equal((await containers(c).inspect(id)).HostConfig.CpuShares, 512);
    const built = await postBuild(sockB, dockerContext(`FROM ${IMAGE}\nRUN true\n`), 'cpushares=262144');
    expectRefused(built, 'limits', 'build cpushares');
    await containers(c).remove(id, { force: true });
  });

  test('under a memory cap, swap beyond twice the cap is refused (create, update, build)', async () => {
    const policy: Policy = { ...defaultPolicy(), limits: { maxMemoryBytes: 128 * 1024 * 1024 } };
    const sock = join(dir.path, 'c.sock');
    const tenant = uniqueName('p15c');
    const g = await createGuard({ tenant, listen: sock, labels: sessionLabels(), policy });
    try {
      for (const swap of [-1, 1024 * 1024 * 1024]) {
        const r = await postJson(
          sock,
          '/v1.41/containers/create',
          JSON.stringify({
            Image: IMAGE,
            Cmd: ['true'],
            HostConfig: { NetworkMode: 'none', MemorySwap: swap },
          }),
        );
        expectRefused(r, 'limits', `MemorySwap ${swap}`);
      }
      assert.deepEqual(await containersOf(tenant), []);
      const made = await docker(`unix://${sock}`, [
        'create',
        '--network',
        'none',
        '--memory',
        '64m',
        '--memory-swap',
        '128m',
        IMAGE,
        'true',
      ]);
      assert.equal(made.code, 0, made.stderr);
      const id = made.stdout.trim();
      expectRefused(
        await postJson(sock, `/v1.41/containers/${id}/update`, JSON.stringify({ MemorySwap: -1 })),
        'limits',
        'update MemorySwap -1',
      );
      assert.equal((await containers(c).inspect(id)).HostConfig.MemorySwap, 128 * 1024 * 1024);
      expectRefused(
        await postBuild(sock, dockerContext(`FROM ${IMAGE}\nRUN true\n`), 'memswap=-1'),
        'limits',
        'build memswap',
      );
    } finally {
      await g.close({ cleanup: true });
    }
  });

  test('a tag the cleanup cannot remove keeps its record: the name stays absent for the other tenants', async () => {
    const sock = join(dir.path, 'd.sock');
    const tenant = uniqueName('p15d');
    const name = `127.0.0.1:1/p15-kept-${SESSION}:1`;
    const g = await createGuard({ tenant, listen: sock, labels: sessionLabels() });
    let holder = '';
    try {
      const built = await postBuild(
        sock,
        dockerContext(`FROM ${IMAGE}\nRUN echo d > /d\n`),
        `t=${encodeURIComponent(name)}`,
      );
      assert.equal(built.status, 200, built.text);
      const id = (await images(c).inspect(name)).Id;
      // A container of the host's uses the image: dockerd keeps the image's last tag at the cleanup.
      holder = await hostContainer(id);
      await g.close({ cleanup: true });
      assert.equal((await images(c).inspect(name)).Id, id, 'the tag stayed (dockerd refused its removal)');
      expectAbsent(
        await postJson(sockB, '/v1.41/containers/create', JSON.stringify({ Image: name, Cmd: ['true'] })),
        'the left tag, named by another tenant',
      );
      assert.deepEqual(await containersOf(tenantB), []);
    } finally {
      await g.close({ cleanup: true }).catch(() => undefined);
      if (holder) await containers(c).remove(holder, { force: true });
      await images(c)
        .remove(name, true)
        .catch(() => false);
      // The record it left: the host removes it with the tag.
      for (const v of await volumes(c).list({
        label: ['io.berth.role=tag-record', `io.berth.tag.tenant=${tenant}`],
      }))
        await volumes(c).remove(v.Name);
    }
  });
});

test('two guards of one tenant making its network at the same moment settle on one', async () => {
  const c = engine();
  const dir = tempDir('berth-netrace-');
  const tenant = uniqueName('netrace');
  const guards = await Promise.all(
    ['a', 'b', 'c'].map((n) =>
      createGuard({ tenant, listen: join(dir.path, `${n}.sock`), labels: sessionLabels() }),
    ),
  );
  try {
    const made = await Promise.all(
      guards.map((g) =>
        postJson(
          g.address.replace(/^unix:\/\//, ''),
          '/v1.41/containers/create',
          JSON.stringify({ Image: IMAGE, Cmd: ['true'] }),
        ),
      ),
    );
    const nets = new Set<string>();
    for (const r of made) {
      assert.equal(r.status, 201, r.text);
      const id = (JSON.parse(r.text) as { Id: string }).Id;
      nets.add(Object.keys((await containers(c).inspect(id)).NetworkSettings.Networks ?? {}).join());
    }
    assert.equal(nets.size, 1, [...nets].join(' | '));
    const named = (await networks(c).list({ label: [`${LABEL_TENANT}=${tenant}`] })).map((n) => n.Name);
    assert.equal(named.length, 1, named.join(', '));
  } finally {
    for (const g of guards) await g.close({ cleanup: true });
    c.close();
    dir[Symbol.dispose]();
  }
});
