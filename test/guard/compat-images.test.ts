/**
 * Compatibility, images: Debian's docker CLI through berth guard for a CI job's image work — the
 * legacy builder with its cache and a large context, tag, save/load, export/import from stdin,
 * commit, push/pull against a real registry (Debian's docker-registry on a free loopback port, with
 * X-Registry-Auth passed through), and a scoped image prune.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createReadStream, mkdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { images } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { DOCKER_CLI, SESSION, docker, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { startRegistry } from '../support/registry.js';
import type { TestRegistry } from '../support/registry.js';

const IMAGE = 'berth-local/busybox';
const BUILD_ENV = { DOCKER_BUILDKIT: '0' };

/** POST over the guard's unix socket with extra headers; answers status and body text. */
function post(
  sock: string,
  path: string,
  headers: Record<string, string>,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const s = connect(sock);
    const chunks: Buffer[] = [];
    s.on('data', (b: Buffer) => chunks.push(b));
    s.on('error', reject);
    s.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), text });
    });
    const lines = Object.entries({ Host: 'docker', Connection: 'close', 'Content-Length': '0', ...headers });
    s.end(`POST ${path} HTTP/1.1\r\n${lines.map(([k, v]) => `${k}: ${v}`).join('\r\n')}\r\n\r\n`);
  });
}

