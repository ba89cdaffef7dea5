/**
 * The guard's memory of the containers it created, against a real engine: a long-lived guard
 * remembers the containers that are alive, not every one it ever made. Removals through the guard
 * (delete, prune) forget at once; containers that go another way (AutoRemove, the host) are
 * forgotten by a pass that runs as the set grows. Ownership is checked through the guard after
 * each step, so forgetting never costs the tenant its own containers.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { join } from 'node:path';
import { LABEL_TENANT } from '../common/index.js';
import { containers, createTransport, parseEndpoint } from '../engine/index.js';
import { GuardProxy } from './proxy.js';
import { defaultPolicy } from './policy.js';
import { engine, sessionLabels, tempDir, uniqueName } from '../../test/support/index.js';
import { postJson, send } from '../../test/support/rawhttp.js';

const BUSYBOX = 'berth-local/busybox';

describe('guard state: created containers are forgotten once gone', () => {
  const c = engine();
  const dir = tempDir('berth-state-');
  const sock = join(dir.path, 'p.sock');
  const tenant = uniqueName('state');
  const transport = createTransport(parseEndpoint({ DOCKER_HOST: 'unix:///var/run/docker.sock' }));
  const proxy = new GuardProxy({
    tenant,
    transport,
    maps: [],
    policy: defaultPolicy(),
    labels: { ...sessionLabels(), [LABEL_TENANT]: tenant },
    forgetFrom: 3,
  });
  const server = http.createServer((req, res) => void proxy.handle(req, res));

  before(async () => {
    await new Promise<void>((resolve) => server.listen(sock, resolve));
  });

  after(async () => {
    await proxy.cleanup();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    transport.close();
    const left = await containers(c).list({ all: true, filters: { label: [`${LABEL_TENANT}=${tenant}`] } });
    c.close();
    dir[Symbol.dispose]();
    assert.deepEqual(left, [], 'no container of this suite is left');
  });

  const create = async (extra: Record<string, unknown> = {}) => {
    const r = await postJson(
      sock,
      '/v1.41/containers/create',
      JSON.stringify({ Image: BUSYBOX, Cmd: ['true'], HostConfig: { NetworkMode: 'none', ...extra } }),
    );
    assert.equal(r.status, 201, r.text);
    return (JSON.parse(r.text) as { Id: string }).Id;
  };
  const remembered = () => [...proxy.state.containers].sort();
  const inspectStatus = async (id: string) =>
    (await send(sock, { method: 'GET', path: `/v1.41/containers/${id}/json` })).status;
  const until = async (what: string, check: () => boolean | Promise<boolean>) => {
    for (let i = 0; i < 200; i++) {
      if (await check()) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.fail(`timed out waiting until ${what}`);
  };

  test('a delete and a prune through the guard forget what they removed', async () => {
    const a = await create();
    const b = await create();
    assert.deepEqual(remembered(), [a, b].sort());
    const del = await send(sock, { method: 'DELETE', path: `/v1.41/containers/${a}` });
    assert.equal(del.status, 204, del.text);
    assert.deepEqual(remembered(), [b]);
    const prune = await send(sock, { method: 'POST', path: '/v1.41/containers/prune' });
    assert.equal(prune.status, 200, prune.text);
    assert.deepEqual((JSON.parse(prune.text) as { ContainersDeleted: string[] }).ContainersDeleted, [b]);
    assert.deepEqual(remembered(), []);
  });

  test('containers gone another way are forgotten as the set grows; live ones stay, and stay the tenant’s', async () => {
    // Two containers that remove themselves (AutoRemove): the guard never sees them go.
    const gone: string[] = [];
    for (let i = 0; i < 2; i++) {
      const id = await create({ AutoRemove: true });
      gone.push(id);
      const start = await send(sock, { method: 'POST', path: `/v1.41/containers/${id}/start` });
      assert.equal(start.status, 204, start.text);
      await until(
        `${id} is gone from the engine`,
        async () => (await containers(c).list({ all: true, filters: { id: [id] } })).length === 0,
      );
    }
    assert.deepEqual(remembered(), [...gone].sort(), 'below the threshold nothing is forgotten');
    // The third remembered container starts a pass (forgetFrom: 3): the two gone are dropped.
    const live = await create();
    await until('the gone containers are forgotten', () => remembered().length === 1);
    assert.deepEqual(remembered(), [live]);
    assert.equal(await inspectStatus(live), 200, 'the live one is still the tenant’s');
    // A pass drops only what the engine no longer has.
    await proxy.forgetGoneContainers();
    assert.deepEqual(remembered(), [live]);
    // The host removes the live one behind the guard's back: the next pass forgets it.
    await containers(c).remove(live, { force: true });
    await proxy.forgetGoneContainers();
    assert.deepEqual(remembered(), []);
    assert.equal(await inspectStatus(live), 404);
  });
});
