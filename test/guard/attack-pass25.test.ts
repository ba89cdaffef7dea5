/**
 * The twenty-fifth red-team pass: networks a container joins when it starts. dockerd keeps the
 * networks of a container not started yet (and those joined while it was stopped) by name, and
 * looks each name up again at start (full ID, then name, then ID prefix). A tenant that removed
 * its network could then start its container into whatever has that name afterwards: another
 * tenant's network of the same name, or a network whose ID begins with a name of hex digits.
 * Checked on the engine, not only by status: the other tenant's network never gets the attacker's
 * container. Also: the tenant's own network removed through the guard is made again on the next
 * run, and the cleanup removes the tenant's network even with someone else's container attached.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { containers, networks } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { docker, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, messageOf, postJson, send } from '../support/rawhttp.js';

const IMAGE = 'berth-local/busybox';

describe('attack: pass 25 (networks looked up again at start)', () => {
  const c = engine();
  const dir = tempDir('berth-pass25-');
  let a: GuardHandle;
  let b: GuardHandle;
  const sockA = join(dir.path, 'a.sock');
  const sockB = join(dir.path, 'b.sock');
  const host: string[] = [];

  before(async () => {
    a = await createGuard({ tenant: uniqueName('p25a'), listen: sockA, labels: sessionLabels() });
    b = await createGuard({ tenant: uniqueName('p25b'), listen: sockB, labels: sessionLabels() });
  });

  after(async () => {
    await a.close({ cleanup: true });
    await b.close({ cleanup: true });
    for (const id of host)
      await containers(c)
        .remove(id, { force: true })
        .catch(() => undefined);
    c.close();
    dir[Symbol.dispose]();
  });

  const api = async (sock: string, method: string, path: string, body?: unknown) => {
    const r =
      body === undefined
        ? await send(sock, { method, path: `/v1.41${path}` })
        : await postJson(sock, `/v1.41${path}`, JSON.stringify(body));
    return { ...r, json: (r.text === '' ? undefined : JSON.parse(r.text)) as Record<string, unknown> };
  };
  const attached = async (network: string) =>
    Object.values((await networks(c).inspect(network)).Containers ?? {}).map((x) => x.Name);
  const running = async (id: string) => (await containers(c).inspect(id)).State.Running;

  test('a created container whose network went cannot start into another tenant’s network of that name', async () => {
    const name = uniqueName('p25shared');
    const spy = uniqueName('p25spy');
    assert.equal((await api(sockA, 'POST', '/networks/create', { Name: name })).status, 201);
    const made = await api(sockA, 'POST', `/containers/create?name=${spy}`, {
      Image: IMAGE,
      Cmd: ['sleep', '300'],
      HostConfig: { NetworkMode: name },
    });
    assert.equal(made.status, 201, made.text);
    assert.equal((await api(sockA, 'DELETE', `/networks/${name}`)).status, 204);
    // The other tenant makes a network of the same name and runs something on it.
    assert.equal((await api(sockB, 'POST', '/networks/create', { Name: name })).status, 201);
    const victim = await docker(`unix://${sockB}`, ['run', '-d', '--network', name, IMAGE, 'sleep', '300']);
    assert.equal(victim.code, 0, victim.stderr);
    const started = await api(sockA, 'POST', `/containers/${spy}/start`);
    expectRefused(started, 'ownership', 'start into a network of that name', 404);
    assert.match(messageOf(started) ?? '', new RegExp(`joins network ${name}`));
    // The CLI the same.
    const cli = await docker(`unix://${sockA}`, ['start', spy]);
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /now names no network of yours/);
    assert.equal(await running(spy), false);
    assert.deepEqual(await attached(name), [
      (await containers(c).inspect(victim.stdout.trim())).Name.slice(1),
    ]);
  });

  test('a stopped container connected, then its network pruned: no start into the name’s next network', async () => {
    const name = uniqueName('p25pruned');
    const spy = uniqueName('p25spy2');
    const made = await api(sockA, 'POST', `/containers/create?name=${spy}`, {
      Image: IMAGE,
      Cmd: ['sleep', '300'],
      HostConfig: { NetworkMode: 'none' },
    });
    assert.equal(made.status, 201, made.text);
    assert.equal((await api(sockA, 'POST', `/containers/${spy}/start`)).status, 204);
    assert.equal((await api(sockA, 'POST', `/containers/${spy}/stop?t=0`)).status, 204);
    assert.equal((await api(sockA, 'POST', '/networks/none/disconnect', { Container: spy })).status, 200);
    assert.equal((await api(sockA, 'POST', '/networks/create', { Name: name })).status, 201);
    assert.equal((await api(sockA, 'POST', `/networks/${name}/connect`, { Container: spy })).status, 200);
    const pruned = await api(sockA, 'POST', '/networks/prune');
    assert.equal(pruned.status, 200, pruned.text);
    assert.ok((pruned.json.NetworksDeleted as string[]).includes(name), pruned.text);
    assert.equal((await api(sockB, 'POST', '/networks/create', { Name: name })).status, 201);
    expectRefused(await api(sockA, 'POST', `/containers/${spy}/restart?t=0`), 'ownership', 'restart', 404);
    expectRefused(await api(sockA, 'POST', `/containers/${spy}/start`), 'ownership', 'start', 404);
    assert.equal(await running(spy), false);
    assert.deepEqual(await attached(name), []);
  });

  test('network names of hex digits are refused at any length (they read as ID prefixes at start)', async () => {
    const victimNet = await api(sockB, 'POST', '/networks/create', { Name: uniqueName('p25idnet') });
    const vid = String(victimNet.json.Id);
    for (const n of [vid.slice(0, 4), vid.slice(0, 1), vid.slice(0, 11), 'abc']) {
      const r = await api(sockA, 'POST', '/networks/create', { Name: n });
      expectRefused(r, 'ownership', `network named ${n}`);
      assert.equal((await networks(c).list({ name: [n] })).filter((x) => x.Name === n).length, 0);
    }
  });

  test('the tenant network removed through the guard is made again by the next run', async () => {
    const first = await docker(`unix://${sockA}`, ['run', '--rm', IMAGE, 'true']);
    assert.equal(first.code, 0, first.stderr);
    const pruned = await docker(`unix://${sockA}`, ['network', 'prune', '-f']);
    assert.equal(pruned.code, 0, pruned.stderr);
    assert.match(pruned.stdout, /berth-/, 'the tenant network was pruned');
    const again = await docker(`unix://${sockA}`, ['run', '--rm', IMAGE, 'true']);
    assert.equal(again.code, 0, again.stderr);
  });

  test('the cleanup removes the tenant’s network even with another party’s container attached', async () => {
    const g = await createGuard({
      tenant: uniqueName('p25c'),
      listen: join(dir.path, 'c.sock'),
      labels: sessionLabels(),
    });
    const name = uniqueName('p25cnet');
    let hostId = '';
    try {
      assert.equal(
        (await api(join(dir.path, 'c.sock'), 'POST', '/networks/create', { Name: name })).status,
        201,
      );
      // The host attaches a container of its own to the tenant's network.
      hostId = (
        await containers(c).create(
          {
            Image: IMAGE,
            Cmd: ['sleep', '300'],
            Labels: sessionLabels(),
            HostConfig: { NetworkMode: 'none' },
          },
          uniqueName('p25host'),
        )
      ).Id;
      host.push(hostId);
      await networks(c).disconnect('none', hostId);
      await networks(c).connect(name, hostId);
      await containers(c).start(hostId);
    } finally {
      await g.close({ cleanup: true });
    }
    assert.equal((await networks(c).list({ name: [name] })).filter((x) => x.Name === name).length, 0);
    assert.equal(await running(hostId), true, 'the host container is untouched but for the network');
  });
});
