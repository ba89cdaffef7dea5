/**
 * Attack: names. Keeping another tenant off its own network by taking the name first (a guard's
 * tenant network is `berth-<slug>-<hash>`; names of that shape are refused to every tenant, and
 * tenants whose slugs coincide get different networks). Naming a container like someone else's
 * short ID, which dockerd resolves before ID prefixes. Learning others' IDs from name conflicts,
 * and breaking others' references by making a second network of their network's name.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { containers, images, networks } from '../../src/engine/index.js';
import { createGuard, tenantNetworkName } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { docker, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, postJson, send } from '../support/rawhttp.js';

describe('attack: squatting a tenant network name', () => {
  const c = engine();
  const dir = tempDir('berth-names-');
  const victim = `${uniqueName('v')}/a-b`;
  const twin = victim.replace('/a-b', '/a/b');
  let attacker: GuardHandle;
  let v: GuardHandle;
  let w: GuardHandle;

  before(async () => {
    attacker = await createGuard({
      tenant: uniqueName('squat'),
      listen: join(dir.path, 'a.sock'),
      labels: sessionLabels(),
    });
    v = await createGuard({ tenant: victim, listen: join(dir.path, 'v.sock'), labels: sessionLabels() });
    w = await createGuard({ tenant: twin, listen: join(dir.path, 'w.sock'), labels: sessionLabels() });
  });

  after(async () => {
    for (const g of [attacker, v, w]) await g.close({ cleanup: true }).catch(() => undefined);
    c.close();
    dir[Symbol.dispose]();
  });

  test('the victim’s network name is refused to the attacker (raw API); the victim and its slug twin still run', async () => {
    const name = tenantNetworkName(victim);
    const r = await postJson(
      join(dir.path, 'a.sock'),
      '/v1.41/networks/create',
      JSON.stringify({ Name: name }),
    );
    expectRefused(r, 'ownership', 'squat');
    assert.equal((await networks(c).list({ name: [name] })).length, 0, 'nothing made');
    for (const g of [v, w]) {
      const run = await docker(g.address, ['run', '--rm', 'berth-local/busybox', 'true']);
      assert.equal(run.code, 0, run.stderr);
    }
    assert.notEqual(tenantNetworkName(victim), tenantNetworkName(twin));
  });

  test('a container named like someone else’s short ID is refused (create and rename, raw API and CLI)', async () => {
    const sock = join(dir.path, 'a.sock');
    const host = await containers(c).create(
      {
        Image: 'berth-local/busybox',
        Cmd: ['sleep', '600'],
        Labels: sessionLabels(),
        HostConfig: { NetworkMode: 'none' },
      },
      uniqueName('namehost'),
    );
    const hostNetName = uniqueName('namehostnet');
    const hostNet = await networks(c).create({ Name: hostNetName, Labels: sessionLabels() });
    try {
      await containers(c).start(host.Id);
      const short = host.Id.slice(0, 12);
      const created = await postJson(
        sock,
        `/v1.41/containers/create?name=${short}`,
        JSON.stringify({ Image: 'berth-local/busybox', Cmd: ['true'], HostConfig: { NetworkMode: 'none' } }),
      );
      expectRefused(created, 'ownership', 'a name that reads as the host container’s short ID');
      const cli = await docker(attacker.address, [
        'create',
        '--name',
        host.Id,
        'berth-local/busybox',
        'true',
      ]);
      assert.notEqual(cli.code, 0);
      assert.match(cli.stderr, /berth: ownership: /);
      assert.deepEqual(
        await containers(c).list({ all: true, filters: { name: [short] } }),
        [],
        'no container took the name',
      );

      const ownName = uniqueName('nameown');
      const own = await docker(attacker.address, [
        'create',
        '--name',
        ownName,
        'berth-local/busybox',
        'true',
      ]);
      assert.equal(own.code, 0, own.stderr);
      const ownId = own.stdout.trim();
      expectRefused(
        await send(sock, { method: 'POST', path: `/v1.41/containers/${ownId}/rename?name=/${short}` }),
        'ownership',
        'a rename to the host container’s short ID',
      );
      // A rename onto a name that is taken: a conflict, without the other container's ID.
      const hostName = (await containers(c).inspect(host.Id)).Name.replace(/^\//, '');
      const taken = await send(sock, {
        method: 'POST',
        path: `/v1.41/containers/${ownId}/rename?name=${hostName}`,
      });
      assert.equal(taken.status, 409, taken.text);
      assert.ok(
        !taken.text.includes(host.Id.slice(0, 12)),
        `the conflict names the host container: ${taken.text}`,
      );
      assert.equal((await containers(c).inspect(ownId)).Name, `/${ownName}`, 'neither rename happened');
      // The host's own short-ID reference still finds the host's container.
      const exec = await docker(`unix:///var/run/docker.sock`, ['exec', short, 'hostname']);
      assert.equal(exec.code, 0, exec.stderr);
      assert.equal(exec.stdout.trim(), host.Id.slice(0, 12));

      // A second network of the host network's name: refused by the engine (the guard asks it to
      // check), with nothing made and no ID in the answer.
      const dup = await postJson(sock, '/v1.41/networks/create', JSON.stringify({ Name: hostNetName }));
      assert.equal(dup.status, 409, dup.text);
      assert.ok(
        !dup.text.includes(hostNet.Id.slice(0, 12)),
        `the answer names the host network: ${dup.text}`,
      );
      assert.equal((await networks(c).list({ name: [hostNetName] })).length, 1, 'one network of that name');
    } finally {
      await containers(c).remove(host.Id, { force: true });
      await networks(c).remove(hostNet.Id);
    }
  });

  test('an image tag or a network named like someone else’s short ID is refused (tag, build, create)', async () => {
    const sock = join(dir.path, 'a.sock');
    const hostNetName = uniqueName('namehostnet');
    const hostNet = await networks(c).create({ Name: hostNetName, Labels: sessionLabels() });
    try {
      // dockerd reads `docker run <12 hex>` as a tag first: the tenant's image would run instead.
      const img = (await images(c).inspect('berth-local/busybox')).Id.replace(/^sha256:/, '');
      const short = img.slice(0, 12);
      const tagged = await send(sock, {
        method: 'POST',
        path: `/v1.41/images/berth-local/busybox/tag?repo=${short}&tag=latest`,
      });
      expectRefused(tagged, 'image-tag', 'a tag named like the image’s short ID');
      const built = await docker(attacker.address, ['build', '-q', '-t', img.slice(0, 20), '-'], {
        env: { DOCKER_BUILDKIT: '0' },
        input: 'FROM berth-local/busybox\nRUN true\n',
      });
      assert.notEqual(built.code, 0);
      assert.match(built.stderr, /berth: image-tag: /);
      for (const ref of [`${short}:latest`, `${img.slice(0, 20)}:latest`])
        assert.equal(await images(c).find(ref), undefined, `no tag ${ref} was made`);
      // dockerd finds a network by name before an ID prefix: `docker network connect <short>`.
      const netShort = hostNet.Id.slice(0, 12);
      const net = await postJson(sock, '/v1.41/networks/create', JSON.stringify({ Name: netShort }));
      expectRefused(net, 'ownership', 'a network named like the host network’s short ID');
      assert.deepEqual(await networks(c).list({ name: [netShort] }), [], 'no network took the name');
      assert.equal((await networks(c).inspect(netShort)).Id, hostNet.Id, 'the short ID finds the host’s');
    } finally {
      await networks(c).remove(hostNet.Id);
    }
  });
});
