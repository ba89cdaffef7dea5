/**
 * Attacks from the eleventh red-team pass, each sent as raw HTTP and checked on the engine:
 * - berth's own names and labels: a tenant must not make objects berth's host-side code takes
 *   for its own (a dind cache volume or sidecar name, `berth-local/*` images, `io.berth.*` labels
 *   such as the ones the benchmark reaper reads), nor swallow the guard's own `changes` line;
 * - published ports: a listener on the host (its loopback, where another tenant's pull of
 *   `127.0.0.1:PORT/app` would be served by the tenant's container);
 * - health checks every millisecond, unbounded execs and networks: load on dockerd and shared
 *   address pools outside the tenant's limits;
 * - a container list's `since`/`before` filters as an oracle for others' containers;
 * - a pruned volume's name staying the tenant's.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { containers, images, networks, volumes } from '../../src/engine/index.js';
import { createGuard, defaultPolicy } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { SESSION, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectAbsent, expectRefused, messageOf, postJson, send } from '../support/rawhttp.js';
import { replayWindow } from '../support/events.js';
import type { EngineEvent } from '../support/events.js';

const IMAGE = 'berth-local/busybox';

describe('attack: pass 11 (names, labels, ports, health checks, execs, networks, list filters)', () => {
  const c = engine();
  const dir = tempDir('berth-pass11-');
  const sock = join(dir.path, 'g.sock');
  const tenant = uniqueName('p11');
  let guard: GuardHandle;
  const hostObjects: { containers: string[]; volumes: string[] } = { containers: [], volumes: [] };

  before(async () => {
    guard = await createGuard({
      tenant,
      listen: sock,
      labels: sessionLabels(),
      policy: { ...defaultPolicy(), limits: { maxNetworks: 3 } },
    });
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    for (const id of hostObjects.containers) await containers(c).remove(id, { force: true, volumes: true });
    for (const v of hostObjects.volumes)
      await volumes(c)
        .remove(v)
        .catch(() => undefined);
    c.close();
    dir[Symbol.dispose]();
  });

  const owned = async () =>
    containers(c).list({ all: true, filters: { label: [`io.berth.tenant=${tenant}`] } });
  const create = (body: Record<string, unknown>, name = uniqueName('p11c')) =>
    postJson(
      sock,
      `/v1.41/containers/create?name=${encodeURIComponent(name)}`,
      JSON.stringify({ Image: IMAGE, Cmd: ['sleep', '60'], ...body }),
    );
  const volumeExists = (name: string) =>
    volumes(c)
      .inspect(name)
      .then(
        () => true,
        () => false,
      );
  const made = (r: { status: number; text: string }): string => {
    assert.equal(r.status, 201, r.text);
    return (JSON.parse(r.text) as { Id: string }).Id;
  };

  test('berth’s own names: dind sidecar and cache volume names, berth-local/* tags', async () => {
    const before = (await owned()).length;
    for (const name of ['berth-dind-x', '/berth-dind-cache-x', 'BERTH-DIND-y']) {
      expectRefused(await create({}, name), 'ownership', `container ${name}`);
    }
    assert.equal((await owned()).length, before, 'no container made');
    const vol = `berth-dind-cache-${SESSION}`;
    expectRefused(await postJson(sock, '/v1.41/volumes/create', JSON.stringify({ Name: vol })), 'ownership');
    // As a mount of a container, dockerd would make the volume too.
    expectRefused(
      await create({ HostConfig: { NetworkMode: 'none', Binds: [`${vol}:/data`] } }),
      'ownership',
      'a bind naming a reserved volume',
    );
    assert.equal(await volumeExists(vol), false, 'no volume of that name');
    // Renaming an own container onto a reserved name.
    const id = made(await create({ HostConfig: { NetworkMode: 'none' } }));
    expectRefused(
      await send(sock, { method: 'POST', path: `/v1.41/containers/${id}/rename?name=berth-dind-z` }),
      'ownership',
    );
    const squat = `berth-local/squat-${SESSION}`;
    expectRefused(
      await send(sock, { method: 'POST', path: `/v1.41/images/${IMAGE}/tag?repo=${squat}&tag=v1` }),
      'image-tag',
    );
    assert.equal(await images(c).find(`${squat}:v1`), undefined, 'no berth-local tag made');
  });

  test('io.berth.* labels: refused on containers, mounts, volumes, networks, builds and commits', async () => {
    const reaperBait = {
      'io.berth.bench': 'bench',
      'io.berth.role': 'dind',
      'io.berth.dind.socket-dir': '/etc',
      'io.berth.dind.socket-dir-owned': '1',
    };
    const before = (await owned()).length;
    expectRefused(await create({ Labels: reaperBait }), 'ownership', 'container labels');
    expectRefused(
      await create({
        HostConfig: {
          NetworkMode: 'none',
          Mounts: [
            { Type: 'volume', Target: '/v', VolumeOptions: { Labels: { 'io.berth.role': 'dind-cache' } } },
          ],
        },
      }),
      'ownership',
      'mount volume labels',
    );
    assert.equal((await owned()).length, before, 'no container made');
    const vname = uniqueName('p11v');
    expectRefused(
      await postJson(sock, '/v1.41/volumes/create', JSON.stringify({ Name: vname, Labels: reaperBait })),
      'ownership',
    );
    assert.equal(await volumeExists(vname), false);
    const nname = uniqueName('p11n');
    expectRefused(
      await postJson(sock, '/v1.41/networks/create', JSON.stringify({ Name: nname, Labels: reaperBait })),
      'ownership',
    );
    assert.equal((await networks(c).list({ name: [nname] })).length, 0);
    const labels = encodeURIComponent(JSON.stringify({ 'io.berth.role': 'dind' }));
    expectRefused(
      await send(sock, {
        method: 'POST',
        path: `/v1.41/build?labels=${labels}`,
        headers: [['Content-Type', 'application/x-tar']],
        body: Buffer.alloc(1024),
      }),
      'ownership',
      'build labels',
    );
    // A label the guard sets itself, with its own value, is the tenant's to repeat.
    const same = made(await create({ Labels: sessionLabels(), HostConfig: { NetworkMode: 'none' } }));
    const c2 = made(await create({ HostConfig: { NetworkMode: 'none' } }));
    const commit = (q: string, body: Record<string, unknown> = {}) =>
      postJson(sock, `/v1.41/commit?container=${c2}&${q}`, JSON.stringify(body));
    // Every attempt also asks for a label of this test's own: nothing may carry it afterwards.
    const mark = `berth.test.p11=${uniqueName('mark')}`;
    const marked = async () => (await images(c).list({ label: [mark] })).length;
    expectRefused(await commit('', { Labels: reaperBait }), 'ownership', 'commit labels');
    // dockerd joins changes with newlines and reads them as a Dockerfile: a trailing escape would
    // swallow the guard's own last line (LABEL io.berth.tenant=""), and so would a directive that
    // makes the backtick the escape character.
    for (const changes of [
      ['LABEL a=1', 'ENV Z=\\'],
      ['# escape=`', 'ENV Z=`'],
      ['ENV A=1\nLABEL x=y'],
      [`LABEL io.berth.tenant=${tenant}`],
      ['LABEL IO.BERTH.ROLE=dind'],
    ]) {
      const q = [`LABEL ${mark}`, ...changes].map((ch) => `changes=${encodeURIComponent(ch)}`).join('&');
      expectRefused(await commit(q), 'ownership', `commit changes ${JSON.stringify(changes)}`);
      expectRefused(
        await send(sock, {
          method: 'POST',
          path: `/v1.41/images/create?fromSrc=-&${q}`,
          headers: [['Content-Type', 'application/x-tar']],
          body: Buffer.alloc(1024),
        }),
        'ownership',
        `import changes ${JSON.stringify(changes)}`,
      );
    }
    assert.equal(await marked(), 0, 'no image made');
    for (const id of [same, c2]) await containers(c).remove(id, { force: true });
  });

  test('published ports are refused: the host’s loopback stays the host’s', async () => {
    // A free loopback port, as a registry or service of the host's would use.
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const a = s.address();
        s.close(() => resolve(a && typeof a === 'object' ? a.port : 0));
      });
    });
    const before = (await owned()).length;
    for (const [what, hc] of [
      ['loopback', { PortBindings: { '80/tcp': [{ HostIp: '127.0.0.1', HostPort: String(port) }] } }],
      ['every address', { PortBindings: { '80/tcp': [{ HostPort: String(port) }] } }],
      ['an ephemeral port', { PortBindings: { '80/tcp': [{}] } }],
      ['IPv6 loopback', { PortBindings: { '80/tcp': [{ HostIp: '::1', HostPort: String(port) }] } }],
      ['all exposed ports', { PublishAllPorts: true }],
      ['by case folding', { portbindings: { '80/tcp': [{ HostPort: String(port) }] } }],
    ] as const) {
      expectRefused(await create({ ExposedPorts: { '80/tcp': {} }, HostConfig: hc }), 'ports', what);
    }
    assert.equal((await owned()).length, before, 'no container made');
    // The port is still free for the host.
    await new Promise<void>((resolve, reject) => {
      const s = createServer()
        .once('error', reject)
        .listen(port, '127.0.0.1', () => s.close(() => resolve()));
    });
    // An empty map (what the CLI sends without -p) is no publishing.
    const id = made(await create({ HostConfig: { NetworkMode: 'none', PortBindings: {} } }));
    await containers(c).remove(id, { force: true });
  });

  test('health checks faster than once a second are refused', async () => {
    const before = (await owned()).length;
    for (const hc of [
      { Test: ['CMD', 'true'], Interval: 1_000_000 },
      { Test: ['CMD', 'true'], Timeout: 999_999_999 },
      { Test: ['CMD', 'true'], StartPeriod: 1 },
      // Go matches keys case-insensitively and the last duplicate wins.
      { Test: ['CMD', 'true'], Interval: 2_000_000_000, interval: 1000 },
    ]) {
      expectRefused(
        await create({ Healthcheck: hc, HostConfig: { NetworkMode: 'none' } }),
        'resources',
        JSON.stringify(hc),
      );
    }
    assert.equal((await owned()).length, before, 'no container made');
    const id = made(
      await create({
        Healthcheck: { Test: ['CMD', 'true'], Interval: 2_000_000_000 },
        HostConfig: { NetworkMode: 'none' },
      }),
    );
    const config = (await containers(c).inspect(id)).Config as { Healthcheck?: { Interval?: number } };
    assert.equal(config.Healthcheck?.Interval, 2_000_000_000);
    await containers(c).remove(id, { force: true });
  });

  test('execs: bodies over 128 KiB and more than 256 never started are refused', async () => {
    const id = made(await create({ HostConfig: { NetworkMode: 'none' } }));
    await send(sock, { method: 'POST', path: `/v1.41/containers/${id}/start` });
    const exec = (env: string[]) =>
      postJson(sock, `/v1.41/containers/${id}/exec`, JSON.stringify({ Cmd: ['true'], Env: env }));
    const big = await exec([`X=${'x'.repeat(3 * 1024 * 1024)}`]);
    expectRefused(big, 'body', 'a 3 MiB exec', 400);
    let n = 0;
    for (; n < 300; n++) {
      const r = await exec(['A=1']);
      if (r.status !== 201) {
        expectRefused(r, 'limits', `exec ${n}`);
        break;
      }
    }
    assert.equal(n, 256, 'the 257th unstarted exec is refused');
    // Starting one frees its place; a start the engine never took (a malformed body) does not.
    const r = await exec(['A=1']);
    expectRefused(r, 'limits');
    const inspect = (await containers(c).inspect(id)) as { ExecIDs?: string[] | null };
    const first = inspect.ExecIDs?.[0] ?? '';
    const bad = await postJson(sock, `/v1.41/exec/${first}/start`, JSON.stringify({ Detach: 'notabool' }));
    assert.equal(bad.status, 400, bad.text);
    expectRefused(await exec(['A=1']), 'limits', 'after a refused start');
    const started = await postJson(sock, `/v1.41/exec/${first}/start`, JSON.stringify({ Detach: true }));
    assert.equal(started.status, 200, started.text);
    assert.equal((await exec(['A=1'])).status, 201);
    // Its container gone (removed by the host here, not through the guard), its execs no longer count.
    await containers(c).remove(id, { force: true });
    const id2 = made(await create({ HostConfig: { NetworkMode: 'none' } }));
    await send(sock, { method: 'POST', path: `/v1.41/containers/${id2}/start` });
    assert.equal(
      (await postJson(sock, `/v1.41/containers/${id2}/exec`, JSON.stringify({ Cmd: ['true'] }))).status,
      201,
    );
    await send(sock, { method: 'DELETE', path: `/v1.41/containers/${id2}?force=1` });
  });

  test('networks: at most the policy’s number, counted one create at a time', async () => {
    const names = Array.from({ length: 6 }, () => uniqueName('p11net'));
    const answers = await Promise.all(
      names.map((n) => postJson(sock, '/v1.41/networks/create', JSON.stringify({ Name: n }))),
    );
    const ok = answers.filter((a) => a.status === 201).length;
    for (const a of answers) if (a.status !== 201) expectRefused(a, 'limits');
    // The tenant's own network (made by the guard on first use) is not counted.
    const onEngine = (await networks(c).list({ label: [`io.berth.tenant=${tenant}`] })).filter((n) =>
      names.includes(n.Name),
    );
    assert.equal(onEngine.length, 3, `networks on the engine (${ok} created)`);
    assert.equal(ok, 3);
    for (const n of onEngine) await networks(c).remove(n.Id);
  });

  test('list filters since/before: another’s container answers as a missing one does', async () => {
    const host = await containers(c).create({ Image: IMAGE, Cmd: ['true'], Labels: sessionLabels() });
    hostObjects.containers.push(host.Id);
    const mine = made(await create({ HostConfig: { NetworkMode: 'none' } }));
    for (const key of ['since', 'before']) {
      for (const ref of [host.Id, host.Id.slice(0, 12), `nonexistent-${SESSION}`]) {
        const f = encodeURIComponent(JSON.stringify({ [key]: [ref] }));
        expectAbsent(
          await send(sock, { method: 'GET', path: `/v1.41/containers/json?all=1&filters=${f}` }),
          `${key}=${ref}`,
        );
      }
      const f = encodeURIComponent(JSON.stringify({ [key]: { [mine.slice(0, 12)]: true } }));
      const r = await send(sock, { method: 'GET', path: `/v1.41/containers/json?all=1&filters=${f}` });
      assert.equal(r.status, 200, r.text);
    }
    await containers(c).remove(mine, { force: true });
  });

  test('a pruned volume’s name is forgotten: a later host volume of that name is not the tenant’s', async () => {
    const name = uniqueName('p11pv');
    assert.equal((await postJson(sock, '/v1.41/volumes/create', JSON.stringify({ Name: name }))).status, 201);
    const pruned = await send(sock, { method: 'POST', path: '/v1.41/volumes/prune' });
    assert.equal(pruned.status, 200, pruned.text);
    assert.ok(pruned.text.includes(name), pruned.text);
    await volumes(c).create({ Name: name, Labels: sessionLabels() });
    hostObjects.volumes.push(name);
    expectAbsent(await send(sock, { method: 'GET', path: `/v1.41/volumes/${name}` }));
    // Not in the tenant's events either.
    const w = await replayWindow({
      sock,
      engine: c,
      act: async () => {
        const user = await containers(c).create({
          Image: IMAGE,
          Cmd: ['true'],
          Labels: sessionLabels(),
          HostConfig: { Binds: [`${name}:/v`], NetworkMode: 'none' },
        });
        hostObjects.containers.push(user.Id);
        await containers(c).start(user.Id);
        await containers(c).wait(user.Id);
      },
      complete: (engine) => engine.some((e) => e.Type === 'volume' && e.Actor.ID === name),
    });
    assert.ok(
      !w.tenant.text.includes(name),
      `the tenant saw the host volume's events: ${messageOf(w.tenant) ?? w.tenant.text.slice(0, 300)}`,
    );
  });

  test('an events replay shows nothing someone else did under a volume name before the tenant took it', async () => {
    const w = await replayWindow({
      sock,
      engine: c,
      act: async () => {
        const name = uniqueName('p11ev');
        await volumes(c).create({ Name: name, Labels: sessionLabels() });
        const user = await containers(c).create({
          Image: IMAGE,
          Cmd: ['true'],
          Labels: sessionLabels(),
          HostConfig: { Binds: [`${name}:/v`], NetworkMode: 'none' },
        });
        await containers(c).start(user.Id);
        await containers(c).wait(user.Id);
        await containers(c).remove(user.Id, { force: true });
        await volumes(c).remove(name);
        await new Promise((resolve) => setTimeout(resolve, 20));
        const v = await postJson(sock, '/v1.41/volumes/create', JSON.stringify({ Name: name }));
        assert.equal(v.status, 201, v.text);
        return { name, user: user.Id };
      },
      complete: (engine, made) =>
        engine.some((e) => e.Actor.ID === made.user && e.Action === 'create') &&
        engine.some((e) => e.Type === 'volume' && e.Actor.ID === made.name && e.Action === 'mount'),
      discard: async (made) => {
        await send(sock, { method: 'DELETE', path: `/v1.41/volumes/${made.name}` });
      },
    });
    const { name, user } = w.made;
    assert.ok(!w.tenant.text.includes(user), 'the host container’s mount events reached the tenant');
    // The tenant's own create of the name is its event; the host's before it are not (dockerd logs
    // a volume's create again when a container is made with it).
    const creates = (events: EngineEvent[]) =>
      events.filter((e) => e.Type === 'volume' && e.Action === 'create' && e.Actor.ID === name);
    const all = creates(w.engine);
    assert.ok(all.length >= 2, 'the engine shows the host’s create and the tenant’s (control)');
    assert.deepEqual(
      creates(w.events).map((e) => e.timeNano),
      [all.at(-1)?.timeNano],
      `the tenant sees its own create only: ${w.tenant.text.slice(0, 300)}`,
    );
    await send(sock, { method: 'DELETE', path: `/v1.41/volumes/${name}` });
  });
});