describe('compatibility: images through berth guard (docker CLI)', () => {
  const c = engine();
  const dir = tempDir('berth-compat-i-');
  const tenant = uniqueName('compi');
  const repo = `berth-compat-${SESSION}-${randomBytes(3).toString('hex')}`;
  const sock = join(dir.path, 'docker.sock');
  let guard: GuardHandle;
  let host = '';
  let registry: TestRegistry | undefined;
  let regAddr = '';
  const dockerOk = async (args: string[], env: NodeJS.ProcessEnv = {}) => {
    const r = await docker(host, args, { env });
    assert.equal(r.code, 0, `docker ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const ctx = join(dir.path, 'ctx');

  before(async () => {
    guard = await createGuard({ tenant, listen: sock, labels: sessionLabels() });
    host = guard.address;
    registry = await startRegistry(dir.path);
    regAddr = registry.addr;
    mkdirSync(ctx);
    // A context with 20 MiB of data, so the upload is a real stream.
    writeFileSync(join(ctx, 'blob'), randomBytes(20 * 1024 * 1024));
    writeFileSync(
      join(ctx, 'Dockerfile'),
      `FROM ${IMAGE}\nCOPY blob /blob\nRUN echo built > /built && wc -c < /blob > /size\nCMD ["cat", "/built"]\n`,
    );
  });

  after(async () => {
    await guard.close({ cleanup: true });
    await registry?.close();
    // The guard removed the tenant's tags; check none of this suite's repository is left.
    const left = (await images(c).list()).flatMap((i) => i.RepoTags ?? []).filter((t) => t.includes(repo));
    c.close();
    dir[Symbol.dispose]();
    assert.deepEqual(left, [], 'close({ cleanup }) removes every tag the tenant made');
  });

  test('legacy build: context streamed, second build from cache; tag and run', async () => {
    const first = await dockerOk(['build', '-t', `${repo}:1`, ctx], BUILD_ENV);
    assert.match(first, /Successfully tagged/);
    const again = await dockerOk(['build', '-t', `${repo}:1`, ctx], BUILD_ENV);
    assert.match(again, /Using cache/);
    assert.equal(
      await dockerOk(['run', '--rm', '--network', 'none', `${repo}:1`, 'cat', '/size']),
      '20971520\n',
    );
    await dockerOk(['tag', `${repo}:1`, `${repo}:2`]);
    const [a, b] = [await images(c).inspect(`${repo}:1`), await images(c).inspect(`${repo}:2`)];
    assert.equal(a.Id, b.Id);
  });

  test('save and load; export and import from stdin; commit', async () => {
    const tar = join(dir.path, 'img.tar');
    await dockerOk(['save', '-o', tar, `${repo}:2`]);
    await dockerOk(['rmi', `${repo}:2`]);
    assert.equal(await images(c).find(`${repo}:2`), undefined);
    const loaded = await dockerOk(['load', '-i', tar]);
    assert.match(loaded, new RegExp(`Loaded image: ${repo}:2`));
    assert.equal(await dockerOk(['run', '--rm', '--network', 'none', `${repo}:2`]), 'built\n');

    const box = uniqueName('exp');
    await dockerOk(['create', '--name', box, '--network', 'none', `${repo}:1`]);
    const fsTar = join(dir.path, 'fs.tar');
    await dockerOk(['export', '-o', fsTar, box]);
    const imported = await new Promise<{ code: number | null; err: string }>((resolve) => {
      const p = spawn(DOCKER_CLI, ['import', '-', `${repo}:imported`], {
        env: { ...process.env, DOCKER_HOST: host },
      });
      let err = '';
      p.stderr.on('data', (b: Buffer) => (err += b.toString()));
      createReadStream(fsTar).pipe(p.stdin);
      p.on('exit', (code) => resolve({ code, err }));
    });
    assert.equal(imported.code, 0, imported.err);
    assert.equal(
      await dockerOk(['run', '--rm', '--network', 'none', `${repo}:imported`, '/bin/cat', '/built']),
      'built\n',
    );

    await dockerOk(['start', '-a', box]);
    const committed = `${repo}:committed`;
    const runner = uniqueName('commit');
    await dockerOk([
      'run',
      '--name',
      runner,
      '--network',
      'none',
      `${repo}:1`,
      'sh',
      '-c',
      'echo changed > /changed',
    ]);
    await dockerOk(['commit', '--change', 'CMD ["cat", "/changed"]', runner, committed]);
    assert.equal(await dockerOk(['run', '--rm', '--network', 'none', committed]), 'changed\n');
    await dockerOk(['rm', box, runner]);
  });

  test('push and pull through a real registry; X-Registry-Auth reaches the engine', async () => {
    const ref = `${regAddr}/${repo}:1`;
    await dockerOk(['tag', `${repo}:1`, ref]);
    const push = await dockerOk(['push', ref]);
    assert.match(push, /digest: sha256:/);
    const manifest = await fetch(`http://${regAddr}/v2/${repo}/manifests/1`, {
      headers: { Accept: 'application/vnd.docker.distribution.manifest.v2+json' },
    });
    assert.equal(manifest.status, 200, 'the registry holds the pushed image');
    await dockerOk(['rmi', ref]);
    const pull = await dockerOk(['pull', ref]);
    assert.match(pull, /Downloaded newer image|Image is up to date/);
    assert.equal(await dockerOk(['run', '--rm', '--network', 'none', ref]), 'built\n');
    // The raw API with an auth header, as clients logged in to a registry send it: the engine
    // takes it (this registry accepts anyone) and the push succeeds.
    const auth = Buffer.from(
      JSON.stringify({ username: 'ci', password: 'secret', serveraddress: regAddr }),
    ).toString('base64url');
    const raw = await post(sock, `/v1.41/images/${encodeURIComponent(`${regAddr}/${repo}`)}/push?tag=1`, {
      'X-Registry-Auth': auth,
    });
    assert.equal(raw.status, 200, raw.text);
    assert.match(raw.text, /digest: sha256:/);
    assert.doesNotMatch(raw.text, /"error"/);
  });

  test('image prune removes only the tenant’s dangling images', async () => {
    // A dangling image of the tenant: build twice under one tag, the first build loses its tag.
    const dctx = join(dir.path, 'dangle');
    mkdirSync(dctx);
    const built: string[] = [];
    for (const v of ['one', 'two']) {
      writeFileSync(join(dctx, 'Dockerfile'), `FROM ${IMAGE}\nRUN echo ${v}-${repo} > /v\n`);
      built.push((await dockerOk(['build', '-q', '-t', `${repo}:dangle`, dctx], BUILD_ENV)).trim());
    }
    const dangling = built[0] ?? '';
    assert.deepEqual((await images(c).inspect(dangling)).RepoTags ?? [], [], 'the first build lost its tag');
    // A dangling image of the host's, made directly: it must survive the tenant's prune.
    writeFileSync(join(dctx, 'Dockerfile'), `FROM ${IMAGE}\nRUN echo host-${repo} > /v\n`);
    const hostBuilt = await docker('unix:///var/run/docker.sock', ['build', '-q', dctx], { env: BUILD_ENV });
    assert.equal(hostBuilt.code, 0, hostBuilt.stderr);
    const hostId = hostBuilt.stdout.trim();
    try {
      const pruned = await dockerOk(['image', 'prune', '-f']);
      assert.ok(pruned.includes(dangling), `the tenant's dangling image is pruned: ${pruned}`);
      assert.equal(await images(c).find(dangling), undefined);
      assert.ok(await images(c).find(hostId), 'the host’s dangling image survives the tenant’s prune');
      assert.ok(await images(c).find(`${repo}:dangle`), 'tagged images stay');
    } finally {
      await images(c)
        .remove(hostId, true)
        .catch(() => false);
    }
  });
});
