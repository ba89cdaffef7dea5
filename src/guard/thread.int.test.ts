/**
 * A guard in its own worker thread (what the runner starts for each job): it serves the job like
 * an in-process guard, removes the tenant's objects when closed, and its start-up errors reach the
 * caller with their codes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { BerthError, LABEL_TENANT } from '../common/index.js';
import { DockerClient, containers } from '../engine/index.js';
import { startGuardThread } from './index.js';
import { engine, sessionLabels, tempDir, uniqueName } from '../../test/support/index.js';

test('a thread guard serves its tenant, scopes what it sees and removes what it made when closed', async () => {
  const c = engine();
  const dir = tempDir('thread-guard');
  const tenant = uniqueName('t');
  const guard = await startGuardThread({
    tenant,
    listen: join(dir.path, 'g.sock'),
    labels: sessionLabels(),
  });
  const client = new DockerClient({ env: { DOCKER_HOST: guard.address } });
  try {
    await client.ping();
    const { Id } = await containers(client).create({
      Image: 'berth-local/busybox',
      Cmd: ['true'],
      HostConfig: { NetworkMode: 'none' },
    });
    const own = await containers(client).list({ all: true });
    assert.deepEqual(
      own.map((x) => x.Id),
      [Id],
    );
    const direct = await containers(c).list({ all: true, filters: { label: [`${LABEL_TENANT}=${tenant}`] } });
    assert.deepEqual(
      direct.map((x) => x.Id),
      [Id],
      'the engine has the container, labelled for the tenant',
    );
  } finally {
    client.close();
    await guard.close({ cleanup: true });
    dir[Symbol.dispose]();
  }
  const left = await containers(c).list({ all: true, filters: { label: [`${LABEL_TENANT}=${tenant}`] } });
  assert.equal(left.length, 0, 'closing with cleanup removed the tenant’s container');
  await assert.rejects(
    new DockerClient({ env: { DOCKER_HOST: guard.address } }).ping(),
    'the socket is gone',
  );
});

test('a thread guard’s start-up error reaches the caller with its code', async () => {
  const dir = tempDir('thread-guard-bad');
  try {
    await assert.rejects(
      startGuardThread({ tenant: '-not a tenant-', listen: join(dir.path, 'g.sock') }),
      (err: unknown) =>
        err instanceof BerthError && err.code === 'BERTH_USAGE' && /tenant name/.test(err.message),
    );
  } finally {
    dir[Symbol.dispose]();
  }
});
