/**
 * Attack: claiming someone else's image through a build's output. The guard learns which images a
 * tenant built from the build's progress stream, and a tenant controls what its RUN steps print.
 * A step that prints dockerd's "Successfully built <id>" line or an `{"aux":{"ID":...}}` message
 * naming the host's image must not make that image the tenant's: not removable by ID, not pruned,
 * not removed by the guard's cleanup.
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

const RAW = 'unix:///var/run/docker.sock';

describe('attack: a build that prints the host image’s ID', () => {
  const c = engine();
  const dir = tempDir('berth-buildout-');
  const tenant = uniqueName('bout');
  const sock = join(dir.path, 'g.sock');
  const victim = `berth-buildout-${SESSION}:host`;
  let guard: GuardHandle;
  let victimId = '';

  before(async () => {
    // The host's image: one tag, no containers, so an unforced removal by ID would delete it.
    const ctx = join(dir.path, 'host');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM berth-local/busybox\nRUN echo ${SESSION} > /host\n`);
    const b = await docker(
      RAW,
      ['build', '-q', '--label', `io.berth.test-session=${SESSION}`, '-t', victim, ctx],
      {
        env: { DOCKER_BUILDKIT: '0' },
      },
    );
    assert.equal(b.code, 0, b.stderr);
    victimId = (await images(c).inspect(victim)).Id;
    guard = await createGuard({ tenant, listen: sock, labels: sessionLabels() });
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    await images(c)
      .remove(victim, true)
      .catch(() => false);
    const left = (await images(c).list()).filter((i) =>
      (i.RepoTags ?? []).some((t) => t.includes(`berth-buildout-${SESSION}`)),
    );
    c.close();
    dir[Symbol.dispose]();
    assert.deepEqual(left, [], 'no image of this suite is left');
  });

  test('the forged lines do not make the host image the tenant’s; it survives prune and cleanup', async () => {
    const short = victimId.replace(/^sha256:/, '').slice(0, 12);
    const ctx = join(dir.path, 'forge');
    mkdirSync(ctx);
    writeFileSync(
      join(ctx, 'Dockerfile'),
      [
        'FROM berth-local/busybox',
        `RUN echo "Successfully built ${short}"`,
        `RUN echo '{"aux":{"ID":"${victimId}"}}'`,
        `RUN printf '"ID":"${victimId}"\\n'`,
        '',
      ].join('\n'),
    );
    const b = await docker(
      guard.address,
      ['build', '--no-cache', '-t', `berth-buildout-${SESSION}:forge`, ctx],
      {
        env: { DOCKER_BUILDKIT: '0' },
      },
    );
    assert.equal(b.code, 0, b.stderr);
    assert.match(b.stdout, new RegExp(`Successfully built ${short}`), 'the forged line was printed');

    // By ID (full and short), through the raw API and the CLI: not the tenant's to remove.
    for (const ref of [victimId, short])
      expectRefused(await send(sock, { method: 'DELETE', path: `/v1.41/images/${ref}` }), 'image-tag', ref);
    const rmi = await docker(guard.address, ['rmi', short]);
    assert.notEqual(rmi.code, 0, 'docker rmi by the host image’s ID is refused');
    const prune = await send(sock, {
      method: 'POST',
      path: '/v1.41/images/prune?filters=%7B%22dangling%22%3A%5B%22false%22%5D%7D',
    });
    assert.equal(prune.status, 200);
    assert.ok(!prune.body.toString().includes(victimId.replace(/^sha256:/, '')), 'prune did not delete it');
    assert.equal((await images(c).inspect(victim)).Id, victimId, 'the host image is still there');

    // The guard's cleanup removes the tenant's own image and nothing of the host's.
    await guard.close({ cleanup: true });
    assert.equal((await images(c).inspect(victim)).Id, victimId, 'the host image survived the cleanup');
    assert.equal(
      await images(c).find(`berth-buildout-${SESSION}:forge`),
      undefined,
      'the tenant’s image is gone',
    );
  });
});

describe('attack: removing an image another tenant built, reached through the shared build cache', () => {
  const c = engine();
  const dir = tempDir('berth-buildcache-');
  const repo = `berth-buildcache-${SESSION}`;
  let a: GuardHandle;
  let b: GuardHandle;

  before(async () => {
    a = await createGuard({
      tenant: uniqueName('bca'),
      listen: join(dir.path, 'a.sock'),
      labels: sessionLabels(),
    });
    b = await createGuard({
      tenant: uniqueName('bcb'),
      listen: join(dir.path, 'b.sock'),
      labels: sessionLabels(),
    });
  });

  after(async () => {
    await a.close({ cleanup: true }).catch(() => undefined);
    await b.close({ cleanup: true }).catch(() => undefined);
    for (const t of ['a', 'b'])
      await images(c)
        .remove(`${repo}:${t}`, true)
        .catch(() => false);
    const left = (await images(c).list()).filter((i) => (i.RepoTags ?? []).some((t) => t.startsWith(repo)));
    c.close();
    dir[Symbol.dispose]();
    assert.deepEqual(left, [], 'no image of this suite is left');
  });

  test('the second tenant’s cached build gives it the first one’s image, which it can neither remove nor clean up', async () => {
    const ctx = join(dir.path, 'ctx');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM berth-local/busybox\nRUN echo ${SESSION} > /same\n`);
    for (const [g, t] of [
      [a, 'a'],
      [b, 'b'],
    ] as const) {
      const r = await docker(g.address, ['build', '-q', '-t', `${repo}:${t}`, ctx], {
        env: { DOCKER_BUILDKIT: '0' },
      });
      assert.equal(r.code, 0, r.stderr);
    }
    const id = (await images(c).inspect(`${repo}:a`)).Id;
    assert.equal(
      (await images(c).inspect(`${repo}:b`)).Id,
      id,
      'the second build came from the cache: one image, two tags',
    );

    // B may drop its own tag, but not the image: it carries A's tag too.
    const bSock = join(dir.path, 'b.sock');
    expectRefused(
      await send(bSock, { method: 'DELETE', path: `/v1.41/images/${id}?force=1` }),
      'image-tag',
      'by ID, forced',
    );
    const rmi = await docker(b.address, ['rmi', '-f', id.replace(/^sha256:/, '').slice(0, 12)]);
    assert.notEqual(rmi.code, 0, 'docker rmi -f by ID is refused');
    assert.equal((await images(c).inspect(`${repo}:a`)).Id, id);

    // B's cleanup removes B's tag and leaves A's image alone.
    await b.close({ cleanup: true });
    assert.equal(await images(c).find(`${repo}:b`), undefined, 'B’s tag is gone');
    assert.equal((await images(c).inspect(`${repo}:a`)).Id, id, 'A’s image and tag survived B’s cleanup');

    // A's cleanup then removes it: nobody else names it.
    await a.close({ cleanup: true });
    assert.equal(await images(c).find(id), undefined, 'gone with its last owner');
  });
});

describe('quiet builds (docker build -q): the one-line answer names the tenant’s image', () => {
  const c = engine();
  const dir = tempDir('berth-buildq-');
  const victim = `berth-buildq-${SESSION}:host`;
  let guard: GuardHandle;
  let victimId = '';

  /** A context whose image is new each time (its own file content). */
  function context(name: string, dockerfile: string): string {
    const ctx = join(dir.path, name);
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), dockerfile);
    return ctx;
  }

  before(async () => {
    const b = await docker(
      RAW,
      [
        'build',
        '-q',
        '--label',
        `io.berth.test-session=${SESSION}`,
        '-t',
        victim,
        context('host', `FROM berth-local/busybox\nRUN echo host-${SESSION} > /host\n`),
      ],
      { env: { DOCKER_BUILDKIT: '0' } },
    );
    assert.equal(b.code, 0, b.stderr);
    victimId = (await images(c).inspect(victim)).Id;
    guard = await createGuard({
      tenant: uniqueName('bq'),
      listen: join(dir.path, 'g.sock'),
      labels: sessionLabels(),
    });
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    await images(c)
      .remove(victim, true)
      .catch(() => false);
    const left = (await images(c).list({ label: [`io.berth.test-session=${SESSION}`] })).filter(
      (i) => i.Id !== victimId && (i.Labels ?? {})['berth.test.quiet'] !== undefined,
    );
    c.close();
    dir[Symbol.dispose]();
    assert.deepEqual(left, [], 'no quiet-built image is left');
  });

  /** A quiet build of a new image; `steps` replace the default one (a failing first step commits nothing). */
  const quietBuild = (name: string, steps = `RUN echo ${name}-${SESSION} > /f\n`) =>
    docker(
      guard.address,
      ['build', '-q', '--label', 'berth.test.quiet=1', context(name, `FROM berth-local/busybox\n${steps}`)],
      { env: { DOCKER_BUILDKIT: '0' } },
    );

  test('an untagged quiet build can be removed by its ID, and a forged ID line in a failed one counts for nothing', async () => {
    const b = await quietBuild('mine');
    assert.equal(b.code, 0, b.stderr);
    const id = b.stdout.trim();
    assert.match(id, /^sha256:[0-9a-f]{64}$/);
    const rmi = await docker(guard.address, ['rmi', id]);
    assert.equal(rmi.code, 0, rmi.stderr);
    assert.equal(await images(c).find(id), undefined);

    // A failed quiet build answers with its steps' output, then the error: a step that prints
    // dockerd's one-line answer naming the host's image does not make it the tenant's.
    const forged = await quietBuild('forged', `RUN echo ${victimId} && exit 1\n`);
    assert.notEqual(forged.code, 0);
    expectRefused(
      await send(join(dir.path, 'g.sock'), { method: 'DELETE', path: `/v1.41/images/${victimId}` }),
      'image-tag',
    );
    assert.equal((await images(c).inspect(victim)).Id, victimId);
  });

  test('a failed quiet build answers with the end of its output, not all of it held in the guard', async () => {
    const b = await quietBuild('big', 'RUN yes 0123456789abcdef0123456789abcdef | head -c 3000000; exit 3\n');
    assert.notEqual(b.code, 0);
    const out = b.stdout + b.stderr;
    assert.match(out, /returned a non-zero code: 3/, 'the error comes last, as dockerd answers');
    assert.ok(out.length < 1.5 * 1024 * 1024, `the answer holds ${out.length} bytes: only the end is kept`);
  });

  test('a failed multi-stage build tags nothing (its first stage’s image is not the build’s)', async () => {
    const tag = `berth-buildq-${SESSION}:failed`;
    const b = await docker(
      guard.address,
      [
        'build',
        '-t',
        tag,
        context(
          'msfail',
          `FROM berth-local/busybox AS a\nRUN echo a-${SESSION}-fail > /a\nFROM berth-local/busybox\nRUN false\n`,
        ),
      ],
      { env: { DOCKER_BUILDKIT: '0' } },
    );
    assert.notEqual(b.code, 0);
    assert.doesNotMatch(b.stdout, /Successfully tagged/);
    assert.equal(await images(c).find(tag), undefined, 'no tag was set');
  });

  test('an untagged quiet build left behind is removed by the cleanup, every stage’s image with it', async () => {
    // A quiet build answers with the last image only: the guard asks dockerd for every stage's.
    const dockerfile = `FROM berth-local/busybox AS a\nRUN echo a-${SESSION}-ms > /a\nFROM berth-local/busybox\nCOPY --from=a /a /a\n`;
    const ms = await docker(guard.address, ['build', '-q', context('ms', dockerfile)], {
      env: { DOCKER_BUILDKIT: '0' },
    });
    assert.equal(ms.code, 0, ms.stderr);
    assert.match(ms.stdout.trim(), /^sha256:[0-9a-f]{64}$/, 'the one-line answer');
    // The same build on the raw socket is answered from the cache: its stage images are those.
    const again = await docker(RAW, ['build', context('ms-raw', dockerfile)], {
      env: { DOCKER_BUILDKIT: '0' },
    });
    assert.equal(again.code, 0, again.stderr);
    const stages = [
      ...again.stdout.matchAll(/---> ([0-9a-f]{12})\n(?:Step \d+\/\d+ : FROM|Successfully built)/g),
    ].map((m) => m[1] ?? '');
    assert.ok(stages.length >= 2, again.stdout);
    for (const s of stages) assert.ok(await images(c).find(s), `stage image ${s} exists`);
    const b = await quietBuild('left');
    assert.equal(b.code, 0, b.stderr);
    const id = b.stdout.trim();
    assert.ok(await images(c).find(id));
    await guard.close({ cleanup: true });
    assert.equal(await images(c).find(id), undefined, 'the cleanup removed it');
    for (const s of stages)
      assert.equal(await images(c).find(s), undefined, `the cleanup removed stage ${s}`);
    assert.equal((await images(c).inspect(victim)).Id, victimId, 'and nothing of the host’s');
  });
});
