/**
 * The twenty-eighth red-team pass: downloads a tenant opens and never reads. Each export (or
 * archive get) holds an engine connection, relay buffers and a `docker-tar` process of dockerd's
 * (about 17 MiB): 1000 of them took the host from 1.6 to 13 GB. A guard relays at most 32 at once
 * (rule `limits`); the slots come back when the clients go.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { docker, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, send } from '../support/rawhttp.js';

const IMAGE = 'berth-local/busybox';
const LIMIT = 32;

describe('attack: pass 28 (downloads never read)', () => {
  const dir = tempDir('berth-pass28-');
  const sock = join(dir.path, 'g.sock');
  let g: GuardHandle;
  let name = '';

  before(async () => {
    g = await createGuard({ tenant: uniqueName('p28'), listen: sock, labels: sessionLabels() });
    name = uniqueName('p28c');
    const made = await docker(`unix://${sock}`, [
      'create',
      '--name',
      name,
      '--network',
      'none',
      IMAGE,
      'true',
    ]);
    assert.equal(made.code, 0, made.stderr);
  });

  after(async () => {
    await g.close({ cleanup: true });
    dir[Symbol.dispose]();
  });

  /** An export whose answer the client does not read: its head is read, then the socket pauses. */
  const stalled = (): Promise<Socket> =>
    new Promise((resolve, reject) => {
      const s = connect(sock);
      s.once('error', reject);
      s.write(`GET /v1.41/containers/${name}/export HTTP/1.1\r\nHost: docker\r\n\r\n`);
      s.once('data', (d) => {
        assert.match(d.toString('latin1'), /^HTTP\/1\.1 200/);
        s.pause();
        resolve(s);
      });
    });

  test(`at most ${LIMIT} downloads at once; the next is refused, and goes once one ends`, async () => {
    const open: Socket[] = [];
    try {
      for (let i = 0; i < LIMIT; i++) open.push(await stalled());
      const over = await send(sock, { path: `/v1.41/containers/${name}/export` });
      expectRefused(over, 'limits', 'one download over the limit');
      // Archive gets count too.
      expectRefused(
        await send(sock, { path: `/v1.41/containers/${name}/archive?path=/bin/sh` }),
        'limits',
        'an archive over the limit',
      );
    } finally {
      for (const s of open) s.destroy();
    }
    // The slots come back as the clients go: an export goes through again.
    let status = 0;
    for (let i = 0; i < 100 && status !== 200; i++) {
      const r = await send(sock, { path: `/v1.41/containers/${name}/archive?path=/bin/sh` });
      status = r.status;
      if (status !== 200) await new Promise((res) => setTimeout(res, 100));
    }
    assert.equal(status, 200);
  });

  test('an upgrade dockerd answers without upgrading passes its answer on (a detached exec 200, a paused container 409), not a 502', async () => {
    const host = `unix://${sock}`;
    const running = await docker(host, ['run', '-d', '--network', 'none', IMAGE, 'sleep', '300']);
    assert.equal(running.code, 0, running.stderr);
    const cid = running.stdout.trim();
    const exec = await send(sock, {
      method: 'POST',
      path: `/v1.41/containers/${cid}/exec`,
      headers: [['Content-Type', 'application/json']],
      body: JSON.stringify({ Cmd: ['true'] }),
    });
    assert.equal(exec.status, 201, exec.text);
    const eid = (JSON.parse(exec.text) as { Id: string }).Id;
    const upgrade: [string, string][] = [
      ['Content-Type', 'application/json'],
      ['Connection', 'Upgrade'],
      ['Upgrade', 'tcp'],
    ];
    const detached = await send(sock, {
      method: 'POST',
      path: `/v1.41/exec/${eid}/start`,
      headers: upgrade,
      body: JSON.stringify({ Detach: true }),
    });
    assert.equal(detached.status, 200, detached.text);
    // A paused container: dockerd answers 409 before it would upgrade.
    assert.equal((await docker(host, ['pause', cid])).code, 0);
    const attach = await send(sock, {
      method: 'POST',
      path: `/v1.41/containers/${cid}/attach?stream=1&stdout=1`,
      headers: upgrade,
    });
    assert.equal((await docker(host, ['unpause', cid])).code, 0);
    assert.equal(attach.status, 409, attach.text);
    assert.match(attach.text, /is paused/);
  });

  test('stdin sent in the same packet as an upgraded exec start reaches the exec', async () => {
    const host = `unix://${sock}`;
    const running = await docker(host, ['run', '-d', '--network', 'none', IMAGE, 'sleep', '300']);
    assert.equal(running.code, 0, running.stderr);
    const exec = await send(sock, {
      method: 'POST',
      path: `/v1.41/containers/${running.stdout.trim()}/exec`,
      headers: [['Content-Type', 'application/json']],
      body: JSON.stringify({ Cmd: ['cat'], AttachStdin: true, AttachStdout: true }),
    });
    assert.equal(exec.status, 201, exec.text);
    const eid = (JSON.parse(exec.text) as { Id: string }).Id;
    const body = JSON.stringify({ Detach: false });
    const out = await new Promise<string>((resolve, reject) => {
      const s = connect(sock);
      const got: Buffer[] = [];
      s.on('data', (d: Buffer) => got.push(d));
      s.on('error', reject);
      s.on('close', () => resolve(Buffer.concat(got).toString('latin1')));
      // Head, body and the first stdin in one write; then the client's end of input.
      s.write(
        `POST /v1.41/exec/${eid}/start HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\n` +
          `Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: ${body.length}\r\n\r\n${body}early-stdin\n`,
      );
      setTimeout(() => s.end(), 500);
      setTimeout(() => s.destroy(), 20_000);
    });
    assert.match(out, /^HTTP\/1\.1 101/);
    assert.match(out, /early-stdin/);
  });
});
