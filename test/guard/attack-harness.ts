/**
 * Shared arena for the guard attack suite: an attacking tenant's guard (with a mapped workspace
 * holding an escaping symlink), a second tenant's guard, and victims that every attack must leave
 * alone — a host container (made directly), a second tenant's container, stopped ones of each (for
 * prune), volumes, networks and image tags of each. `snapshot()` reads the engine DIRECTLY (never
 * through the guard) so attacks are checked for "nothing happened upstream", not only their status.
 */
import assert from 'node:assert/strict';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LABEL_TENANT } from '../../src/common/index.js';
import { containers, images, networks, volumes } from '../../src/engine/index.js';
import type { DockerClient } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { AuditRecord, GuardHandle } from '../../src/guard/index.js';
import {
  auditRecords,
  docker,
  engine,
  sessionLabels,
  SESSION,
  tempDir,
  uniqueName,
} from '../support/index.js';

export const IMAGE = 'berth-local/busybox';

export interface Victims {
  hostRunning: string;
  hostStopped: string;
  otherRunning: string;
  otherStopped: string;
  hostVolume: string;
  otherVolume: string;
  hostNetwork: string;
  otherNetwork: string;
  /** `repo:tag` made directly (the host owns it). */
  hostTag: string;
  /** `repo:tag` made through the second tenant's guard. */
  otherTag: string;
}

export interface Snapshot {
  containers: string[];
  networks: string[];
  volumes: string[];
  /** Tags carrying the session id, with the image ID each points at. */
  tags: Record<string, string>;
}

export interface Arena {
  c: DockerClient;
  dir: string;
  /** Host folder mapped as /workspace for the attacker. */
  ws: string;
  tenant: string;
  other: string;
  /** The attacker's guard socket path and DOCKER_HOST. */
  sock: string;
  host: string;
  otherSock: string;
  otherHost: string;
  auditPath: string;
  guard: GuardHandle;
  otherGuard: GuardHandle;
  v: Victims;
  snapshot(): Promise<Snapshot>;
  /** Asserts the engine looks like `before` for the attacker (no object created, changed or removed). */
  unchanged(before: Snapshot, what: string): Promise<void>;
  /** Asserts every victim exists with its original ID, the running ones still run, tags unmoved. */
  victimsIntact(): Promise<void>;
  /** Audit lines written so far. */
  audit(): AuditRecord[];
  close(): Promise<void>;
}

async function tagId(c: DockerClient, ref: string): Promise<string | undefined> {
  return (await images(c).find(ref))?.Id;
}

