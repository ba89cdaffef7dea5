/**
 * Attacks from the nineteenth red-team pass, sent as raw HTTP and checked on the engine:
 * - a Content-Type that Go's media type parser reads as a form and a plain lowercase-and-trim does
 *   not (`İ` for `i`, a trailing NEL or no-break space): on the routes whose body the guard passes
 *   through (image import, archive upload), dockerd took request options from the body, past every
 *   check on the query (an import from a URL on the host's loopback, a tag over the host's);
 * - engine errors that name other tenants' or the host's containers by ID (a create's name
 *   conflict, a volume in use, an image in use).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { containers, images, volumes } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { SESSION, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { messageOf, postJson, send } from '../support/rawhttp.js';
import { startHostService } from '../support/hostservice.js';
import type { HostService } from '../support/hostservice.js';
import { END, entry } from '../support/tar.js';

const IMAGE = 'berth-local/busybox';

/**
 * Content types Go reads as `application/x-www-form-urlencoded`, as the bytes go on the wire
 * (the raw client writes header text as latin1): UTF-8 `İ` (C4 B0), NEL (C2 85), NBSP (C2 A0).
 */
const FORMS: readonly (readonly [string, string])[] = [
  ['İ for i', 'appl\u00c4\u00b0cation/x-www-form-urlencoded'],
  ['a trailing NEL', 'application/x-www-form-urlencoded\u00c2\u0085'],
  ['a trailing no-break space', 'application/x-www-form-urlencoded\u00c2\u00a0'],
];

