/**
 * Hijacked streams through the guard end when their client does. An attach without stdin is one
 * dockerd never reads from, so a client that hangs up must make the guard close the engine side
 * too; otherwise every such attach keeps a connection and file descriptors in dockerd (and in the
 * guard) for as long as the container runs — enough of them and dockerd stops accepting
 * connections (this is how a 200-client bench once hung the engine).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DockerClient } from '../engine/index.js';
import { createGuard } from './index.js';
import type { GuardHandle } from './index.js';
import { docker, sessionLabels, tempDir, uniqueName } from '../../test/support/index.js';

const fdCount = (pid: number | 'self') => readdirSync(`/proc/${pid}/fd`).length;

function dockerdPid(): number | undefined {
  for (const f of ['/run/berth/dockerd.pid', '/var/run/docker.pid'])
    if (existsSync(f)) {
      const pid = Number(readFileSync(f, 'utf8').trim());
      if (pid > 0 && existsSync(`/proc/${pid}/fd`)) return pid;
    }
  return undefined;
}

/** Waits until `f()` is at most `limit` (or the time is up); answers the last value. */
async function settle(f: () => number, limit: number, ms = 10_000): Promise<number> {
  const end = Date.now() + ms;
  let v = f();
  while (v > limit && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 100));
    v = f();
  }
  return v;
}

describe('guard: hijacked streams end with their client', () => {
  const dir = tempDir('berth-splice-');
  let guard: GuardHandle;
  let client: DockerClient;
  let ticker = '';

  before(async () => {
    guard = await createGuard({
      tenant: uniqueName('splice'),
      listen: join(dir.path, 'g.sock'),
      labels: sessionLabels(),
    });
    client = new DockerClient({ env: { DOCKER_HOST: guard.address } });
    const r = await docker(guard.address, [
      'run',
      '-d',
      '--network',
      'none',
      'berth-local/busybox',
      'sh',
      '-c',
      'while true; do echo tick; sleep 0.1; done',
    ]);
    assert.equal(r.code, 0, r.stderr);
    ticker = r.stdout.trim();
  });

  after(async () => {
    client.close();
    await guard.close({ cleanup: true });
    dir[Symbol.dispose]();
  });

  test('40 attaches whose clients hang up leave no connection open in the guard or in dockerd', async () => {
    const attachOnce = async () => {
      const { socket } = await client.hijack({
        path: `/containers/${ticker}/attach`,
        query: { stream: 1, stdout: 1, stderr: 1 },
      });
      await new Promise<void>((resolve) => socket.once('data', () => resolve()));
      socket.destroy();
    };
    await attachOnce(); // warm: the guard's and the client's pools hold what they keep
    await new Promise((r) => setTimeout(r, 300));
    const engine = dockerdPid();
    const mine0 = fdCount('self');
    const engine0 = engine === undefined ? 0 : fdCount(engine);
    for (let i = 0; i < 40; i++) await attachOnce();
    const mine = await settle(() => fdCount('self'), mine0 + 5);
    assert.ok(mine <= mine0 + 5, `this process (guard and client) holds ${mine - mine0} more descriptors`);
    if (engine !== undefined) {
      const eng = await settle(() => fdCount(engine), engine0 + 5);
      assert.ok(eng <= engine0 + 5, `dockerd holds ${eng - engine0} more descriptors`);
    }
  });
});
