/**
 * Hijacked streams through the guard end when their client does: a client that hangs up makes the
 * guard close its engine connection at once (an attach without stdin is one dockerd never reads
 * from, so a half-close would leave it open). Measured on the guard's side, in this process:
 * dockerd's own descriptor count is shared with every test running at the same time, and dockerd
 * 20.10 may keep a hung-up attach for a while even for a raw-socket client, so it is no measure of
 * the guard.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { DockerClient } from '../engine/index.js';
import { createGuard } from './index.js';
import type { GuardHandle } from './index.js';
import { docker, sessionLabels, tempDir, uniqueName } from '../../test/support/index.js';

/** Unix sockets this process holds that are connected (the guard's and the client's sockets). */
function engineSockets(): number {
  const mine = new Set<string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
      if (m?.[1]) mine.add(m[1]);
    } catch {
      /* closed meanwhile */
    }
  }
  // /proc/net/unix: Num RefCount Protocol Flags Type St Inode Path; St 03 = connected.
  return readFileSync('/proc/net/unix', 'utf8')
    .split('\n')
    .slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f[5] === '03' && mine.has(f[6] ?? '')).length;
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

  test('40 attaches whose clients hang up leave no engine connection open in the guard', async () => {
    const attachOnce = async () => {
      const { socket } = await client.hijack({
        path: `/containers/${ticker}/attach`,
        query: { stream: 1, stdout: 1, stderr: 1 },
      });
      await new Promise<void>((resolve) => socket.once('data', () => resolve()));
      socket.destroy();
    };
    await attachOnce(); // warm: the pools hold what they keep
    await new Promise((r) => setTimeout(r, 300));
    const before = engineSockets();
    for (let i = 0; i < 40; i++) await attachOnce();
    const after = await settle(engineSockets, before + 2);
    assert.ok(after <= before + 2, `the guard holds ${after - before} more connections to the engine`);
  });
});