describe('attack: pass 19 (form bodies in spellings only Go reads; engine errors naming others)', () => {
  const c = engine();
  const dir = tempDir('berth-pass19-');
  const sock = join(dir.path, 'g.sock');
  const tenant = uniqueName('p19');
  const hostRepo = `berth-p19-host-${SESSION}`;
  const hostName = `berth-p19-host-${SESSION}`;
  let guard: GuardHandle;
  let service: HostService;
  let busyboxId = '';
  const hostContainers: string[] = [];

  before(async () => {
    service = await startHostService({ status: 200, body: '' });
    guard = await createGuard({ tenant, listen: sock, labels: sessionLabels() });
    busyboxId = (await images(c).inspect(IMAGE)).Id;
    await images(c).tag(IMAGE, hostRepo, '1');
  });

  after(async () => {
    for (const id of hostContainers)
      await containers(c)
        .remove(id, { force: true })
        .catch(() => false);
    await guard.close({ cleanup: true }).catch(() => undefined);
    await images(c)
      .remove(`${hostRepo}:1`)
      .catch(() => false);
    await service[Symbol.asyncDispose]();
    c.close();
    dir[Symbol.dispose]();
  });

  test('an import whose form options only Go reads is refused: nothing fetched, no tag moved (raw API)', async () => {
    for (const [what, type] of FORMS) {
      const r = await send(sock, {
        method: 'POST',
        path: '/v1.41/images/create?fromSrc=-',
        headers: [['Content-Type', type]],
        body: `fromSrc=http://${service.addr}/x.tar&repo=${hostRepo}&tag=1`,
      });
      assert.equal(r.status, 400, `${what}: ${r.status} ${r.text}`);
      assert.match(messageOf(r) ?? '', /^berth: malformed: the Content-Type header/, what);
    }
    assert.equal(service.hits(), 0, 'dockerd fetched nothing from the host');
    assert.equal((await images(c).inspect(`${hostRepo}:1`)).Id, busyboxId, "the host's tag stays");
  });

  test('an archive upload whose form options only Go reads is refused, and a plain one still lands (raw API)', async () => {
    const created = await postJson(
      sock,
      '/v1.41/containers/create',
      JSON.stringify({ Image: IMAGE, User: 'nobody', Cmd: ['true'], HostConfig: { NetworkMode: 'none' } }),
    );
    assert.equal(created.status, 201, created.text);
    const id = (JSON.parse(created.text) as { Id: string }).Id;
    for (const [what, type] of FORMS) {
      const r = await send(sock, {
        method: 'PUT',
        path: `/v1.41/containers/${id}/archive?path=/`,
        headers: [['Content-Type', type]],
        body: 'path=/tmp&copyUIDGID=1',
      });
      assert.equal(r.status, 400, `${what}: ${r.status} ${r.text}`);
    }
    // In the plain spelling, the guard reads the form too (an upload takes no form values), and
    // the option as a query meets the user check (a named user).
    const plain = await send(sock, {
      method: 'PUT',
      path: `/v1.41/containers/${id}/archive?path=/`,
      headers: [['Content-Type', 'application/x-www-form-urlencoded']],
      body: 'path=/tmp&copyUIDGID=1',
    });
    assert.equal(plain.status, 400, plain.text);
    assert.match(messageOf(plain) ?? '', /takes an archive as its body/);
    const query = await send(sock, {
      method: 'PUT',
      path: `/v1.41/containers/${id}/archive?path=/tmp&copyUIDGID=1`,
      body: Buffer.concat([entry('x.txt', 'x'), END]),
    });
    assert.equal(query.status, 403, query.text);
    assert.match(messageOf(query) ?? '', /^berth: namespaces:/);
    // Whatever type the client names, the engine gets the body as an archive (a tar of one file).
    const tar = Buffer.concat([entry('hello.txt', 'hi\n'), END]);
    for (const type of ['text/plain', 'application/x-tar', 'multipart/form-data; boundary=x']) {
      const put = await send(sock, {
        method: 'PUT',
        path: `/v1.41/containers/${id}/archive?path=/tmp`,
        headers: [['Content-Type', type]],
        body: tar,
      });
      assert.equal(put.status, 200, `${type}: ${put.text}`);
    }
    const head = await send(sock, {
      method: 'HEAD',
      path: `/v1.41/containers/${id}/archive?path=/tmp/hello.txt`,
    });
    assert.equal(head.status, 200);
    const del = await send(sock, { method: 'DELETE', path: `/v1.41/containers/${id}?force=1` });
    assert.equal(del.status, 204, del.text);
  });

  test("engine errors do not name the host's containers: a name in use, a volume in use, an image in use", async () => {
    // The host's container, with a name, on a volume and an image the tenant made.
    const vol = await postJson(sock, '/v1.41/volumes/create', JSON.stringify({ Name: `p19-${SESSION}` }));
    assert.equal(vol.status, 201, vol.text);
    const volName = (JSON.parse(vol.text) as { Name: string }).Name;
    const ownTag = `berth-p19-own-${SESSION}:1`;
    const tagged = await send(sock, {
      method: 'POST',
      path: `/v1.41/images/${IMAGE}/tag?repo=${ownTag.split(':')[0] ?? ''}&tag=1`,
    });
    assert.equal(tagged.status, 201, tagged.text);
    const { Id: hostId } = await containers(c).create(
      { Image: ownTag, Cmd: ['true'], HostConfig: { NetworkMode: 'none', Binds: [`${volName}:/v`] } },
      hostName,
    );
    hostContainers.push(hostId);
    const leaks = (text: string) => text.includes(hostId.slice(0, 12));

    const conflict = await postJson(
      sock,
      `/v1.41/containers/create?name=${hostName}`,
      JSON.stringify({ Image: IMAGE, HostConfig: { NetworkMode: 'none' } }),
    );
    assert.equal(conflict.status, 409, conflict.text);
    assert.ok(!leaks(conflict.text), conflict.text);
    assert.match(messageOf(conflict) ?? '', /already in use by container "<hidden>"/);

    const inUse = await send(sock, { method: 'DELETE', path: `/v1.41/volumes/${volName}` });
    assert.equal(inUse.status, 409, inUse.text);
    assert.ok(!leaks(inUse.text), inUse.text);
    assert.match(messageOf(inUse) ?? '', /volume is in use - \[<hidden>\]/);
    assert.ok(
      (await volumes(c).list({ name: [volName] })).some((v) => v.Name === volName),
      'the volume stays',
    );

    const untag = await send(sock, { method: 'DELETE', path: `/v1.41/images/${ownTag}` });
    assert.ok(!leaks(untag.text), untag.text);

    // The tenant's own container is named as before.
    const mine = await postJson(
      sock,
      `/v1.41/containers/create?name=p19-mine-${SESSION}`,
      JSON.stringify({ Image: IMAGE, HostConfig: { NetworkMode: 'none' } }),
    );
    assert.equal(mine.status, 201, mine.text);
    const mineId = (JSON.parse(mine.text) as { Id: string }).Id;
    const again = await postJson(
      sock,
      `/v1.41/containers/create?name=p19-mine-${SESSION}`,
      JSON.stringify({ Image: IMAGE, HostConfig: { NetworkMode: 'none' } }),
    );
    assert.equal(again.status, 409, again.text);
    assert.ok(again.text.includes(mineId), again.text);
  });
});
