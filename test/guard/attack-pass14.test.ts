/**
 * Attacks from the fourteenth red-team pass, sent through the guard and checked on the engine:
 * - a second build's `pull=1` moved a base tag that a first build of the same tenant held, and
 *   the first build ran the moved image's `ONBUILD ADD` of a host-loopback URL, unchecked;
 * - claims that outlived their image: the tenant pulled a tag, the image went (the tenant's own
 *   delete by ID, the host's), the host pulled the same content again (same ID), and the old claim
 *   let the tenant re-tag, untag or delete the host's image, its cleanup too;
 * - a claim on a tag someone else re-pointed and pointed back;
 * - a build's base pull over the tenant's own tag left the claim on the old image;
 * - `logs -f` streams without a bound (dockerd holds one of the host's inotify instances each);
 * - a form-encoded body on an upload route left the request hanging.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { containers, images } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { SESSION, docker, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, postBuild, send } from '../support/rawhttp.js';
import { startRegistry } from '../support/registry.js';
import type { TestRegistry } from '../support/registry.js';
import { startHostService } from '../support/hostservice.js';
import type { HostService } from '../support/hostservice.js';
import { dockerContext } from '../support/tar.js';

const IMAGE = 'berth-local/busybox';
const RAW = '/var/run/docker.sock';
const HOST = `unix://${RAW}`;

const build = (sock: string, dockerfile: string, query = '') =>
  postBuild(sock, dockerContext(dockerfile), query);

describe('attack: pass 14 (held bases, stale claims, follows, form uploads)', () => {
  const c = engine();
  const dir = tempDir('berth-pass14-');
  const sock = join(dir.path, 'g.sock');
  let guard: GuardHandle;
  let registry: TestRegistry;
  let service: HostService;
  let hostService = '';
  const hostImages: string[] = [];

  /** The image ID a reference names on the engine, or undefined. */
  const idOf = async (ref: string) => (await images(c).find(ref))?.Id;

  /**
   * An image only the registry has: built on the host from scratch with content of its own,
   * pushed, and removed from the engine. Answers the reference and the image ID a pull brings.
   */
  async function registryOnly(name: string): Promise<{ ref: string; id: string }> {
    const ref = `${registry.addr}/berth-p14-${name}-${SESSION}:1`;
    const r = await postBuild(
      RAW,
      dockerContext('FROM scratch\nCOPY f /f\n', { f: `${name} ${SESSION} ${Date.now()}\n` }),
      // No cache: for FROM scratch, dockerd's legacy builder scans every image without a parent
      // for a cached step, and fails the build ("unable to find image") when another test deletes
      // one of them meanwhile (an import's, say: seen in CI). The content is new anyway.
      `nocache=1&t=${encodeURIComponent(ref)}&labels=${encodeURIComponent(JSON.stringify(sessionLabels()))}`,
    );
    assert.equal(r.status, 200, r.text);
    const id = await idOf(ref);
    assert.ok(id, r.text);
    const push = await docker(HOST, ['push', ref]);
    assert.equal(push.code, 0, push.stderr);
    await images(c).remove(id, true);
    assert.equal(await idOf(id), undefined, 'the engine no longer has it');
    return { ref, id };
  }

  before(async () => {
    registry = await startRegistry(dir.path);
    service = await startHostService({ body: 'HOST-LOOPBACK-SECRET\n' });
    hostService = service.addr;
    guard = await createGuard({ tenant: uniqueName('p14'), listen: sock, labels: sessionLabels() });
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    for (const id of hostImages)
      await images(c)
        .remove(id, true)
        .catch(() => false);
    await registry[Symbol.asyncDispose]();
    await service[Symbol.asyncDispose]();
    c.close();
    dir[Symbol.dispose]();
  });

  test('a pull=1 build does not move a base tag another build of the tenant holds', async () => {
    const ref = `${registry.addr}/berth-p14-held-${SESSION}:1`;
    // The registry's image carries a trigger that fetches a host-loopback URL; the engine's image
    // of that name (the tenant's own tag, moved back onto busybox) does not.
    const made = await docker(guard.address, ['create', '--network', 'none', IMAGE, 'true']);
    assert.equal(made.code, 0, made.stderr);
    const commit = await docker(guard.address, [
      'commit',
      '-c',
      `ONBUILD ADD http://${hostService}/secret.txt /secret`,
      made.stdout.trim(),
      ref,
    ]);
    assert.equal(commit.code, 0, commit.stderr);
    const push = await docker(guard.address, ['push', ref]);
    assert.equal(push.code, 0, push.stderr);
    const tag = await docker(guard.address, ['tag', IMAGE, ref]);
    assert.equal(tag.code, 0, tag.stderr);
    const benign = await idOf(IMAGE);
    assert.equal(await idOf(ref), benign);

    // Build A holds the name from its check on, and reaches that stage a few seconds later.
    // (No cache: a cached first stage would not wait, and the build would end before B came.)
    const a = build(
      sock,
      `FROM ${IMAGE} AS first\nRUN sleep 4\nFROM ${ref}\nRUN cat /secret || true\n`,
      'nocache=1',
    );
    await new Promise((r) => setTimeout(r, 1500));
    const b = await build(sock, `FROM ${ref}\n`, 'pull=1');
    const ra = await a;
    assert.equal(service.hits(), 0, `the host service was fetched:\n${ra.text}`);
    assert.doesNotMatch(ra.text, /build trigger|HOST-LOOPBACK-SECRET/, ra.text);
    assert.equal(ra.status, 200, ra.text);
    // Build B used the engine's image, which it checked.
    assert.equal(b.status, 200, b.text);
    assert.doesNotMatch(b.text, /errorDetail/, b.text);
    assert.equal(await idOf(ref), benign, 'the held tag was moved');
  });

  test('a base pull over the tenant’s own tag moves its claim with it', async () => {
    const ref = `${registry.addr}/berth-p14-own-${SESSION}:1`;
    const made = await docker(guard.address, ['create', '--network', 'none', IMAGE, 'true']);
    assert.equal(made.code, 0, made.stderr);
    const commit = await docker(guard.address, ['commit', '-c', 'LABEL p14=own', made.stdout.trim(), ref]);
    assert.equal(commit.code, 0, commit.stderr);
    const committed = await idOf(ref);
    assert.equal((await docker(guard.address, ['push', ref])).code, 0);
    assert.equal((await docker(guard.address, ['tag', IMAGE, ref])).code, 0);
    const r = await build(sock, `FROM ${ref}\n`, 'pull=1');
    assert.equal(r.status, 200, r.text);
    assert.equal(await idOf(ref), committed, 'the build pulled the registry’s image over the tag');
    // The tag is still the tenant's: it may remove it (and its cleanup would).
    const rmi = await docker(guard.address, ['rmi', ref]);
    assert.equal(rmi.code, 0, rmi.stderr);
    assert.equal(await idOf(ref), undefined);
  });

  test('a claim ends with its image: after the tenant’s delete by ID, the host’s re-pull is not the tenant’s', async () => {
    const { ref, id } = await registryOnly('byid');
    assert.equal((await docker(guard.address, ['pull', ref])).code, 0);
    assert.equal(await idOf(ref), id);
    const rmi = await docker(guard.address, ['rmi', id]);
    assert.equal(rmi.code, 0, rmi.stderr);
    assert.equal(await idOf(id), undefined);
    // The host pulls the same content again: the same image ID, the host's tag.
    assert.equal((await docker(HOST, ['pull', ref])).code, 0);
    hostImages.push(id);
    assert.equal(await idOf(ref), id);
    const retag = await docker(guard.address, ['tag', IMAGE, ref]);
    assert.notEqual(retag.code, 0, 'the tenant re-tagged the host’s tag');
    assert.match(retag.stderr, /berth: image-tag:/);
    const del = await docker(guard.address, ['rmi', id]);
    assert.notEqual(del.code, 0, 'the tenant deleted the host’s image');
    const untag = await docker(guard.address, ['rmi', ref]);
    assert.notEqual(untag.code, 0, 'the tenant untagged the host’s tag');
    assert.equal(await idOf(ref), id);
  });

  test('a claim ends with its image: the host deletes and pulls again, the tenant and its cleanup keep off', async () => {
    const { ref, id } = await registryOnly('hostgc');
    const own = join(dir.path, 'gc.sock');
    const g = await createGuard({ tenant: uniqueName('p14gc'), listen: own, labels: sessionLabels() });
    try {
      assert.equal((await docker(g.address, ['pull', ref])).code, 0);
      // The host removes the image (its GC), then pulls the same tag again.
      await images(c).remove(id, true);
      assert.equal((await docker(HOST, ['pull', ref])).code, 0);
      hostImages.push(id);
      assert.equal(await idOf(ref), id);
      const del = await docker(g.address, ['rmi', id]);
      assert.notEqual(del.code, 0, 'the tenant deleted the host’s image');
      assert.equal(await idOf(ref), id);
    } finally {
      await g.close({ cleanup: true });
    }
    // The cleanup left the host's image and tag.
    assert.equal(await idOf(ref), id);
  });

  test('a claim ends when someone else writes the name, even back onto the same image', async () => {
    const { ref, id } = await registryOnly('repoint');
    assert.equal((await docker(guard.address, ['pull', ref])).code, 0);
    // The host points the tag elsewhere, then pulls it back onto the same image.
    assert.equal((await docker(HOST, ['tag', IMAGE, ref])).code, 0);
    assert.equal((await docker(HOST, ['pull', ref])).code, 0);
    hostImages.push(id);
    assert.equal(await idOf(ref), id);
    const untag = await docker(guard.address, ['rmi', ref]);
    assert.notEqual(untag.code, 0, 'the tenant untagged the host’s tag');
    assert.match(untag.stderr, /berth: image-tag:/);
    assert.equal(await idOf(ref), id);
  });

  test('logs -f: at most 16 at once for one tenant; the next is refused until one ends', async () => {
    const run = await docker(guard.address, ['run', '-d', '--network', 'none', IMAGE, 'sleep', '600']);
    assert.equal(run.code, 0, run.stderr);
    const id = run.stdout.trim();
    const follow = async (): Promise<{ socket: Socket; head: string }> => {
      const socket = connect(sock);
      await new Promise((r) => socket.once('connect', r));
      socket.write(`GET /v1.41/containers/${id}/logs?stdout=1&follow=1 HTTP/1.1\r\nHost: docker\r\n\r\n`);
      const first = await new Promise<Buffer>((r) => socket.once('data', r));
      return { socket, head: first.toString('latin1') };
    };
    const open: Socket[] = [];
    try {
      for (let i = 0; i < 16; i++) {
        const f = await follow();
        open.push(f.socket);
        assert.match(f.head, /^HTTP\/1\.1 200 /, `follow ${i}`);
      }
      const refused = await send(sock, {
        method: 'GET',
        path: `/v1.41/containers/${id}/logs?stdout=1&follow=1`,
      });
      expectRefused(refused, 'limits', 'the 17th logs -f');
      // A log that is not followed is no such stream.
      const plain = await send(sock, { method: 'GET', path: `/v1.41/containers/${id}/logs?stdout=1` });
      assert.equal(plain.status, 200, plain.text);
      open.shift()?.destroy();
      let again: { socket: Socket; head: string } | undefined;
      for (let i = 0; i < 50 && !again; i++) {
        await new Promise((r) => setTimeout(r, 100));
        const f = await follow();
        if (/^HTTP\/1\.1 200 /.test(f.head)) again = f;
        else f.socket.destroy();
      }
      assert.ok(again, 'a follow was allowed again once one ended');
      open.push(again.socket);
    } finally {
      for (const s of open) s.destroy();
      await containers(c).remove(id, { force: true });
    }
  });

  test('a form-encoded body on an upload route is refused at once, not left hanging', async () => {
    const run = await docker(guard.address, ['create', '--network', 'none', IMAGE, 'true']);
    assert.equal(run.code, 0, run.stderr);
    for (const path of [
      `/v1.41/containers/${run.stdout.trim()}/archive?path=/tmp`,
      '/v1.41/images/create?fromSrc=-',
    ]) {
      const r = await send(
        sock,
        {
          method: path.includes('archive') ? 'PUT' : 'POST',
          path,
          headers: [['Content-Type', 'application/x-www-form-urlencoded']],
          body: 'path=/etc&repo=x',
        },
        { timeoutMs: 10_000 },
      );
      assert.equal(r.status, 400, `${path}: ${r.status} ${r.text}`);
      assert.match(r.text, /berth: malformed: .*a stream/);
    }
  });
});
