/**
 * Attacks from the twelfth red-team pass, sent as raw HTTP and checked on the engine:
 * - `COPY --from=<image>`: dockerd reads (and pulls) that image as it reads a base, past the
 *   registries policy, and the pull's tag outlived the tenant;
 * - a health check the image brings (a Dockerfile's HEALTHCHECK every millisecond);
 * - a base tag someone else moves while the build runs (the stage then starts from an image berth
 *   never checked, whose images read as the build's);
 * - `rmi -f` by ID of the tenant's image that someone else's container uses;
 * - an image the tenant committed and then built on, left after its cleanup;
 * - an events replay showing someone else's old events under a tag the tenant took later.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { containers, images } from '../../src/engine/index.js';
import { createGuard, defaultPolicy } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { SESSION, docker, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, postBuild, postJson, send } from '../support/rawhttp.js';
import { replayWindow } from '../support/events.js';
import type { EngineEvent } from '../support/events.js';
import { startRegistry } from '../support/registry.js';
import { startHostService } from '../support/hostservice.js';
import type { HostService } from '../support/hostservice.js';
import { END, dockerContext, entry } from '../support/tar.js';

const IMAGE = 'berth-local/busybox';
const RAW = '/var/run/docker.sock';

const build = (sock: string, dockerfile: string, query = '') =>
  postBuild(sock, dockerContext(dockerfile), query);
const builtId = (text: string) => /"ID":"(sha256:[0-9a-f]{64})"/g.exec(text)?.[1];

describe('attack: pass 12 (COPY --from, inherited health checks, moved bases, forced deletes, cleanup, events)', () => {
  const c = engine();
  const dir = tempDir('berth-pass12-');
  const sock = join(dir.path, 'g.sock');
  const tenant = uniqueName('p12');
  let guard: GuardHandle;
  let service: HostService;
  let hostService = '';
  const hostTags: string[] = [];
  const hostContainers: string[] = [];

  before(async () => {
    service = await startHostService({ status: 404, body: '{}' });
    hostService = service.addr;
    guard = await createGuard({ tenant, listen: sock, labels: sessionLabels() });
  });

  after(async () => {
    // The host's containers first: an image of the tenant's that one uses stays until it is gone.
    for (const id of hostContainers)
      await containers(c)
        .remove(id, { force: true })
        .catch(() => false);
    await guard.close({ cleanup: true }).catch(() => undefined);
    for (const t of hostTags)
      await images(c)
        .remove(t, true)
        .catch(() => false);
    await service[Symbol.asyncDispose]();
    c.close();
    dir[Symbol.dispose]();
  });

  test('COPY --from an image is read as a base: the registries policy holds, triggers may not copy', async () => {
    const restricted = join(dir.path, 'r.sock');
    const g = await createGuard({
      tenant: uniqueName('p12r'),
      listen: restricted,
      labels: sessionLabels(),
      policy: { ...defaultPolicy(), registries: new Set(['docker.io']) },
    });
    try {
      const r = await build(restricted, `FROM ${IMAGE}\nCOPY --from=${hostService}/app:1 /x /x\n`);
      expectRefused(r, 'registries', 'COPY --from another registry');
      for (const df of [
        `FROM ${IMAGE}\nONBUILD COPY --from=${hostService}/app:1 /x /x\n`,
        `FROM ${IMAGE}\nARG R=${hostService}/app:1\nCOPY --from=$R /x /x\n`,
      ]) {
        expectRefused(await build(restricted, df), 'build-options', df);
      }
    } finally {
      await g.close({ cleanup: true });
    }
    assert.equal(service.hits(), 0, 'the host service saw a request');
  });

  test('an image COPY --from pulled is the tenant’s: its cleanup removes the tag and the image', async () => {
    await using registry = await startRegistry(dir.path);
    const ref = `${registry.addr}/berth-p12-copyfrom-${SESSION}:v1`;
    await images(c).tag(IMAGE, ref.slice(0, ref.lastIndexOf(':')), 'v1');
    const push = await docker(`unix://${RAW}`, ['push', ref]);
    assert.equal(push.code, 0, push.stderr);
    // The engine no longer has it by that name: the build pulls it.
    await images(c).remove(ref);
    const own = join(dir.path, 'cf.sock');
    const g = await createGuard({ tenant: uniqueName('p12cf'), listen: own, labels: sessionLabels() });
    try {
      const r = await build(own, `FROM ${IMAGE}\nCOPY --from=${ref} /bin/busybox /copied\n`, 'q=1');
      assert.equal(r.status, 200, r.text);
      assert.ok(builtId(r.text) ?? /sha256:[0-9a-f]{64}/.test(r.text), r.text);
      assert.ok(await images(c).find(ref), 'the build pulled the image');
    } finally {
      await g.close({ cleanup: true });
    }
    assert.equal(await images(c).find(ref), undefined, 'the pulled tag outlived the tenant');
    const left = (await images(c).list()).filter((i) =>
      (i.RepoDigests ?? []).some((d) => d.startsWith(`${registry.addr}/berth-p12-copyfrom-${SESSION}@`)),
    );
    assert.deepEqual(left, [], 'its digest reference outlived the tenant');
  });

  test('a health check the image brings is checked as the container’s own', async () => {
    const fast = `berth-p12-health-${SESSION}:fast`;
    hostTags.push(fast);
    const b = await build(RAW, `FROM ${IMAGE}\nHEALTHCHECK --interval=1ms CMD true\n`, `t=${fast}&q=1`);
    assert.equal(b.status, 200, b.text);
    const create = (body: Record<string, unknown>) =>
      postJson(
        sock,
        `/v1.41/containers/create?name=${uniqueName('p12h')}`,
        JSON.stringify({ Image: fast, Cmd: ['sleep', '5'], HostConfig: { NetworkMode: 'none' }, ...body }),
      );
    expectRefused(await create({}), 'resources', 'the image’s 1 ms interval');
    // The container's own interval replaces the image's.
    const ok = await create({ Healthcheck: { Interval: 2_000_000_000 } });
    assert.equal(ok.status, 201, ok.text);
    await containers(c).remove((JSON.parse(ok.text) as { Id: string }).Id, { force: true });
    // NONE turns it off.
    const none = await create({ Healthcheck: { Test: ['NONE'] } });
    assert.equal(none.status, 201, none.text);
    await containers(c).remove((JSON.parse(none.text) as { Id: string }).Id, { force: true });
  });

  test('a base tag someone else moves while the build runs: the build made nothing and tags nothing', async () => {
    const base = `berth-p12-moving-${SESSION}:1`;
    hostTags.push(base);
    await images(c).tag(IMAGE, base.slice(0, base.lastIndexOf(':')), '1');
    const target = `berth-p12-moved-${SESSION}:1`;
    const pending = build(
      sock,
      // A step of its own (no cache hit), so the stage really takes its time.
      `FROM ${IMAGE} AS a\nRUN sleep 3 && echo ${uniqueName('slow')}\nFROM ${base}\nCOPY --from=a /bin/true /t\n`,
      `t=${encodeURIComponent(target)}`,
    );
    // While stage a sleeps, the host points the base at another image.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await images(c).tag('berth-local/tools', base.slice(0, base.lastIndexOf(':')), '1');
    const r = await pending;
    // What the build made is nobody's (by design): this test removes it itself, on the raw socket
    // (dockerd's own pruning takes the unnamed step images with each stage image).
    const tools = (await images(c).inspect('berth-local/tools')).Id;
    const madeHere = [...r.text.matchAll(/"ID":"(sha256:[0-9a-f]{64})"/g)]
      .map((m) => m[1] ?? '')
      .filter((id) => id !== '' && id !== tools);
    assert.match(r.text, /berth: build-options: the base image .* changed while the build ran/);
    assert.equal(await images(c).find(target), undefined, 'the build’s tag was set');
    // Nothing the build made is the tenant's: the host's image under the moved tag cannot be
    // removed by the tenant by ID, nor by its prune.
    const hostNow = (await images(c).inspect(base)).Id;
    expectRefused(await send(sock, { method: 'DELETE', path: `/v1.41/images/${hostNow}` }), 'image-tag');
    assert.equal((await send(sock, { method: 'POST', path: '/v1.41/images/prune' })).status, 200);
    assert.equal((await images(c).inspect(base)).Id, hostNow);
    for (const id of madeHere.reverse())
      await images(c)
        .remove(id, true)
        .catch(() => false);
  });

  test('rmi -f by ID does not take the tenant’s image from under someone else’s container', async () => {
    const b = await build(sock, `FROM ${IMAGE}\nRUN echo ${uniqueName('f')} > /f\n`, 'q=1');
    assert.equal(b.status, 200, b.text);
    const id = /sha256:[0-9a-f]{64}/.exec(b.text)?.[0] ?? '';
    assert.ok(id, b.text);
    const user = await containers(c).create({ Image: id, Cmd: ['true'], Labels: sessionLabels() });
    hostContainers.push(user.Id);
    const del = await send(sock, { method: 'DELETE', path: `/v1.41/images/${id}?force=1` });
    assert.notEqual(del.status, 200, del.text);
    assert.equal((await images(c).inspect(id)).Id, id, 'the image under the host’s container is gone');
  });

  test('an image the tenant committed and then built on goes with its cleanup', async () => {
    const own = join(dir.path, 'cm.sock');
    const g = await createGuard({ tenant: uniqueName('p12cm'), listen: own, labels: sessionLabels() });
    let committed = '';
    let built = '';
    try {
      const box = await postJson(
        own,
        `/v1.41/containers/create?name=${uniqueName('p12box')}`,
        JSON.stringify({ Image: IMAGE, Cmd: ['true'], HostConfig: { NetworkMode: 'none' } }),
      );
      assert.equal(box.status, 201, box.text);
      const boxId = (JSON.parse(box.text) as { Id: string }).Id;
      const repo = `berth-p12-base-${SESSION}`;
      const cm = await send(own, {
        method: 'POST',
        path: `/v1.41/commit?container=${boxId}&repo=${repo}&tag=1`,
      });
      assert.equal(cm.status, 201, cm.text);
      committed = (JSON.parse(cm.text) as { Id: string }).Id;
      const b = await build(own, `FROM ${repo}:1\nRUN echo built > /b\n`, 'q=1');
      assert.equal(b.status, 200, b.text);
      built = /sha256:[0-9a-f]{64}/.exec(b.text)?.[0] ?? '';
      assert.ok(built, b.text);
    } finally {
      await g.close({ cleanup: true });
    }
    assert.equal(await images(c).find(built), undefined, 'the built image outlived the tenant');
    assert.equal(await images(c).find(committed), undefined, 'the committed image outlived the tenant');
  });

  test('an events replay shows nothing someone else did under a tag before the tenant took it', async () => {
    const tools = (await images(c).inspect('berth-local/tools')).Id;
    const tagged = (events: EngineEvent[], name: string) =>
      events.filter((e) => e.Action === 'tag' && e.Actor.Attributes?.name === `${name}:v1`);
    const w = await replayWindow({
      sock,
      engine: c,
      act: async () => {
        // The host sets the tag on another image, and then on the very image the tenant will tag.
        const name = `berth-${uniqueName('p12-evtag')}`;
        for (const image of ['berth-local/tools', IMAGE]) {
          await images(c).tag(image, name, 'v1');
          await images(c).remove(`${name}:v1`);
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
        const t = await send(sock, {
          method: 'POST',
          path: `/v1.41/images/${IMAGE}/tag?repo=${name}&tag=v1`,
        });
        assert.equal(t.status, 201, t.text);
        return name;
      },
      complete: (engine, name) => tagged(engine, name).length === 3,
      discard: async (name) => {
        await send(sock, { method: 'DELETE', path: `/v1.41/images/${name}:v1` });
      },
    });
    assert.ok(!w.tenant.text.includes(tools), 'the host’s old tag events reached the tenant');
    assert.deepEqual(
      tagged(w.events, w.made).map((e) => e.timeNano),
      [tagged(w.engine, w.made).at(-1)?.timeNano],
      `the tenant sees its own tag event only: ${w.tenant.text.slice(0, 300)}`,
    );
    await send(sock, { method: 'DELETE', path: `/v1.41/images/${w.made}:v1` });
  });

  test('pass 13: health check commands, container logs and cp -a are bounded', async () => {
    const create = (body: Record<string, unknown>) =>
      postJson(
        sock,
        `/v1.41/containers/create?name=${uniqueName('p13')}`,
        JSON.stringify({ Image: IMAGE, Cmd: ['sleep', '30'], HostConfig: { NetworkMode: 'none' }, ...body }),
      );
    // dockerd keeps every probe's command until the container goes.
    expectRefused(
      await create({ Healthcheck: { Test: ['CMD', 'true', 'x'.repeat(5000)], Interval: 2_000_000_000 } }),
      'resources',
    );
    // Logs get a size cap unless the tenant sets one; one over 100m is refused.
    expectRefused(
      await create({
        HostConfig: { NetworkMode: 'none', LogConfig: { Type: 'json-file', Config: { 'max-size': '1g' } } },
      }),
      'resources',
    );
    const ok = await create({});
    assert.equal(ok.status, 201, ok.text);
    const id = (JSON.parse(ok.text) as { Id: string }).Id;
    const log = (await containers(c).inspect(id)).HostConfig as {
      LogConfig?: { Type?: string; Config?: Record<string, string> };
    };
    assert.equal(log.LogConfig?.Type, 'json-file');
    assert.equal(log.LogConfig?.Config?.['max-size'], '10m');
    // cp -a (copyUIDGID) with a named user would look the name up in the host's user database.
    const named = await create({ User: 'postgres' });
    assert.equal(named.status, 201, named.text);
    const namedId = (JSON.parse(named.text) as { Id: string }).Id;
    const tar = Buffer.concat([entry('f.txt', 'x'), END]);
    const put = (cid: string) =>
      send(sock, {
        method: 'PUT',
        path: `/v1.41/containers/${cid}/archive?path=/tmp&copyUIDGID=1`,
        headers: [['Content-Type', 'application/x-tar']],
        body: tar,
      });
    expectRefused(await put(namedId), 'namespaces', 'copyUIDGID with a named user');
    assert.equal((await put(id)).status, 200, 'copyUIDGID with no user');
    for (const x of [id, namedId]) await containers(c).remove(x, { force: true });
  });
});
