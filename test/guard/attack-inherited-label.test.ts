/**
 * Attack: ownership by inherited label. Containers inherit their image's labels, so an image that
 * carries `io.berth.tenant=<attacker>` (built with that label anywhere, pulled, loaded) makes every
 * container the host runs from it look like the attacker's. The guard must not be fooled: such a
 * host container is absent for the attacker on every path (inspect, list, kill, exec, prune, events,
 * df) and survives the attacker's cleanup. And images made through the guard (build, commit,
 * import) must not carry any tenant's label, whatever the Dockerfile or `--change` says.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LABEL_TENANT } from '../../src/common/index.js';
import { containers, images } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { AuditRecord, GuardHandle } from '../../src/guard/index.js';
import {
  auditAfter,
  auditRecords,
  DOCKER_CLI,
  docker,
  engine,
  sessionLabels,
  SESSION,
  tempDir,
  uniqueName,
} from '../support/index.js';
import { expectAbsent, postJson, send } from '../support/rawhttp.js';

const IMAGE = 'berth-local/busybox';

describe('attack: a host container run from an image that carries the attacker’s tenant label', () => {
  const c = engine();
  const dir = tempDir('berth-inherit-');
  const tenant = uniqueName('inh');
  const victim = uniqueName('inhv');
  const repo = `berth-inherit-${SESSION}`;
  const forged = `${repo}:forged`;
  const sock = join(dir.path, 'a.sock');
  const auditFile = join(dir.path, 'audit.log');
  const auditLines = () => auditRecords(auditFile);
  let guard: GuardHandle;
  let running = '';
  let stopped = '';
  const tags: string[] = [forged];

  before(async () => {
    // The forged image: made directly upstream (as a pulled or loaded image would be) with the
    // attacker's tenant label.
    await images(c).tag(IMAGE, repo, 'base');
    tags.push(`${repo}:base`);
    const ctx = join(dir.path, 'forged');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${repo}:base\nLABEL ${LABEL_TENANT}=${tenant}\n`);
    const b = await docker('unix:///var/run/docker.sock', ['build', '-q', '-t', forged, ctx], {
      env: { DOCKER_BUILDKIT: '0' },
    });
    assert.equal(b.code, 0, b.stderr);
    // The host runs containers from it, directly: they inherit io.berth.tenant=<attacker>.
    const mk = async (name: string, start: boolean) => {
      const { Id } = await containers(c).create(
        {
          Image: forged,
          Cmd: ['sleep', '3600'],
          Labels: sessionLabels(),
          HostConfig: { NetworkMode: 'none' },
        },
        name,
      );
      if (start) await containers(c).start(Id);
      return Id;
    };
    running = await mk(uniqueName('inhrun'), true);
    stopped = await mk(uniqueName('inhstop'), false);
    const labels = (await containers(c).inspect(running)).Config.Labels ?? {};
    assert.equal(labels[LABEL_TENANT], tenant, 'the host container does carry the attacker’s label');
    guard = await createGuard({ tenant, listen: sock, labels: sessionLabels(), audit: auditFile });
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    for (const id of [running, stopped]) if (id) await containers(c).remove(id, { force: true });
    for (const t of tags)
      await images(c)
        .remove(t)
        .catch(() => false);
    c.close();
    dir[Symbol.dispose]();
  });

  const hostIntact = async () => {
    const r = await containers(c).find(running);
    const s = await containers(c).find(stopped);
    assert.ok(r?.State.Running, 'the running host container still runs');
    assert.ok(s, 'the stopped host container still exists');
  };

  test('inspect, kill, stop, exec, rename and remove by ID, prefix or name answer 404', async () => {
    const name = (await containers(c).inspect(running)).Name.replace(/^\//, '');
    for (const ref of [running, running.slice(0, 12), name]) {
      expectAbsent(await send(sock, { path: `/v1.41/containers/${ref}/json` }), `inspect ${ref}`);
      for (const [method, path, body] of [
        ['POST', `/v1.41/containers/${ref}/kill`, undefined],
        ['POST', `/v1.41/containers/${ref}/stop?t=0`, undefined],
        ['POST', `/v1.41/containers/${ref}/exec`, '{"Cmd":["true"]}'],
        ['POST', `/v1.41/containers/${ref}/rename?name=${uniqueName('x')}`, undefined],
        ['DELETE', `/v1.41/containers/${ref}?force=1`, undefined],
      ] as const)
        expectAbsent(
          await send(sock, {
            method,
            path,
            ...(body ? { body, headers: [['Content-Type', 'application/json']] as const } : {}),
          }),
          `${method} ${path}`,
        );
    }
    const cli = await docker(guard.address, ['kill', running]);
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /No such container/);
    await hostIntact();
  });

  test('once the forged image itself is gone, its host container still answers 404', async () => {
    // Without its image the guard cannot tell an inherited label from its own: it must not guess.
    const gone = `${repo}:gone`;
    await images(c).tag(forged, repo, 'gone');
    const ctx = join(dir.path, 'gone');
    mkdirSync(ctx, { recursive: true });
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${forged}\nENV BERTH_GONE=${SESSION}\n`);
    const b = await docker('unix:///var/run/docker.sock', ['build', '-q', '-t', gone, ctx], {
      env: { DOCKER_BUILDKIT: '0' },
    });
    assert.equal(b.code, 0, b.stderr);
    const { Id } = await containers(c).create(
      { Image: gone, Cmd: ['true'], Labels: sessionLabels(), HostConfig: { NetworkMode: 'none' } },
      uniqueName('inhgone'),
    );
    try {
      await images(c).remove(gone, true);
      assert.equal(
        await images(c).find((await containers(c).inspect(Id)).Image),
        undefined,
        'the image is gone',
      );
      expectAbsent(await send(sock, { path: `/v1.41/containers/${Id}/json` }), 'inspect');
      expectAbsent(await send(sock, { method: 'DELETE', path: `/v1.41/containers/${Id}?force=1` }), 'remove');
      assert.ok(await containers(c).find(Id), 'the host container survives');
    } finally {
      await containers(c).remove(Id, { force: true });
    }
  });

  test('lists, system df and prune leave it out', async () => {
    const list = await send(sock, { path: '/v1.41/containers/json?all=1' });
    assert.equal(list.status, 200);
    assert.ok(!list.text.includes(running) && !list.text.includes(stopped), 'ps -a shows host containers');
    const df = await send(sock, { path: '/v1.41/system/df' });
    assert.equal(df.status, 200);
    assert.ok(!df.text.includes(running) && !df.text.includes(stopped), 'system df shows host containers');
    const prune = await send(sock, { method: 'POST', path: '/v1.41/containers/prune' });
    assert.equal(prune.status, 200, prune.text);
    assert.ok(!prune.text.includes(stopped), prune.text);
    const cli = await docker(guard.address, ['container', 'prune', '-f']);
    assert.equal(cli.code, 0, cli.stderr);
    await hostIntact();
  });

  test('lists leave it out when the attacker’s own entries carry backslashes and quotes, or a limit applies', async () => {
    // The front answers a list itself only when every entry is the tenant's, and it skips strings
    // to find the entries. A skip that takes every quote after a backslash for an escaped one
    // reads a value ending in a backslash as going on, and from there reads strings as structure
    // and structure as strings, until an escaped quote puts it back in step. Between the two, the
    // next entries go by unseen. Here the host's container, made between the attacker's two, is
    // listed (newest first) between them.
    const markKey = `berth-skip-${SESSION}`;
    const create = async (labels: Record<string, string>) => {
      const made = await postJson(
        sock,
        '/v1.41/containers/create',
        JSON.stringify({
          Image: IMAGE,
          Cmd: ['true'],
          Labels: { [markKey]: 'x', ...labels },
          HostConfig: { NetworkMode: 'none' },
        }),
      );
      assert.equal(made.status, 201, made.text);
      return (JSON.parse(made.text) as { Id: string }).Id;
    };
    // Kept alive, as clients send them: the front hands a request that closes to the guard.
    const list = async (label: string, limit?: number) => {
      const filters = encodeURIComponent(JSON.stringify({ label: [label] }));
      const from = auditLines().length;
      const r = await send(sock, {
        path: `/v1.41/containers/json?${limit === undefined ? 'all=1' : `limit=${limit}`}&filters=${filters}`,
        headers: [['Connection', 'keep-alive']],
      });
      assert.equal(r.status, 200, r.text);
      const isList = (l: AuditRecord) => l.path === '/containers/json';
      const via = (await auditAfter(auditFile, from, isList)).find(isList)?.via;
      return { ids: (JSON.parse(r.text) as { Id: string }[]).map((e) => e.Id), via };
    };
    const mine: string[] = [];
    let between = '';
    try {
      mine.push(await create({ q: 'in "step" again', own: '' }));
      between = (
        await containers(c).create({
          Image: forged,
          Cmd: ['true'],
          Labels: { ...sessionLabels(), [markKey]: 'x' },
          HostConfig: { NetworkMode: 'none' },
        })
      ).Id;
      mine.push(await create({ a: 'ends in a backslash\\', own: '' }));
      const own = await list('own');
      assert.deepEqual(own.ids, [...mine].reverse());
      assert.equal(own.via, 'front', 'the front answers a list of the attacker’s two itself');
      const all = await list(markKey);
      assert.deepEqual(all.ids, [...mine].reverse(), 'the host’s container is not listed');
      assert.notEqual(all.via, 'front', 'the guard answers a list that holds the host’s container');
      // The engine applies a limit before the guard filters: the host's container must not use
      // up part of it (red-team pass 33).
      assert.deepEqual((await list(markKey, 2)).ids, [...mine].reverse(), 'limit=2 gives the attacker’s two');
      assert.deepEqual((await list(markKey, 1)).ids, [mine[1]], 'limit=1 gives the newest');
    } finally {
      for (const id of mine) await send(sock, { method: 'DELETE', path: `/v1.41/containers/${id}?force=1` });
      if (between) await containers(c).remove(between, { force: true });
    }
    await hostIntact();
  });

  test('events about it do not reach the attacker', async () => {
    const events = spawn(DOCKER_CLI, ['events', '--format', '{{.Actor.ID}} {{.Action}}'], {
      env: { ...process.env, DOCKER_HOST: guard.address },
    });
    let seen = '';
    events.stdout.on('data', (b: Buffer) => (seen += b.toString()));
    try {
      await new Promise((r) => setTimeout(r, 500));
      // An event about the host container, and one about the attacker's own container as a marker.
      await containers(c).kill(running, 'SIGWINCH');
      const own = await docker(guard.address, ['run', '--rm', '--label', 'marker=1', forged, 'true']);
      assert.equal(own.code, 0, own.stderr);
      for (let i = 0; i < 50 && !/destroy/.test(seen); i++) await new Promise((r) => setTimeout(r, 100));
      assert.match(seen, /destroy/, 'the attacker sees its own container’s events');
      assert.ok(!seen.includes(running), `events about the host container leaked: ${seen}`);
    } finally {
      events.kill();
    }
    await hostIntact();
  });

  test('a container the attacker creates from the same image is its own; cleanup spares the host’s', async () => {
    const mine = uniqueName('inhmine');
    const r = await docker(guard.address, ['run', '-d', '--name', mine, forged, 'sleep', '3600']);
    assert.equal(r.code, 0, r.stderr);
    const ps = await docker(guard.address, ['ps', '--format', '{{.Names}}']);
    assert.deepEqual(ps.stdout.trim().split('\n'), [mine]);
    // A second guard of the same tenant (as after a restart) has no state to go on: it claims
    // neither the host's containers nor, conservatively, the attacker's one from the forged image.
    const other = await createGuard({ tenant, listen: join(dir.path, 'b.sock'), labels: sessionLabels() });
    try {
      const seen = await docker(other.address, ['ps', '-a', '--format', '{{.Names}}']);
      assert.ok(!seen.stdout.includes(running.slice(0, 12)));
      assert.ok(!/inhrun|inhstop/.test(seen.stdout), seen.stdout);
    } finally {
      await other.close({ cleanup: false });
    }
    const fresh = await createGuard({ tenant, listen: join(dir.path, 'c.sock'), labels: sessionLabels() });
    await fresh.close({ cleanup: true });
    await hostIntact();
  });

  test('images made through the guard name no owner, whatever the Dockerfile, --change or import says', async () => {
    const ctx = join(dir.path, 'ctx');
    mkdirSync(ctx, { recursive: true });
    // A Dockerfile may not set berth's labels at all: refused before dockerd builds anything.
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${IMAGE}\nLABEL ${LABEL_TENANT}=${victim}\n`);
    const refused = await docker(guard.address, ['build', '-t', `${repo}:built-label`, ctx], {
      env: { DOCKER_BUILDKIT: '0' },
    });
    assert.notEqual(refused.code, 0, `the build is refused; it printed: ${refused.stdout}${refused.stderr}`);
    assert.match(refused.stderr, /berth: build-options: .*LABEL: labels under io\.berth\. are berth's own/);
    assert.doesNotMatch(refused.stdout, /Successfully built/);
    // A build whose image would name an owner through its base image fails, and its image and tag
    // are removed.
    for (const [i, dockerfile] of [`FROM ${forged}\nENV BERTH_INHERITED=1\n`].entries()) {
      writeFileSync(join(ctx, 'Dockerfile'), dockerfile);
      const built = `${repo}:built${i}`;
      tags.push(built);
      const b = await docker(guard.address, ['build', '-t', built, ctx], {
        env: { DOCKER_BUILDKIT: '0' },
      });
      assert.notEqual(b.code, 0, `the build is refused; it printed: ${b.stdout}${b.stderr}`);
      assert.match(b.stderr, /berth: ownership: the built image carries the label io\.berth\.tenant=/);
      assert.equal(await images(c).find(built), undefined, 'the tag is gone');
      const id = /Successfully built ([0-9a-f]{12})/.exec(b.stdout)?.[1];
      assert.ok(id, 'dockerd built it');
      assert.equal(await images(c).find(id), undefined, 'the image is gone');
    }
    // A tenant label asked for in the build's `labels` (docker build --label) is emptied.
    writeFileSync(join(ctx, 'Dockerfile'), `FROM ${IMAGE}\n`);
    const viaParam = `${repo}:param`;
    tags.push(viaParam);
    const p = await docker(
      guard.address,
      ['build', '-q', '--label', `${LABEL_TENANT}=${victim}`, '-t', viaParam, ctx],
      {
        env: { DOCKER_BUILDKIT: '0' },
      },
    );
    assert.equal(p.code, 0, p.stderr);
    const label = async (ref: string) => (await images(c).inspect(ref)).Config?.Labels?.[LABEL_TENANT];
    assert.equal(await label(viaParam), '', 'a tenant label asked for is emptied');

    const box = uniqueName('inhbox');
    assert.equal((await docker(guard.address, ['create', '--name', box, IMAGE, 'true'])).code, 0);
    const committed = `${repo}:committed`;
    const cm = await docker(guard.address, [
      'commit',
      '--change',
      `LABEL ${LABEL_TENANT}=${victim}`,
      box,
      committed,
    ]);
    // A change naming berth's labels is refused outright; a plain commit names no owner either.
    assert.notEqual(cm.code, 0, 'a commit whose change names the tenant label went through');
    assert.match(cm.stderr, /berth: ownership: /);
    assert.equal(await images(c).find(committed), undefined, 'nothing committed');
    const plain = await docker(guard.address, ['commit', box, committed]);
    assert.equal(plain.code, 0, plain.stderr);
    tags.push(committed);
    assert.equal(await label(committed), '', 'a committed image carries a tenant label');

    const tar = join(dir.path, 'fs.tar');
    assert.equal((await docker(guard.address, ['export', '-o', tar, box])).code, 0);
    const imported = `${repo}:imported`;
    const im = await docker(guard.address, [
      'import',
      '--change',
      `LABEL ${LABEL_TENANT}=${victim}`,
      tar,
      imported,
    ]);
    assert.notEqual(im.code, 0, 'an import whose change names the tenant label went through');
    assert.match(im.stderr, /berth: ownership: /);
    assert.equal(await images(c).find(imported), undefined, 'nothing imported');
    const plainImport = await docker(guard.address, ['import', tar, imported]);
    assert.equal(plainImport.code, 0, plainImport.stderr);
    tags.push(imported);
    assert.equal(await label(imported), '', 'an imported image carries a tenant label');
    assert.equal((await docker(guard.address, ['rm', box])).code, 0);
  });
});
