/**
 * Attack: image references dockerd reads differently from a plain check. A `repo` that carries its
 * own tag (`repo=app:x&tag=prod` writes `app:prod` in dockerd), an import that is really a pull
 * (`fromSrc=-` with `fromImage`: dockerd pulls), and a build body sent as multipart/form-data (dockerd
 * reads build options from it). Each is refused or neutralised, and the host's tag stays where it was.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { images } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { engine, sessionLabels, SESSION, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, send } from '../support/rawhttp.js';

const IMAGE = 'berth-local/busybox';

describe('attack: image references the guard and dockerd could read differently', () => {
  const c = engine();
  const dir = tempDir('berth-imgref-');
  const repo = `berth-imgref-${SESSION}`;
  const hostTag = `${repo}:prod`;
  const sock = join(dir.path, 'g.sock');
  let guard: GuardHandle;
  let hostId = '';

  before(async () => {
    await images(c).tag('berth-local/tools', repo, 'prod');
    hostId = (await images(c).inspect(hostTag)).Id;
    guard = await createGuard({ tenant: uniqueName('imgref'), listen: sock, labels: sessionLabels() });
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    for (const t of [hostTag, `${repo}:x`, `${repo}:mine`, `${repo}:taken`])
      await images(c)
        .remove(t)
        .catch(() => false);
    c.close();
    dir[Symbol.dispose]();
  });

  const hostIntact = async () =>
    assert.equal((await images(c).inspect(hostTag)).Id, hostId, 'the host’s tag points where it did');

  test('tag and commit with a repo that names its own tag are refused', async () => {
    for (const q of [`repo=${repo}:x&tag=prod`, `repo=${repo}@sha256:${'0'.repeat(64)}&tag=prod`])
      expectRefused(
        await send(sock, { method: 'POST', path: `/v1.41/images/${IMAGE}/tag?${q}` }),
        'image-tag',
        q,
      );
    // The same name spelled once is an ordinary new tag of the tenant's.
    const ok = await send(sock, { method: 'POST', path: `/v1.41/images/${IMAGE}/tag?repo=${repo}:mine` });
    assert.equal(ok.status, 201, ok.body.toString());
    await hostIntact();
  });

  test('an import that names fromImage is a pull, and gets the pull checks', async () => {
    // No tag: a pull of every tag of the repository, refused whatever fromSrc says.
    expectRefused(
      await send(sock, {
        method: 'POST',
        path: `/v1.41/images/create?fromSrc=-&fromImage=${repo}`,
        headers: [['Content-Type', 'application/x-tar']],
        body: Buffer.alloc(0),
      }),
      'image-tag',
    );
    await hostIntact();
  });

  test('a build body sent as multipart/form-data cannot carry build options', async () => {
    const boundary = 'XB';
    const part = (name: string, value: string) =>
      `--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`;
    const body = Buffer.from(`${part('t', hostTag)}${part('networkmode', 'host')}--${boundary}--\r\n`);
    const r = await send(sock, {
      method: 'POST',
      path: '/v1.41/build',
      headers: [['Content-Type', `multipart/form-data; boundary=${boundary}`]],
      body,
    });
    // dockerd reads the body as a build context (not a tar: the build fails) and no option from it.
    assert.ok(!r.body.toString().includes('Successfully tagged'), r.body.toString());
    await hostIntact();
  });

  test('a tag the tenant set is not its own once someone else points it elsewhere', async () => {
    const taken = `${repo}:taken`;
    const mine = await send(sock, {
      method: 'POST',
      path: `/v1.41/images/${IMAGE}/tag?repo=${repo}&tag=taken`,
    });
    assert.equal(mine.status, 201, mine.text);
    // The host (or another tenant's concurrent build of the same name) sets the tag afterwards.
    await images(c).tag('berth-local/tools', repo, 'taken');
    const moved = (await images(c).inspect(taken)).Id;
    expectRefused(
      await send(sock, { method: 'DELETE', path: `/v1.41/images/${taken}` }),
      'image-tag',
      'removing a tag someone else has set since',
    );
    expectRefused(
      await send(sock, { method: 'POST', path: `/v1.41/images/${IMAGE}/tag?repo=${repo}&tag=taken` }),
      'image-tag',
      'tagging over it again',
    );
    expectRefused(
      await send(sock, { method: 'DELETE', path: `/v1.41/images/${moved}?force=1` }),
      'image-tag',
      'removing its image by ID',
    );
    // Nor does the guard's cleanup remove it.
    const g = await createGuard({
      tenant: uniqueName('imgref2'),
      listen: join(dir.path, 'h.sock'),
      labels: sessionLabels(),
    });
    const h = join(dir.path, 'h.sock');
    const again = await send(h, {
      method: 'POST',
      path: `/v1.41/images/${IMAGE}/tag?repo=${repo}&tag=cleanup`,
    });
    assert.equal(again.status, 201, again.text);
    await images(c).tag('berth-local/tools', repo, 'cleanup');
    await g.close({ cleanup: true });
    assert.equal((await images(c).inspect(`${repo}:cleanup`)).Id, moved, 'the cleanup left it');
    await images(c).remove(`${repo}:cleanup`);
    assert.equal((await images(c).inspect(taken)).Id, moved);
  });

  test('a Docker Hub name whose first part looks like a registry is refused (it reads back as another image)', async () => {
    // docker.io/docker.io/<repo>:prod shows as docker.io/<repo>:prod, which dockerd reads as <repo>:prod: the host's.
    for (const q of [
      `repo=docker.io/docker.io/${repo}&tag=prod`,
      `repo=index.docker.io/localhost/${repo}&tag=prod`,
    ])
      expectRefused(
        await send(sock, { method: 'POST', path: `/v1.41/images/${IMAGE}/tag?${q}` }),
        'image-tag',
        q,
      );
    expectRefused(
      await send(sock, {
        method: 'POST',
        path: `/v1.41/build?t=${encodeURIComponent(`docker.io/docker.io/${repo}:prod`)}`,
        headers: [['Content-Type', 'application/x-tar']],
        body: '',
      }),
      'image-tag',
      'build -t',
    );
    const listed = await images(c).list();
    assert.ok(!listed.some((i) => (i.RepoTags ?? []).some((t) => t.startsWith(`docker.io/${repo}`))));
    await hostIntact();
  });
});
