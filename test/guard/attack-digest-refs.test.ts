/**
 * Attack: losing other parties' digest references through an untag. dockerd drops every
 * `repo@sha256:…` reference of a repository on an image along with that repository's last tag on
 * it — and deletes the image when nothing else names it. A host image held only by digest (pulled
 * `repo@sha256:…`) would go the moment a tenant tagged it into the same repository and removed
 * that tag again. Digest references the tenant's own pulls and pushes make are the tenant's, and
 * go with its tags as in plain Docker.
 *
 * Against a real registry (Debian's docker-registry) on a free loopback port.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { images } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { docker, engine, sessionLabels, SESSION, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, send } from '../support/rawhttp.js';
import { gatedRegistry, startRegistry } from '../support/registry.js';
import type { TestRegistry } from '../support/registry.js';

const RAW = 'unix:///var/run/docker.sock';

describe('attack: an untag takes others’ digest references with it', () => {
  const c = engine();
  const dir = tempDir('berth-digest-');
  const tenant = uniqueName('digest');
  const sock = join(dir.path, 'g.sock');
  let guard: GuardHandle;
  let registry: TestRegistry | undefined;
  let repo = '';
  /** The host's image, held by nothing but its digest reference `hostRef`. */
  let hostRef = '';
  let hostId = '';
  /** An image in the registry only (`repo:tenant`), for the tenant to pull. */
  let pullRef = '';

  /** A repository reached through a relay that can hold a pull halfway (set by the race test). */
  let raceRepo = '';

  /** Builds an image with distinct content, pushes it as `repo:tag`, and removes it locally; its digest reference. */
  async function pushed(tag: string, into = repo): Promise<string> {
    const repo = into;
    const ctx = join(dir.path, `ctx-${tag}`);
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM berth-local/busybox\nRUN echo ${tag}-${SESSION} > /which\n`);
    const ref = `${repo}:${tag}`;
    const b = await docker(
      RAW,
      ['build', '-q', '--label', `io.berth.test-session=${SESSION}`, '-t', ref, ctx],
      {
        env: { DOCKER_BUILDKIT: '0' },
      },
    );
    assert.equal(b.code, 0, b.stderr);
    const push = await docker(RAW, ['push', ref]);
    assert.equal(push.code, 0, push.stderr);
    const digest = (await images(c).inspect(ref)).RepoDigests?.find((d) => d.startsWith(`${repo}@`));
    assert.ok(digest, 'the push recorded a digest reference');
    // The tag goes, and its digest reference and image with it (nothing else names them).
    assert.equal((await docker(RAW, ['rmi', ref])).code, 0);
    return digest;
  }

  const digestsOf = async (ref: string) => (await images(c).inspect(ref)).RepoDigests ?? [];
  const exists = async (ref: string) => (await images(c).find(ref)) !== undefined;

  before(async () => {
    registry = await startRegistry(dir.path);
    repo = `${registry.addr}/berth-digest-${SESSION}`;
    hostRef = await pushed('host');
    pullRef = `${repo}:tenant`;
    const tenantDigest = await pushed('tenant');
    assert.ok(tenantDigest);
    // The host pulls by digest: its image has no tag, only `repo@sha256:…`.
    const pull = await docker(RAW, ['pull', hostRef]);
    assert.equal(pull.code, 0, pull.stderr);
    hostId = (await images(c).inspect(hostRef)).Id;
    assert.deepEqual(await digestsOf(hostRef), [hostRef]);
    guard = await createGuard({ tenant, listen: sock, labels: sessionLabels() });
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    await registry?.close();
    const ours = (n: string) => n.startsWith(repo) || (raceRepo !== '' && n.startsWith(raceRepo));
    for (const i of await images(c).list())
      if ([...(i.RepoTags ?? []), ...(i.RepoDigests ?? [])].some(ours))
        await images(c)
          .remove(i.Id, true)
          .catch(() => false);
    const left = (await images(c).list()).filter((i) =>
      [...(i.RepoTags ?? []), ...(i.RepoDigests ?? [])].some(ours),
    );
    const aside = await images(c).list({ label: ['io.berth.role=untag-aside'] });
    c.close();
    assert.deepEqual(left, [], 'no image of this suite is left, tagged or by digest');
    assert.deepEqual(aside, [], 'no image a tag was moved aside onto is left');
    dir[Symbol.dispose]();
  });

  test('removing the tenant’s tag (raw API) leaves the host’s digest reference and image', async () => {
    const tag = await send(sock, {
      method: 'POST',
      path: `/v1.41/images/${hostId}/tag?repo=${encodeURIComponent(repo)}&tag=mine`,
    });
    assert.equal(tag.status, 201, tag.text);
    const del = await send(sock, {
      method: 'DELETE',
      path: `/v1.41/images/${encodeURIComponent(`${repo}:mine`)}`,
    });
    assert.equal(del.status, 200, del.text);
    assert.deepEqual(JSON.parse(del.text), [{ Untagged: `${repo}:mine` }]);
    assert.equal(await exists(`${repo}:mine`), false, 'the tag is gone');
    assert.equal((await images(c).inspect(hostRef)).Id, hostId, 'the host’s image is still there');
    assert.deepEqual(await digestsOf(hostRef), [hostRef], 'with its digest reference');
    assert.deepEqual(
      await images(c).list({ label: ['io.berth.role=untag-aside'] }),
      [],
      'the image the tag was moved onto went with it',
    );
  });

  test('the same through the CLI; the host’s digest reference cannot be removed, nor the image by ID', async () => {
    const t = await docker(guard.address, ['tag', hostRef, `${repo}:cli`]);
    assert.equal(t.code, 0, t.stderr);
    const byId = await docker(guard.address, ['rmi', '-f', hostId]);
    assert.notEqual(byId.code, 0, 'the image is not the tenant’s: the host names it by digest');
    assert.match(byId.stderr, /berth: image-tag:/);
    expectRefused(
      await send(sock, { method: 'DELETE', path: `/v1.41/images/${encodeURIComponent(hostRef)}` }),
      'image-tag',
      'the host’s digest reference',
    );
    const r = await docker(guard.address, ['rmi', `${repo}:cli`]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`Untagged: ${repo}:cli`));
    assert.doesNotMatch(r.stdout, /@sha256|Deleted/, 'nothing but the tag was removed');
    assert.deepEqual(await digestsOf(hostRef), [hostRef]);
  });

  test('a tag left for the cleanup goes the same way: the host’s digest reference stays', async () => {
    const g2 = await createGuard({
      tenant: `${tenant}-2`,
      listen: join(dir.path, 'g2.sock'),
      labels: sessionLabels(),
    });
    try {
      const t = await docker(g2.address, ['tag', hostRef, `${repo}:left`]);
      assert.equal(t.code, 0, t.stderr);
    } finally {
      await g2.close({ cleanup: true });
    }
    assert.equal(await exists(`${repo}:left`), false, 'the cleanup removed the tag');
    assert.deepEqual(await digestsOf(hostRef), [hostRef], 'and nothing else');
  });

  test('the tenant’s own pull: its digest reference is its own, and goes with its tag', async () => {
    const pull = await docker(guard.address, ['pull', pullRef]);
    assert.equal(pull.code, 0, pull.stderr);
    const digest = (await digestsOf(pullRef)).find((d) => d.startsWith(`${repo}@`));
    assert.ok(digest);
    const r = await docker(guard.address, ['rmi', pullRef]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /Deleted: sha256:/, 'as plain Docker: tag, digest reference and image go');
    assert.equal(await exists(digest), false);
    assert.deepEqual(await digestsOf(hostRef), [hostRef]);
  });

  test('a pull by digest is the tenant’s to remove, and the cleanup removes it', async () => {
    const pull = await docker(guard.address, ['pull', pullRef]);
    assert.equal(pull.code, 0, pull.stderr);
    const digest = (await digestsOf(pullRef)).find((d) => d.startsWith(`${repo}@`)) ?? '';
    assert.equal((await docker(guard.address, ['rmi', pullRef])).code, 0);
    assert.equal(await exists(digest), false);

    const g3 = await createGuard({
      tenant: `${tenant}-3`,
      listen: join(dir.path, 'g3.sock'),
      labels: sessionLabels(),
    });
    try {
      const byDigest = await docker(g3.address, ['pull', digest]);
      assert.equal(byDigest.code, 0, byDigest.stderr);
      assert.equal(await exists(digest), true);
      const again = await docker(g3.address, ['pull', digest]);
      assert.equal(again.code, 0, again.stderr);
    } finally {
      await g3.close({ cleanup: true });
    }
    assert.equal(await exists(digest), false, 'the cleanup removed the tenant’s digest reference and image');
    assert.deepEqual(await digestsOf(hostRef), [hostRef]);
  });

  test('a digest reference someone else’s pull of the same repository made meanwhile stays theirs', async () => {
    assert.ok(registry);
    await using front = await gatedRegistry(registry.addr);
    raceRepo = `${front.addr}/berth-digest-race-${SESSION}`;
    const tenantDigest = await pushed('slow', raceRepo);
    const hostDigest = await pushed('hostpull', raceRepo);
    // The tenant's pull is held at its manifest, after the guard looked at the repository's
    // digest references and before it looks again.
    const gate = front.hold(/\/manifests\/slow$/);
    const tenantPull = docker(guard.address, ['pull', `${raceRepo}:slow`]);
    await gate.reached;
    const hostPull = await docker(RAW, ['pull', `${raceRepo}:hostpull`]);
    assert.equal(hostPull.code, 0, hostPull.stderr);
    assert.equal(await exists(hostDigest), true);
    gate.release();
    const pulled = await tenantPull;
    assert.equal(pulled.code, 0, pulled.stderr);
    assert.equal(await exists(tenantDigest), true);

    // New on the engine while the tenant pulled, but not what its pull reported: not the tenant's.
    expectRefused(
      await send(sock, { method: 'DELETE', path: `/v1.41/images/${encodeURIComponent(hostDigest)}` }),
      'image-tag',
      'the digest reference the host’s pull made',
    );
    const cli = await docker(guard.address, ['rmi', hostDigest]);
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /berth: image-tag:/);
    assert.equal(await exists(hostDigest), true, 'the host’s digest reference is still there');
    assert.equal(await exists(`${raceRepo}:hostpull`), true, 'and its tag');

    // The tenant's own pull reported its digest: that reference is the tenant's, as plain Docker.
    const r = await docker(guard.address, ['rmi', `${raceRepo}:slow`]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /Deleted: sha256:/, 'tag, digest reference and image went together');
    assert.equal(await exists(tenantDigest), false);
    assert.equal((await docker(RAW, ['rmi', `${raceRepo}:hostpull`])).code, 0);
  });
});
