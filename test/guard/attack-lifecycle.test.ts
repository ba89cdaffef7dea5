/**
 * Attack suite, lifecycle through the real CLI: `berth guard` spawned as a process with --map and
 * --audit; CLI attacks through it are refused and audited; after SIGTERM the tenant's own
 * containers, networks, volumes and image tags are gone, while a host container and a second
 * tenant's container (and their tags) survive — checked directly on the engine.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, symlinkSync } from 'node:fs';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { LABEL_TENANT } from '../../src/common/index.js';
import { containers, images, networks, volumes } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import {
  BERTH_CMD,
  auditRecords,
  SESSION,
  docker,
  engine,
  sessionLabels,
  start,
  tempDir,
  uniqueName,
} from '../support/index.js';
import { expectRefused, send } from '../support/rawhttp.js';

const IMAGE = 'berth-local/busybox';

test('berth guard CLI: attacks refused and audited; SIGTERM removes only the tenant’s objects', async () => {
  using dir = tempDir('berth-atk-life-');
  using c = engine();
  const ws = join(dir.path, 'ws');
  mkdirSync(ws);
  symlinkSync('/', join(ws, 'escape'));
  const tenant = uniqueName('life');
  const sock = join(dir.path, 'docker.sock');
  const auditPath = join(dir.path, 'audit.log');
  const host = `unix://${sock}`;
  const other = await createGuard({
    tenant: uniqueName('lifeother'),
    listen: join(dir.path, 'o.sock'),
    labels: sessionLabels(),
  });
  const hostCtr = await containers(c).create(
    { Image: IMAGE, Cmd: ['sleep', '600'], Labels: sessionLabels(), HostConfig: { NetworkMode: 'none' } },
    uniqueName('lifehost'),
  );
  const hostTag = `berth-atk-lifehost-${SESSION}:v1`;
  const ownTag = `berth-atk-lifeown-${SESSION}:v1`;
  const [node = process.execPath, ...pre] = BERTH_CMD;
  const child = start(
    node,
    [
      ...pre,
      'guard',
      '--tenant',
      tenant,
      '--listen',
      sock,
      '--map',
      `/workspace=${ws}`,
      '--audit',
      auditPath,
    ],
    { env: { ...process.env } },
  );
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let held: Socket | undefined;
  try {
    await containers(c).start(hostCtr.Id);
    await images(c).tag(IMAGE, hostTag.split(':')[0] ?? '', 'v1');
    const hostTagId = (await images(c).inspect(hostTag)).Id;
    const o = await docker(other.address, ['run', '-d', IMAGE, 'sleep', '600']);
    assert.equal(o.code, 0, o.stderr);
    const otherCtr = o.stdout.trim();
    await new Promise<void>((resolve, reject) => {
      let out = '';
      child.stdout?.on('data', (b: Buffer) => {
        out += b.toString();
        if (out.includes('DOCKER_HOST=')) resolve();
      });
      child.on('exit', (code) => reject(new Error(`berth guard exited ${String(code)}`)));
    });

    // Own objects, through the CLI guard.
    const run = await docker(host, ['run', '-d', '--name', uniqueName('lifeown'), IMAGE, 'sleep', '600']);
    assert.equal(run.code, 0, run.stderr);
    assert.equal((await docker(host, ['volume', 'create', uniqueName('lifevol')])).code, 0);
    assert.equal((await docker(host, ['network', 'create', uniqueName('lifenet')])).code, 0);
    const tag = await docker(host, ['tag', IMAGE, ownTag]);
    assert.equal(tag.code, 0, tag.stderr);

    // Attacks through the CLI guard: refused, nothing created, audited.
    const label = { label: [`${LABEL_TENANT}=${tenant}`] };
    const count = async () => (await containers(c).list({ filters: label })).length;
    const before = await count();
    for (const [args, rule] of [
      [['--privileged'], 'privileged'],
      [['-v', '/:/host'], 'binds'],
      [['-v', '/workspace/escape:/h'], 'binds'],
      [['--pid', 'host'], 'namespaces'],
      [['--cap-add', 'SYS_ADMIN'], 'capabilities'],
    ] as const) {
      const r = await docker(host, ['run', '--rm', ...args, IMAGE, 'true']);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, new RegExp(`berth: ${rule}: `), args.join(' '));
    }
    expectRefused(
      await send(sock, {
        method: 'POST',
        path: '/v1.41/containers/create',
        headers: [['Content-Type', 'application/json']],
        body: `{"Image":"${IMAGE}","hostconfig":{"privileged":false,"PRIVILEGED":true}}`,
      }),
      'privileged',
    );
    assert.equal(await count(), before, 'an attack created a container');
    const tagOver = await docker(host, ['tag', IMAGE, hostTag]);
    assert.match(tagOver.stderr, /berth: image-tag: /);

    // Requests stalled mid-body (an exec start upgrade whose body never comes), one whose client
    // went away and one still connected, must not keep SIGTERM from cleaning up.
    const stalled = (hangUp: boolean) =>
      new Promise<Socket>((resolve) => {
        const s = connect(sock, () => {
          s.write(
            'POST /v1.41/exec/x/start HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n' +
              'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{}',
          );
          setTimeout(() => {
            if (hangUp) s.destroy();
            resolve(s);
          }, 300);
        });
        s.on('error', () => undefined);
      });
    await stalled(true);
    held = await stalled(false);

    // SIGTERM: own objects gone, others survive.
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
    const audit = auditRecords(auditPath);
    for (const rule of ['privileged', 'binds', 'namespaces', 'capabilities', 'image-tag'])
      assert.ok(
        audit.some((r) => r.rule === rule && r.decision === 'deny' && r.tenant === tenant),
        `no audit deny line for ${rule}`,
      );
    assert.equal((await containers(c).list({ filters: label })).length, 0, 'own containers left');
    assert.equal((await volumes(c).list(label)).length, 0, 'own volumes left');
    assert.equal((await networks(c).list(label)).length, 0, 'own networks left');
    assert.equal(await images(c).find(ownTag), undefined, 'own tag left');
    assert.equal((await containers(c).inspect(hostCtr.Id)).State.Running, true, 'host container hit');
    assert.equal((await containers(c).inspect(otherCtr)).State.Running, true, 'other tenant hit');
    assert.equal((await images(c).inspect(hostTag)).Id, hostTagId, 'host tag moved');
    assert.ok(await images(c).find(IMAGE), 'the shared base image is gone');
  } finally {
    held?.destroy();
    if (child.exitCode === null) {
      child.kill('SIGTERM');
      await exited;
    }
    await other.close({ cleanup: true });
    await containers(c).remove(hostCtr.Id);
    await images(c)
      .remove(hostTag)
      .catch(() => undefined);
    await images(c)
      .remove(ownTag)
      .catch(() => undefined);
  }
});
