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
import { createServer, connect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { LABEL_TENANT } from '../../src/common/index.js';
import { containers, networks, volumes } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import { engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { send } from '../support/rawhttp.js';

/**
 * A relay onto the engine's socket that holds the bytes of any request whose request line matches
 * `hold` for `ms` (and everything after it on that connection, in order). `seen` resolves when
 * such a request arrives, `answered` once the engine has answered it; `quiet(ms)` once nothing has
 * passed in either direction for that long.
 */
async function holdingRelay(path: string, hold: RegExp, ms: number) {
  let onSeen: () => void = () => undefined;
  let onAnswered: () => void = () => undefined;
  const seen = new Promise<void>((r) => (onSeen = r));
  const answered = new Promise<void>((r) => (onAnswered = r));
  let last = Date.now();
  /** Request lines as they reached the engine, with the time they did. */
  const sent: { at: number; line: string }[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const up = connect('/var/run/docker.sock');
    sockets.add(client).add(up);
    let queue = Promise.resolve();
    let waiting = false;
    client.on('data', (d: Buffer) => {
      last = Date.now();
      const held = hold.test(d.toString('latin1'));
      if (held) onSeen();
      queue = queue.then(async () => {
        if (held) await new Promise((r) => setTimeout(r, ms));
        up.write(d);
        const line = /^[A-Z]+ \S+/.exec(d.toString('latin1'));
        if (line) sent.push({ at: Date.now(), line: line[0] });
        if (held) waiting = true;
      });
    });
    up.on('data', (d: Buffer) => {
      last = Date.now();
      client.write(d);
      if (waiting) onAnswered();
    });
    // The held bytes still go out when the guard hangs up: the engine acts on what it was sent.
    client.on('end', () => void queue.then(() => up.end()));
    client.on('close', () => void queue.then(() => up.end()));
    client.on('error', () => undefined);
    up.on('end', () => client.end());
    up.on('error', () => client.destroy());
    up.on('close', () => {
      client.destroy();
      sockets.delete(up);
    });
    client.on('close', () => sockets.delete(client));
  });
  await new Promise<void>((r) => server.listen(path, r));
  return {
    seen,
    answered,
    sent,
    quiet: async (quietMs: number) => {
      while (Date.now() - last < quietMs) await new Promise((r) => setTimeout(r, 50));
    },
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

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

/** A guard whose engine is reached through a relay that holds requests matching `hold`. */
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

test('a create the engine answers after the cleanup’s first pass is removed by a second one', async () => {
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
});

test('a handler in flight when the guard closes sends no create afterwards, and leaves nothing', async () => {
  using dir = tempDir('berth-close-race-');
  // The tenant network's lookup is held: the create handler is waiting on it when the guard closes.
  const g = await heldGuard(dir.path, /^GET \/networks\/berth-/, 'closestart', {
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
});
