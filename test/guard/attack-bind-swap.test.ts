/**
 * Attack: a bind source swapped for a symlink after the guard checked it. dockerd keeps a bind
 * source as a path and resolves it again at every start, restart and archive call on a stopped
 * container; the tenant owns everything below its mapped folder, so it creates a container on
 * `/workspace/a`, replaces `a` with a symlink to `/`, and starts. The guard must have forwarded a
 * source the tenant cannot change (a pin of the folder it checked), so the container still sees
 * that folder, never the host's `/`. Where the guard cannot pin, only mapped folders themselves
 * can be bound.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { containers } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { docker, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, messageOf, postJson, send } from '../support/rawhttp.js';

const IMAGE = 'berth-local/busybox';
const PINS = `/run/berth/pins/${process.pid}`;

/** Mount points under this process's pin folder. */
function pinMounts(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .filter((p) => p.startsWith(`${PINS}/`));
}

/** The guard releases a pin after it answers the delete: wait (bounded) for it to go. */
async function unmounted(pin: string): Promise<boolean> {
  for (let i = 0; i < 100 && pinMounts().includes(pin); i++) await new Promise((r) => setTimeout(r, 50));
  return !pinMounts().includes(pin);
}

describe('attack: bind source swapped for a symlink after the check', () => {
  const c = engine();
  const dir = tempDir('berth-bindswap-');
  const ws = join(dir.path, 'ws');
  const sock = join(dir.path, 'g.sock');
  const rootsSock = join(dir.path, 'r.sock');
  let guard: GuardHandle;
  let roots: GuardHandle;
  const tenant = uniqueName('swap');

  before(async () => {
    mkdirSync(ws);
    guard = await createGuard({
      tenant,
      listen: sock,
      maps: [{ jobPath: '/workspace', hostPath: ws }],
      labels: sessionLabels(),
    });
    roots = await createGuard({
      tenant: uniqueName('roots'),
      listen: rootsSock,
      maps: [{ jobPath: '/workspace', hostPath: ws }],
      labels: sessionLabels(),
      bindPins: 'roots',
    });
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    await roots.close({ cleanup: true }).catch(() => undefined);
    c.close();
    dir[Symbol.dispose]();
  });

  const firstBind = async (id: string): Promise<string> => {
    const binds = (await containers(c).inspect(id)).HostConfig.Binds;
    return Array.isArray(binds) && typeof binds[0] === 'string' ? binds[0] : '';
  };

  /** A folder of the tenant's own, holding `own.txt`. */
  const ownFolder = (rel: string): string => {
    const p = join(ws, rel);
    mkdirSync(p, { recursive: true });
    writeFileSync(join(p, 'own.txt'), 'mine\n');
    return p;
  };

  /** The tenant replaces `rel` (inside the workspace) with a symlink to `target`. */
  const swap = (rel: string, target: string): void => {
    renameSync(join(ws, rel), join(ws, `${rel}.moved`));
    symlinkSync(target, join(ws, rel));
  };

  const create = async (s: string, hostConfig: unknown, cmd: string[]): Promise<string> => {
    const r = await postJson(
      s,
      '/v1.41/containers/create',
      JSON.stringify({
        Image: IMAGE,
        Cmd: cmd,
        HostConfig: { NetworkMode: 'none', ...(hostConfig as object) },
      }),
    );
    assert.equal(r.status, 201, r.text);
    return (JSON.parse(r.text) as { Id: string }).Id;
  };

  /** Starts through the guard, attached; the container's output. */
  const startAttached = async (id: string): Promise<string> => {
    const r = await docker(guard.address, ['start', '-a', id]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout;
  };

  test('Binds: the folder swapped for a symlink to / before start and before restart', async () => {
    ownFolder('a');
    const id = await create(sock, { Binds: ['/workspace/a:/h'] }, ['ls', '/h']);
    const forwarded = await firstBind(id);
    assert.ok(!forwarded.startsWith(`${ws}/a:`), `forwarded a path the tenant can change: ${forwarded}`);
    swap('a', '/');
    const first = await startAttached(id);
    assert.match(first, /own\.txt/, first);
    assert.doesNotMatch(first, /\betc\b|\bproc\b/, `the host's / got mounted: ${first}`);
    const again = await startAttached(id);
    assert.match(again, /own\.txt/, again);
    assert.doesNotMatch(again, /\betc\b/, again);
    // A stopped container's archive: dockerd mounts the source again to read it.
    const tar = await send(sock, { method: 'GET', path: `/v1.41/containers/${id}/archive?path=/h` });
    assert.equal(tar.status, 200, tar.text.slice(0, 200));
    assert.ok(tar.body.includes('own.txt'), 'the archive is the tenant’s folder');
    assert.ok(!tar.body.includes('h/etc/'), 'the archive is not the host’s /');
    const del = await send(sock, { method: 'DELETE', path: `/v1.41/containers/${id}` });
    assert.equal(del.status, 204, del.text);
  });

  test('Mounts: a folder above the source swapped (sub/etc becomes /etc)', async () => {
    ownFolder('sub/etc');
    const id = await create(
      sock,
      { Mounts: [{ Type: 'bind', Source: '/workspace/sub/etc', Target: '/h', ReadOnly: true }] },
      ['ls', '/h'],
    );
    swap('sub', '/');
    const out = await startAttached(id);
    assert.match(out, /own\.txt/, out);
    assert.doesNotMatch(out, /passwd|os-release/, `the host's /etc got mounted: ${out}`);
    await send(sock, { method: 'DELETE', path: `/v1.41/containers/${id}` });
  });

  test('a missing Binds source is made inside the workspace; a symlink planted there later changes nothing', async () => {
    const id = await create(sock, { Binds: ['/workspace/fresh/deep:/h'] }, ['ls', '-a', '/h']);
    assert.ok(statSync(join(ws, 'fresh', 'deep')).isDirectory(), 'made where the job sees it');
    writeFileSync(join(ws, 'fresh', 'deep', 'own.txt'), 'mine\n');
    swap('fresh', '/');
    const out = await startAttached(id);
    assert.match(out, /own\.txt/, out);
    await send(sock, { method: 'DELETE', path: `/v1.41/containers/${id}` });
  });

  test('symlinks inside the workspace still work: relative, and absolute as the job sees them', async () => {
    ownFolder('target');
    symlinkSync('target', join(ws, 'rel'));
    symlinkSync('/workspace/target', join(ws, 'abs'));
    const id = await create(sock, { Binds: ['/workspace/rel:/r', '/workspace/abs:/a:ro'] }, [
      'sh',
      '-c',
      'cat /r/own.txt /a/own.txt',
    ]);
    assert.equal(await startAttached(id), 'mine\nmine\n');
    await send(sock, { method: 'DELETE', path: `/v1.41/containers/${id}` });
  });

  test('a Mounts source that does not exist is a 400 (dockerd would refuse it too), nothing made', async () => {
    const before = await containers(c).list({ all: true, filters: { label: [`io.berth.tenant=${tenant}`] } });
    const r = await postJson(
      sock,
      '/v1.41/containers/create',
      JSON.stringify({
        Image: IMAGE,
        HostConfig: { Mounts: [{ Type: 'bind', Source: '/workspace/nothing-here', Target: '/h' }] },
      }),
    );
    expectRefused(r, 'binds', 'missing Mounts source', 400);
    assert.match(messageOf(r) ?? '', /does not exist/);
    assert.equal(existsSync(join(ws, 'nothing-here')), false);
    const after = await containers(c).list({ all: true, filters: { label: [`io.berth.tenant=${tenant}`] } });
    assert.equal(after.length, before.length);
  });

  test('pins go with their containers and with the guard', async () => {
    ownFolder('p1');
    const id = await create(sock, { Binds: ['/workspace/p1:/h'] }, ['true']);
    const pinned = (await firstBind(id)).split(':')[0] ?? '';
    assert.ok(pinMounts().includes(pinned), `pin ${pinned} is mounted`);
    // A refused create releases the pin it made.
    const refused = await postJson(
      sock,
      '/v1.41/containers/create',
      JSON.stringify({ Image: IMAGE, HostConfig: { Binds: ['/workspace/p1:/h', '/workspace/../..:/x'] } }),
    );
    expectRefused(refused, 'binds');
    assert.ok(pinMounts().includes(pinned), 'the first container still holds its pin');
    const del = await send(sock, { method: 'DELETE', path: `/v1.41/containers/${id}?force=1` });
    assert.equal(del.status, 204, del.text);
    assert.ok(await unmounted(pinned), `pin ${pinned} released with its container`);

    const g = await createGuard({
      tenant: uniqueName('pinclose'),
      listen: join(dir.path, 'c.sock'),
      maps: [{ jobPath: '/workspace', hostPath: ws }],
      labels: sessionLabels(),
    });
    const sock2 = join(dir.path, 'c.sock');
    const r = await postJson(
      sock2,
      '/v1.41/containers/create',
      JSON.stringify({ Image: IMAGE, HostConfig: { NetworkMode: 'none', Binds: ['/workspace/p1:/h'] } }),
    );
    assert.equal(r.status, 201, r.text);
    const id2 = (JSON.parse(r.text) as { Id: string }).Id;
    const pin2 = (await firstBind(id2)).split(':')[0] ?? '';
    assert.ok(pinMounts().includes(pin2));
    await g.close({ cleanup: true });
    assert.ok(!pinMounts().includes(pin2), 'the guard’s close released its pins');
  });

  test('where the guard does not pin, only the mapped folder itself can be bound', async () => {
    ownFolder('r1');
    const r = await postJson(
      rootsSock,
      '/v1.41/containers/create',
      JSON.stringify({ Image: IMAGE, HostConfig: { Binds: ['/workspace/r1:/h'] } }),
    );
    expectRefused(r, 'binds', 'below the map root');
    assert.match(messageOf(r) ?? '', /only the mapped folder itself/);
    const id = await create(rootsSock, { Binds: ['/workspace:/w:ro'] }, ['ls', '/w/r1']);
    const forwarded = await firstBind(id);
    assert.equal(forwarded, `${ws}:/w:ro`);
    const del = await send(rootsSock, { method: 'DELETE', path: `/v1.41/containers/${id}` });
    assert.equal(del.status, 204, del.text);
    rmSync(join(ws, 'r1'), { recursive: true });
  });

  test('the last guard of a process closed, no pin and no pin folder of the process is left', async () => {
    await guard.close({ cleanup: true });
    await roots.close({ cleanup: true });
    assert.deepEqual(pinMounts(), []);
    // Red-team pass 19: the process's empty folder stayed, one per guard process on a runner.
    assert.equal(existsSync(PINS), false, `${PINS} is left`);
  });
});
