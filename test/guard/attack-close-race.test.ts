/**
 * Attack: making objects that outlive the guard's cleanup. A close gives requests in flight a
 * grace period, then cleans up; a create the engine answers only after that first pass (a slow
 * engine, or a request timed to land late) must still be removed, and a handler still in flight
 * must not start a new create once the guard is closing.
 *
 * The engine is the real one, reached through a relay that holds chosen requests for a while — the
 * only way to make "the engine answers late" happen on cue.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { LABEL_TENANT } from '../../src/common/index.js';
import { containers, networks, volumes } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import { engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { send } from '../support/rawhttp.js';
import { holdingRelay } from '../support/holdrelay.js';

async function owned(tenant: string) {
  const c = engine();
  try {
    const f = { label: [`${LABEL_TENANT}=${tenant}`] };
    return {
      containers: (await containers(c).list({ all: true, filters: f })).length,
      networks: (await networks(c).list(f)).length,
      volumes: (await volumes(c).list(f)).length,
    };
  } finally {
    c.close();
  }
}

/**
 * A guard whose engine is reached through a relay that holds requests matching `hold` (the tests
 * time out rather than hang when the guard stops sending such a request).
 */
async function heldGuard(
  dir: string,
  hold: RegExp,
  name: string,
  timing: { drainMs: number; lateMs?: number },
) {
  const relay = await holdingRelay(join(dir, 'engine.sock'), hold, 1500);
  const tenant = uniqueName(name);
  const sock = join(dir, 'g.sock');
  const guard = await createGuard({
    tenant,
    listen: sock,
    upstream: `unix://${join(dir, 'engine.sock')}`,
    labels: sessionLabels(),
    ...timing,
  });
  const close = async () => {
    await guard.close().catch(() => undefined);
    await relay.close();
  };
  return { relay, tenant, sock, guard, close };
}

/** A container create through the guard, not awaited for its answer (the guard may close first). */
const createContainer = (sock: string, hostConfig: Record<string, unknown> = {}) =>
  send(sock, {
    method: 'POST',
    path: '/v1.41/containers/create',
    headers: [['Content-Type', 'application/json']],
    body: JSON.stringify({ Image: 'berth-local/busybox', Cmd: ['true'], HostConfig: hostConfig }),
  }).catch(() => undefined);

/** Until whatever the guard still sent after its close has reached the engine and been answered. */
async function settled(relay: Awaited<ReturnType<typeof holdingRelay>>): Promise<void> {
  await Promise.race([relay.answered, new Promise((r) => setTimeout(r, 10_000).unref())]);
  await relay.quiet(500);
}

test(
  'a create the engine answers after the cleanup’s first pass is removed by a second one',
  { timeout: 60_000 },
  async () => {
    using dir = tempDir('berth-close-race-');
    const g = await heldGuard(dir.path, /^POST \/v[\d.]+\/containers\/create/, 'closerace', { drainMs: 200 });
    try {
      const volume = await send(g.sock, {
        method: 'POST',
        path: '/v1.41/volumes/create',
        headers: [['Content-Type', 'application/json']],
        body: '{}',
      });
      assert.equal(volume.status, 201, volume.text);
      // No network: the late create must not fail only because the cleanup removed the network.
      const create = createContainer(g.sock, { NetworkMode: 'none' });
      await g.relay.seen;
      await g.guard.close({ cleanup: true });
      await create;
      await settled(g.relay);
      assert.deepEqual(await owned(g.tenant), { containers: 0, networks: 0, volumes: 0 });
    } finally {
      await g.close();
    }
  },
);

test(
  'a handler in flight when the guard closes sends no create afterwards, and leaves nothing',
  { timeout: 60_000 },
  async () => {
    using dir = tempDir('berth-close-race-');
    // The tenant network's lookup is held: the create handler is waiting on it when the guard closes.
    const g = await heldGuard(dir.path, /^GET \/networks\?filters=/, 'closestart', {
      drainMs: 100,
      lateMs: 5000,
    });
    try {
      const create = createContainer(g.sock);
      await g.relay.seen;
      const closing = Date.now();
      await g.guard.close({ cleanup: true });
      await create;
      await settled(g.relay);
      assert.deepEqual(await owned(g.tenant), { containers: 0, networks: 0, volumes: 0 });
      // The held lookup is answered while the close waits for it; the handler must stop there.
      const late = g.relay.sent.filter((r) => r.at >= closing && r.line.startsWith('POST'));
      assert.deepEqual(late, [], 'no POST reached the engine once the guard was closing');
    } finally {
      await g.close();
    }
  },
);
