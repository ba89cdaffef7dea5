/**
 * Attack: moving a tag someone else owns by pulling it. A pull that brings the same image is
 * harmless and works (CI jobs `docker pull` their base images); a pull that would move the host's
 * tag to other content is undone and reported; `pull -a` (every tag of a repository) is refused.
 * Against a real registry (Debian's docker-registry) started on a free loopback port.
 */
import { after, before, describe, test } from 'node:test';
import { connect } from 'node:net';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { images } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { docker, engine, sessionLabels, SESSION, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, send } from '../support/rawhttp.js';
import { startRegistry } from '../support/registry.js';
import type { TestRegistry } from '../support/registry.js';

const RAW = 'unix:///var/run/docker.sock';

describe('attack: pulling over a tag the host owns', () => {
  const c = engine();
  const dir = tempDir('berth-pull-');
  const tenant = uniqueName('pull');
  let guard: GuardHandle;
  let registry: TestRegistry | undefined;
  let ref = '';
  let hostId = '';
  const tags: string[] = [];

  before(async () => {
    registry = await startRegistry(dir.path);
    const addr = registry.addr;
    // The host's image A, pushed and tagged as `ref`; image B differs by a file.
    ref = `${addr}/berth-pull-${SESSION}:v1`;
    const ctx = join(dir.path, 'ctx');
    mkdirSync(ctx);
    for (const [name, content] of [
      ['a', 'A'],
      ['b', 'B'],
    ] as const) {
      writeFileSync(join(ctx, 'Dockerfile'), `FROM berth-local/busybox\nRUN echo ${content} > /which\n`);
      const t = `berth-pull-${SESSION}:${name}`;
      const b = await docker(
        RAW,
        ['build', '-q', '--label', `io.berth.test-session=${SESSION}`, '-t', t, ctx],
        {
          env: { DOCKER_BUILDKIT: '0' },
        },
      );
      assert.equal(b.code, 0, b.stderr);
      tags.push(t);
    }
    tags.push(ref);
    await images(c).tag(`berth-pull-${SESSION}:a`, ref.slice(0, ref.lastIndexOf(':')), 'v1');
    const push = await docker(RAW, ['push', ref]);
    assert.equal(push.code, 0, push.stderr);
    hostId = (await images(c).inspect(ref)).Id;
    guard = await createGuard({ tenant, listen: join(dir.path, 'g.sock'), labels: sessionLabels() });
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    await registry?.close();
    // By ID as well: a pulled image keeps its registry digest as a name after its tags are gone.
    const ids = new Set<string>();
    for (const t of tags) {
      const id = (await images(c).find(t))?.Id;
      if (id) ids.add(id);
    }
    for (const t of tags)
      await images(c)
        .remove(t, true)
        .catch(() => false);
    // Unforced: once its tags are gone an ID is only this suite's image, and nothing else's goes.
    for (const id of ids)
      await images(c)
        .remove(id)
        .catch(() => false);
    const left = (await images(c).list()).filter((i) =>
      [...(i.RepoTags ?? []), ...(i.RepoDigests ?? [])].some((n) => n.includes(`berth-pull-${SESSION}`)),
    );
    c.close();
    assert.deepEqual(left, [], 'no image of this suite is left, tagged or by digest');
    dir[Symbol.dispose]();
  });

  test('a pull that changes nothing works', async () => {
    const r = await docker(guard.address, ['pull', ref]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /up to date|Downloaded|Status/i);
    assert.equal((await images(c).inspect(ref)).Id, hostId);
  });

  test('a pull that would move the host’s tag is undone and reported', async () => {
    // The registry's v1 now holds image B; the host's local tag still points at A.
    const repo = ref.slice(0, ref.lastIndexOf(':'));
    await images(c).tag(`berth-pull-${SESSION}:b`, repo, 'v1');
    const push = await docker(RAW, ['push', ref]);
    assert.equal(push.code, 0, push.stderr);
    await images(c).tag(`berth-pull-${SESSION}:a`, repo, 'v1');
    assert.equal((await images(c).inspect(ref)).Id, hostId);

    // A client that does not read the answer: dockerd would write the tag as the pull ends, before
    // the guard could look. The guard pulls by digest instead, so the tag never moves, not even
    // while the answer waits unread.
    const stalled = connect(join(dir.path, 'g.sock'));
    await new Promise<void>((resolve) => stalled.once('connect', () => resolve()));
    stalled.pause();
    stalled.write(
      `POST /v1.41/images/create?fromImage=${encodeURIComponent(ref)} HTTP/1.1\r\nHost: d\r\nContent-Length: 0\r\n\r\n`,
    );
    const seen = new Set<string>();
    for (let i = 0; i < 30; i++) {
      seen.add((await images(c).inspect(ref)).Id);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    stalled.destroy();
    assert.deepEqual([...seen], [hostId], 'the host’s tag moved while the answer waited unread');

    const r = await docker(guard.address, ['pull', ref]);
    assert.notEqual(r.code, 0, `the pull reports the refusal; it printed: ${r.stdout}${r.stderr}`);
    assert.match(r.stderr, /berth: image-tag: the registry's .* is not the image the engine's tag names/);
    assert.equal((await images(c).inspect(ref)).Id, hostId, 'the host’s tag points where it did');
    const gone = await docker(guard.address, ['rmi', ref]);
    assert.notEqual(gone.code, 0, 'and the tenant did not come to own it');
    assert.equal((await images(c).inspect(ref)).Id, hostId);
  });

  test('pull -a (every tag of a repository) is refused, by the CLI and the raw API', async () => {
    const repo = ref.slice(0, ref.lastIndexOf(':'));
    const r = await docker(guard.address, ['pull', '-a', repo]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /berth: image-tag: pulling every tag/);
    expectRefused(
      await send(join(dir.path, 'g.sock'), {
        method: 'POST',
        path: `/v1.41/images/create?fromImage=${encodeURIComponent(repo)}`,
      }),
      'image-tag',
    );
    assert.equal((await images(c).inspect(ref)).Id, hostId);
  });
});
