/**
 * Attack: making the daemon fetch from the host's network. The legacy builder downloads an
 * `ADD <url>` source itself, in dockerd, so a build could read what only the host can reach (a
 * service on the host's loopback, here a test HTTP server on 127.0.0.1) into its image. Every
 * form the guard refuses is sent as raw HTTP with a hand-made context, and through the CLI; the
 * server must see no request, and no image is made. Ordinary builds (ADD of a local file, gzip
 * contexts, `-f -`) still work.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { images } from '../../src/engine/index.js';
import { createGuard, defaultPolicy } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { SESSION, docker, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, messageOf, postBuild, send } from '../support/rawhttp.js';
import { startRegistry } from '../support/registry.js';
import { startHostService } from '../support/hostservice.js';
import type { HostService } from '../support/hostservice.js';
import { END, entry } from '../support/tar.js';

const RAW = 'unix:///var/run/docker.sock';

describe('attack: builds that make the daemon fetch from the host’s network', () => {
  const c = engine();
  const dir = tempDir('berth-fetch-');
  const sock = join(dir.path, 'g.sock');
  let guard: GuardHandle;
  let service: HostService;
  let url = '';
  const base = `berth-onbuild-base-${SESSION}:v1`;
  const made: string[] = [];

  before(async () => {
    service = await startHostService({ body: 'host secret\n' });
    url = `http://${service.addr}/secret`;
    guard = await createGuard({ tenant: uniqueName('fetch'), listen: sock, labels: sessionLabels() });
    // A base image the host made, with a trigger that runs in every build FROM it.
    const ctx = join(dir.path, 'base');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM berth-local/busybox\nONBUILD ADD ${url} /secret\n`);
    const b = await docker(
      RAW,
      ['build', '-q', '--label', `io.berth.test-session=${SESSION}`, '-t', base, ctx],
      {
        env: { DOCKER_BUILDKIT: '0' },
      },
    );
    assert.equal(b.code, 0, b.stderr);
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    for (const t of [base, ...made])
      await images(c)
        .remove(t)
        .catch(() => false);
    await service[Symbol.asyncDispose]();
    c.close();
    dir[Symbol.dispose]();
  });

  const build = (context: Buffer, query = '') =>
    postBuild(sock, context, query, { framing: 'chunked', chunks: [700, 300], timeoutMs: 60_000 });
  const context = (dockerfile: string | Buffer, name = 'Dockerfile', extra: Buffer[] = []) =>
    Buffer.concat([entry('local.txt', 'local\n'), ...extra, entry(name, dockerfile), END]);

  test('refused shapes (raw API): nothing is fetched, no image is made', async () => {
    for (const [what, ctx, query] of [
      ['ADD <url>', context(`FROM berth-local/busybox\nADD ${url} /s\n`), ''],
      ['lower-case add, JSON form', context(`from berth-local/busybox\nadd ["${url}", "/s"]\n`), ''],
      [
        'a URL split over a continuation',
        context(`FROM berth-local/busybox\nADD ${url.slice(0, 9)}\\\n${url.slice(9)} /s\n`),
        '',
      ],
      ['a variable', context(`FROM berth-local/busybox\nARG U=${url}\nADD $U /s\n`), ''],
      [
        'a build arg',
        context('FROM berth-local/busybox\nARG U\nADD ${U} /s\n'),
        `buildargs=${encodeURIComponent(JSON.stringify({ U: url }))}`,
      ],
      [
        'a Dockerfile named by the dockerfile option',
        context(`FROM berth-local/busybox\nADD ${url} /s\n`, 'build/Other'),
        'dockerfile=build/Other',
      ],
      ['a gzip context', gzipSync(context(`FROM berth-local/busybox\nADD ${url} /s\n`)), ''],
      [
        'an earlier version of the Dockerfile in the archive',
        context('FROM berth-local/busybox\nRUN true\n', 'Dockerfile', [
          entry('Dockerfile', `FROM berth-local/busybox\nADD ${url} /s\n`),
        ]),
        '',
      ],
      ['a base image’s ONBUILD trigger', context(`FROM ${base}\nRUN true\n`), ''],
    ] as const) {
      const tag = `berth-fetch-${SESSION}:${made.length}`;
      made.push(tag);
      const r = await build(ctx, `${query}${query ? '&' : ''}t=${encodeURIComponent(tag)}`);
      expectRefused(r, 'build-options', what);
      assert.equal(service.hits(), 0, `${what}: the daemon fetched the URL`);
      assert.equal(await images(c).find(tag), undefined, `${what}: an image was made`);
    }
  });

  test('red-team pass 4: byte-level flags, FROM names, triggers over lines, nested gzip, links, no Dockerfile', async () => {
    // A tenant image whose ONBUILD trigger spans lines (a commit's config can hold any string):
    // dockerd drops the comment line and runs the ADD.
    const ml = `berth-fetch-ml-${SESSION}:v1`;
    made.push(ml);
    const ctr = await send(sock, {
      method: 'POST',
      path: '/v1.41/containers/create',
      headers: [['Content-Type', 'application/json']],
      body: JSON.stringify({
        Image: 'berth-local/busybox',
        Cmd: ['true'],
        HostConfig: { NetworkMode: 'none' },
      }),
    });
    assert.equal(ctr.status, 201, ctr.text);
    const cid = (JSON.parse(ctr.text) as { Id: string }).Id;
    const [mlRepo, mlTag] = ml.split(':');
    const commit = await send(sock, {
      method: 'POST',
      path: `/v1.41/commit?container=${cid}&repo=${mlRepo ?? ''}&tag=${mlTag ?? ''}`,
      headers: [['Content-Type', 'application/json']],
      body: JSON.stringify({ OnBuild: [`# x\nADD ${url} /s`] }),
    });
    assert.equal(commit.status, 201, commit.text);
    const baseId = (await images(c).inspect(base)).Id;
    // An amd64 image under a loopback registry's name (no registry there: the pull fails at once).
    const plat = `127.0.0.1:9/berth-plat-${SESSION}:v1`;
    made.push(plat);
    assert.equal((await docker(RAW, ['tag', 'berth-local/busybox', plat])).code, 0);
    const link = Buffer.concat([
      entry('s', '', '2', { linkname: '.' }),
      entry('h', '', '1', { linkname: 's' }),
      entry('h/Dockerfile', `FROM berth-local/busybox\nADD ${url} /s\n`),
      END,
    ]);
    for (const [what, ctx, query, rule, status] of [
      [
        'a gzip stream inside the gzip',
        gzipSync(gzipSync(context(`FROM berth-local/busybox\nADD ${url} /s\n`))),
        '',
        'malformed',
        400,
      ],
      [
        'a flag ended by the byte 0xA0',
        context(
          Buffer.concat([
            Buffer.from('FROM berth-local/busybox\nADD --chown=0:0'),
            Buffer.from([0xa0]),
            Buffer.from(`${url} /s\n`),
          ]),
        ),
        '',
        'build-options',
        403,
      ],
      [
        'a flag ended inside a UTF-8 sequence',
        context(`FROM berth-local/busybox\nADD --chown=rootŅ${url} /s\n`),
        '',
        'build-options',
        403,
      ],
      ['a quoted FROM name', context(`FROM "${base}"\nRUN true\n`), '', 'build-options', 403],
      [
        'a FROM name through ARG defaults',
        context(`ARG A=${base}\nARG B=$A\nFROM $B\nRUN true\n`),
        '',
        'build-options',
        403,
      ],
      [
        // dockerd expands ARG defaults with its builtin proxy args too, declared or not.
        'a FROM name through a proxy build arg',
        context('ARG B=$HTTP_PROXY\nFROM $B\nRUN true\n'),
        `buildargs=${encodeURIComponent(JSON.stringify({ HTTP_PROXY: base }))}`,
        'build-options',
        403,
      ],
      [
        // An ID prefix is searched for again when the build reaches the stage.
        'a FROM by an image ID prefix',
        context(`FROM ${baseId.slice(7, 14)}\nRUN true\n`),
        '',
        'build-options',
        403,
      ],
      ['a trigger over two lines', context(`FROM ${ml}\nRUN true\n`), '', 'build-options', 403],
      ['a hard link to a symlink', link, '', 'malformed', 400],
      [
        'no Dockerfile where the option names it',
        context('FROM berth-local/busybox\n', 'Other'),
        '',
        'build-options',
        403,
      ],
      [
        'a base berth cannot find',
        // Named on a loopback port with no registry: the guard's pull fails there, not on the Hub.
        context(`FROM 127.0.0.1:9/berth-none-${SESSION}:v1\nRUN true\n`),
        '',
        'build-options',
        403,
      ],
      [
        'a platform the engine’s base is not for',
        context(`FROM ${plat}\nRUN true\n`),
        'platform=linux/s390x',
        'build-options',
        403,
      ],
    ] as const) {
      const tag = `berth-fetch-${SESSION}:${made.length}`;
      made.push(tag);
      const r = await build(ctx, `${query}${query ? '&' : ''}t=${encodeURIComponent(tag)}`);
      expectRefused(r, rule, what, status);
      assert.equal(service.hits(), 0, `${what}: the daemon fetched the URL`);
      assert.equal(await images(c).find(tag), undefined, `${what}: an image was made`);
    }
  });

  test('a base the tenant owns cannot move while its build runs (the builder reads it at its stage)', async () => {
    const mine = `berth-fetch-mine-${SESSION}:v1`;
    made.push(mine);
    const [repo, t] = mine.split(':');
    const clean = await send(sock, {
      method: 'POST',
      path: `/v1.41/images/berth-local/busybox/tag?repo=${repo ?? ''}&tag=${t ?? ''}`,
    });
    assert.equal(clean.status, 201, clean.text);
    const tag = `berth-fetch-${SESSION}:race`;
    made.push(tag);
    const running = build(
      // A step no earlier run cached: the first stage must really take its 4 s.
      context(
        `FROM berth-local/busybox AS first\nRUN echo ${SESSION}-${Date.now()} && sleep 4\nFROM ${mine}\nRUN true\n`,
      ),
      `t=${encodeURIComponent(tag)}`,
    );
    // Once the context passed (the first stage is running), the tenant tries to point its tag at
    // the image whose trigger fetches, and to remove it (the builder would then pull the name).
    await new Promise((r) => setTimeout(r, 2000));
    expectRefused(
      await send(sock, {
        method: 'POST',
        path: `/v1.41/images/${base}/tag?repo=${repo ?? ''}&tag=${t ?? ''}`,
      }),
      'image-tag',
      'moving a base during its build',
    );
    expectRefused(
      await send(sock, { method: 'DELETE', path: `/v1.41/images/${mine}` }),
      'image-tag',
      'removing a base during its build',
    );
    const r = await running;
    assert.equal(r.status, 200, r.text);
    assert.match(r.text, /Successfully tagged/);
    assert.equal(service.hits(), 0, 'the daemon fetched the URL');
    // Once the build ended, the tag is the tenant's to move again.
    const moved = await send(sock, {
      method: 'POST',
      path: `/v1.41/images/${base}/tag?repo=${repo ?? ''}&tag=${t ?? ''}`,
    });
    assert.equal(moved.status, 201, moved.text);
  });

  test('a context the guard cannot read is malformed (400), and nothing runs', async () => {
    for (const [what, ctx] of [
      ['bzip2', Buffer.concat([Buffer.from('BZh91AY&SY'), Buffer.alloc(600)])],
      [
        'a sparse entry',
        Buffer.concat([entry('Dockerfile', `FROM berth-local/busybox\nADD ${url} /s\n`, 'S'), END]),
      ],
      ['cut in a header', context('FROM berth-local/busybox\n').subarray(0, 300)],
    ] as const) {
      const r = await build(ctx);
      assert.equal(r.status, 400, `${what}: ${r.text}`);
      assert.match(messageOf(r) ?? '', /^berth: malformed: /, what);
    }
    assert.equal(service.hits(), 0);
  });

  test('the same through the CLI, with a context directory and with -f -', async () => {
    const ctx = join(dir.path, 'cli');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM berth-local/busybox\nADD ${url} /s\n`);
    const env = { DOCKER_BUILDKIT: '0' };
    const dirBuild = await docker(guard.address, ['build', ctx], { env });
    assert.notEqual(dirBuild.code, 0);
    assert.match(dirBuild.stderr, /berth: build-options: line 2: ADD /);
    const stdin = await docker(guard.address, ['build', '-f', '-', ctx], {
      env,
      input: `FROM berth-local/busybox\nADD ${url} /s\n`,
    });
    assert.notEqual(stdin.code, 0);
    assert.match(stdin.stderr, /berth: build-options: /);
    assert.equal(service.hits(), 0, 'the daemon fetched the URL');
  });

  test('ordinary builds still work: ADD of a local file, gzip contexts, -f -', async () => {
    const tag = `berth-fetch-${SESSION}:ok`;
    made.push(tag);
    const r = await build(
      gzipSync(context('FROM berth-local/busybox\nADD local.txt /local.txt\nRUN cat /local.txt\n')),
      `t=${encodeURIComponent(tag)}`,
    );
    assert.equal(r.status, 200, r.text);
    assert.match(r.text, /Successfully tagged/);
    assert.ok(await images(c).find(tag));
    const ctx = join(dir.path, 'ok');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'local.txt'), 'local\n');
    const stdin = await docker(guard.address, ['build', '-q', '-f', '-', ctx], {
      env: { DOCKER_BUILDKIT: '0' },
      input: 'FROM berth-local/busybox\nADD local.txt /l\nRUN cat /l\n',
    });
    assert.equal(stdin.code, 0, stdin.stderr);
    assert.equal(service.hits(), 0);
  });

  test('a base image the build would pull is pulled and read first: its ONBUILD trigger is refused too', async () => {
    const registry = await startRegistry(dir.path);
    const remote = `${registry.addr}/berth-onbuild-${SESSION}:v1`;
    made.push(remote);
    try {
      // The host pushes an image with the trigger to a registry, and keeps no copy of it.
      assert.equal((await docker(RAW, ['tag', base, remote])).code, 0);
      const push = await docker(RAW, ['push', remote]);
      assert.equal(push.code, 0, push.stderr);
      assert.equal((await docker(RAW, ['rmi', remote])).code, 0);
      assert.equal(await images(c).find(remote), undefined);
      const tag = `berth-fetch-${SESSION}:pulled`;
      made.push(tag);
      // Named through a global ARG and a build arg, as CI Dockerfiles often name their base.
      const r = await build(
        context('ARG BASE=berth-local/busybox\nFROM ${BASE}\nRUN true\n'),
        `t=${encodeURIComponent(tag)}&buildargs=${encodeURIComponent(JSON.stringify({ BASE: remote }))}`,
      );
      expectRefused(r, 'build-options', 'the pulled base image’s ONBUILD trigger');
      assert.match(r.text, /ONBUILD ADD http:/);
      assert.equal(service.hits(), 0, 'the daemon fetched the URL');
      assert.equal(await images(c).find(tag), undefined);

      // With pull=1 the builder would pull the base again, whatever the engine has under its name:
      // here the host's clean image, while the registry holds the one with the trigger. A pull
      // would move the host's tag onto the registry's image, so the guard does not pull: the build
      // is sent without pull and uses the image the engine has, which berth read.
      assert.equal((await docker(RAW, ['tag', 'berth-local/busybox', remote])).code, 0);
      const hostId = (await images(c).inspect(remote)).Id;
      const again = `berth-fetch-${SESSION}:pull1`;
      made.push(again);
      const p = await build(context(`FROM ${remote}\nRUN true\n`), `pull=1&t=${encodeURIComponent(again)}`);
      assert.equal(p.status, 200, p.text);
      assert.doesNotMatch(p.text, /errorDetail/);
      assert.equal(service.hits(), 0, 'the daemon fetched the URL');
      assert.equal((await images(c).inspect(remote)).Id, hostId, 'the host’s tag moved');
    } finally {
      await registry.close();
    }
  });

  test('a policy that allows build-options (a trusted tenant) lets the daemon fetch, as the rule says', async () => {
    const trusted = await createGuard({
      tenant: uniqueName('fetchok'),
      listen: join(dir.path, 't.sock'),
      labels: sessionLabels(),
      policy: { ...defaultPolicy(), allow: new Set(['build-options'] as const) },
    });
    try {
      const ctx = join(dir.path, 'trusted');
      mkdirSync(ctx);
      writeFileSync(join(ctx, 'Dockerfile'), `FROM berth-local/busybox\nADD ${url} /s\nRUN cat /s\n`);
      const r = await docker(trusted.address, ['build', '-q', ctx], { env: { DOCKER_BUILDKIT: '0' } });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(service.hits(), 1, 'the daemon fetched the URL once');
    } finally {
      await trusted.close({ cleanup: true });
    }
  });
});