export async function setupArena(prefix: string): Promise<Arena> {
  const c = engine();
  const tmp = tempDir(`berth-${prefix}-`);
  const dir = tmp.path;
  const ws = join(dir, 'workspace');
  mkdirSync(join(ws, 'sub'), { recursive: true });
  writeFileSync(join(ws, 'hello.txt'), 'hello\n');
  symlinkSync('/', join(ws, 'escape'));
  symlinkSync('/etc', join(ws, 'sub', 'etc'));
  const tenant = uniqueName(`${prefix}a`);
  const other = uniqueName(`${prefix}b`);
  const sock = join(dir, 'a.sock');
  const otherSock = join(dir, 'b.sock');
  const auditPath = join(dir, 'audit.log');
  const made: { containers: string[]; volumes: string[]; networks: string[]; tags: string[] } = {
    containers: [],
    volumes: [],
    networks: [],
    tags: [],
  };
  let guard: GuardHandle | undefined;
  let otherGuard: GuardHandle | undefined;

  const close = async () => {
    await guard?.close({ cleanup: true }).catch(() => undefined);
    await otherGuard?.close({ cleanup: true }).catch(() => undefined);
    for (const id of made.containers)
      await containers(c)
        .remove(id)
        .catch(() => undefined);
    for (const n of made.volumes)
      await volumes(c)
        .remove(n)
        .catch(() => undefined);
    for (const n of made.networks)
      await networks(c)
        .remove(n)
        .catch(() => undefined);
    for (const t of made.tags)
      await images(c)
        .remove(t)
        .catch(() => undefined);
    // Whatever an attack managed to create despite the guard, labelled or named for this arena.
    for (const label of [`${LABEL_TENANT}=${tenant}`, `${LABEL_TENANT}=${other}`]) {
      for (const x of await containers(c)
        .list({ filters: { label: [label] } })
        .catch(() => []))
        await containers(c).remove(x.Id);
      for (const x of await volumes(c)
        .list({ label: [label] })
        .catch(() => []))
        await volumes(c).remove(x.Name);
      for (const x of await networks(c)
        .list({ label: [label] })
        .catch(() => []))
        await networks(c).remove(x.Id);
    }
    c.close();
    tmp[Symbol.dispose]();
  };

  try {
    guard = await createGuard({
      tenant,
      listen: sock,
      maps: [{ jobPath: '/workspace', hostPath: ws }],
      labels: sessionLabels(),
      audit: auditPath,
    });
    otherGuard = await createGuard({ tenant: other, listen: otherSock, labels: sessionLabels() });
    const host = guard.address;
    const otherHost = otherGuard.address;

    const direct = async (name: string, run: boolean) => {
      const { Id } = await containers(c).create(
        {
          Image: IMAGE,
          Cmd: ['sleep', '3600'],
          Labels: sessionLabels(),
          HostConfig: { NetworkMode: 'none' },
        },
        name,
      );
      made.containers.push(Id);
      if (run) await containers(c).start(Id);
      return Id;
    };
    const viaOther = async (args: string[]) => {
      const r = await docker(otherHost, args);
      assert.equal(r.code, 0, `second tenant: docker ${args.join(' ')}: ${r.stderr}`);
      return r.stdout.trim();
    };
    const hostRunning = await direct(uniqueName('hostrun'), true);
    const hostStopped = await direct(uniqueName('hoststop'), false);
    const otherRunning = await viaOther([
      'run',
      '-d',
      '--name',
      uniqueName('otherrun'),
      IMAGE,
      'sleep',
      '3600',
    ]);
    const otherStopped = await viaOther(['create', '--name', uniqueName('otherstop'), IMAGE, 'true']);
    const hostVolume = uniqueName('hostvol');
    await volumes(c).create({ Name: hostVolume, Labels: sessionLabels() });
    made.volumes.push(hostVolume);
    const otherVolume = await viaOther(['volume', 'create', uniqueName('othervol')]);
    const hostNetwork = (await networks(c).create({ Name: uniqueName('hostnet'), Labels: sessionLabels() }))
      .Id;
    made.networks.push(hostNetwork);
    const otherNetwork = await viaOther(['network', 'create', uniqueName('othernet')]);
    const hostRepo = `berth-atk-host-${SESSION}-${prefix}`;
    await images(c).tag(IMAGE, hostRepo, 'v1');
    made.tags.push(`${hostRepo}:v1`);
    const otherRepo = `berth-atk-other-${SESSION}-${prefix}`;
    await viaOther(['tag', IMAGE, `${otherRepo}:v1`]);
    made.tags.push(`${otherRepo}:v1`);
    // Warm the attacker up: its tenant network exists before the first snapshot.
    const warm = await docker(host, ['run', '--rm', IMAGE, 'true']);
    assert.equal(warm.code, 0, `attacker warm-up: ${warm.stderr}`);

    const v: Victims = {
      hostRunning,
      hostStopped,
      otherRunning,
      otherStopped,
      hostVolume,
      otherVolume,
      hostNetwork,
      otherNetwork,
      hostTag: `${hostRepo}:v1`,
      otherTag: `${otherRepo}:v1`,
    };
    const original: Record<string, string | undefined> = {
      [v.hostTag]: await tagId(c, v.hostTag),
      [v.otherTag]: await tagId(c, v.otherTag),
    };

    const snapshot = async (): Promise<Snapshot> => {
      const label = { label: [`${LABEL_TENANT}=${tenant}`] };
      const tags: Record<string, string> = {};
      for (const img of await images(c).list()) {
        for (const t of img.RepoTags ?? []) if (t.includes(`${SESSION}-${prefix}`)) tags[t] = img.Id;
      }
      return {
        containers: (await containers(c).list({ filters: label })).map((x) => x.Id).sort(),
        networks: (await networks(c).list(label)).map((x) => x.Id).sort(),
        volumes: (await volumes(c).list(label)).map((x) => x.Name).sort(),
        tags,
      };
    };
    const victimsIntact = async () => {
      for (const [id, running] of [
        [hostRunning, true],
        [hostStopped, false],
        [otherRunning, true],
        [otherStopped, false],
      ] as const) {
        const i = await containers(c).find(id);
        assert.ok(i, `victim container ${id} is gone`);
        assert.equal(i.State.Running, running, `victim container ${id} running=${String(i.State.Running)}`);
        assert.equal((i.State as { Paused?: boolean }).Paused, false, `victim container ${id} was paused`);
      }
      for (const n of [hostVolume, otherVolume]) await volumes(c).inspect(n);
      for (const n of [hostNetwork, otherNetwork]) await networks(c).inspect(n);
      for (const [t, id] of Object.entries(original))
        assert.equal(await tagId(c, t), id, `victim tag ${t} moved or vanished`);
    };
    const unchanged = async (before: Snapshot, what: string) => {
      const now = await snapshot();
      assert.deepEqual(now, before, `${what}: something changed upstream`);
    };
    const audit = () => auditRecords(auditPath);
    return {
      c,
      dir,
      ws,
      tenant,
      other,
      sock,
      host,
      otherSock,
      otherHost,
      auditPath,
      guard,
      otherGuard,
      v,
      snapshot,
      unchanged,
      victimsIntact,
      audit,
      close,
    };
  } catch (err) {
    await close();
    throw err;
  }
}
