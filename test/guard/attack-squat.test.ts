/**
 * Attack: squatting a name. Image tags are one namespace, and a name nobody holds is free to
 * whoever sets it first. Tenant A sets a name to an image of its own (a build's -t, a tag, a load)
 * before anyone pulled it; tenant B then names it (run, build FROM, tag) expecting the registry's
 * image, and dockerd would run A's. Each guard records its tenant's writes on the engine
 * (tagrecords.ts), and B's guard answers as if the name were absent. Checked on the engine: B made
 * nothing from A's image, and the records go with A's cleanup.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { containers, images, volumes } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { SESSION, docker, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectAbsent, expectRefused, postBuild, postJson, send } from '../support/rawhttp.js';
import { END, dockerContext, entry } from '../support/tar.js';
import { startRegistry } from '../support/registry.js';
import type { TestRegistry } from '../support/registry.js';
import { jobStatus, logLines, removeRun, runJson, workspace } from '../runner/helpers.js';

const IMAGE = 'berth-local/busybox';
const RAW = '/var/run/docker.sock';
const HOST = `unix://${RAW}`;
// Names on a loopback port nothing listens on: a pull the CLI tries fails at once, on this machine.
const REG = '127.0.0.1:1';

describe('attack: squatting a name another tenant will use', () => {
  const c = engine();
  const dir = tempDir('berth-squat-');
  const sockA = join(dir.path, 'a.sock');
  const sockB = join(dir.path, 'b.sock');
  const tenantA = uniqueName('squat-a');
  const tenantB = uniqueName('squat-b');
  const squat = `${REG}/berth-squat-${SESSION}:20`;
  const loaded = `${REG}/berth-squat-load-${SESSION}:1`;
  const hostTag = `berth-squat-host-${SESSION}:1`;
  const hub = `berth-squat-hub-${SESSION}`;
  let a: GuardHandle;
  let b: GuardHandle;
  let squatId = '';

  /** The records on the engine for this suite's tags. */
  const records = async () =>
    (
      await volumes(c).list({ label: ['io.berth.role=tag-record', `io.berth.test-session=${SESSION}`] })
    ).filter(
      (v) => v.Labels?.['io.berth.tag.tenant'] === tenantA || v.Labels?.['io.berth.tag.tenant'] === tenantB,
    );
  const containersOf = async (tenant: string) =>
    containers(c).list({ all: true, filters: { label: [`io.berth.tenant=${tenant}`] } });

  before(async () => {
    const labels = sessionLabels();
    a = await createGuard({ tenant: tenantA, listen: sockA, labels });
    b = await createGuard({ tenant: tenantB, listen: sockB, labels });
    // A's own image, under a name nobody has yet.
    const r = await postBuild(
      sockA,
      dockerContext(`FROM ${IMAGE}\nRUN echo tenant-a > /who\n`),
      `t=${encodeURIComponent(squat)}`,
    );
    assert.equal(r.status, 200, r.text);
    assert.doesNotMatch(r.text, /errorDetail/, r.text);
    squatId = (await images(c).inspect(squat)).Id;
    // The host's own tag of a shared image: B may use it as before.
    await images(c).tag(IMAGE, hostTag.split(':')[0] ?? '', '1');
  });

  after(async () => {
    await a.close({ cleanup: true }).catch(() => undefined);
    await b.close({ cleanup: true }).catch(() => undefined);
    for (const t of [hostTag, squat, loaded, `${hub}:1`])
      await images(c)
        .remove(t)
        .catch(() => false);
    dir[Symbol.dispose]();
  });

  test('the squatting write left a record no tenant can see, remove or imitate', async () => {
    const rs = await records();
    assert.equal(rs.length, 1, JSON.stringify(rs));
    const rec = rs[0]?.Name ?? '';
    assert.equal(rs[0]?.Labels?.['io.berth.tag.image'], squatId);
    assert.equal(rs[0]?.Labels?.['io.berth.tenant'], undefined);
    for (const sock of [sockA, sockB]) {
      const list = await send(sock, { path: '/v1.41/volumes' });
      assert.equal(list.status, 200, list.text);
      assert.doesNotMatch(list.text, /berth-tag-/);
      expectAbsent(await send(sock, { path: `/v1.41/volumes/${rec}` }), 'inspect a record');
      expectAbsent(await send(sock, { method: 'DELETE', path: `/v1.41/volumes/${rec}` }), 'remove a record');
      expectRefused(
        await postJson(sock, '/v1.41/volumes/create', JSON.stringify({ Name: `${rec.slice(0, -4)}beef` })),
        'ownership',
        'create a volume named like a record',
      );
      // Nor through a mount, where dockerd would make the volume itself.
      expectRefused(
        await postJson(
          sock,
          '/v1.41/containers/create',
          JSON.stringify({ Image: IMAGE, HostConfig: { Binds: [`${rec.slice(0, -4)}beef:/x`] } }),
        ),
        'ownership',
        'mount a volume named like a record',
      );
      const pruned = await send(sock, { method: 'POST', path: '/v1.41/volumes/prune' });
      assert.equal(pruned.status, 200, pruned.text);
    }
    assert.equal((await records()).length, 1);
  });

  test("the other tenant's create of the name answers as if it were absent (raw API)", async () => {
    const r = await postJson(
      sockB,
      '/v1.41/containers/create',
      JSON.stringify({ Image: squat, Cmd: ['cat', '/who'] }),
    );
    expectAbsent(r, 'create from a squatted name');
    assert.match(r.text, /another tenant set/);
    assert.equal((await containersOf(tenantB)).length, 0);
    // A tag of A's (docker tag), named by B in its long form: dockerd finds the same tag, so does
    // the check. (Raw API only: nothing pulls a Docker Hub name on this machine.)
    const tagged = await send(sockA, {
      method: 'POST',
      path: `/v1.41/images/${encodeURIComponent(squat)}/tag?repo=${hub}&tag=1`,
    });
    assert.equal(tagged.status, 201, tagged.text);
    const spelled = await postJson(
      sockB,
      '/v1.41/containers/create',
      JSON.stringify({ Image: `docker.io/library/${hub}:1` }),
    );
    expectAbsent(spelled, 'create from the long form of a squatted name');
    assert.equal((await containersOf(tenantB)).length, 0);
  });

  test("a host that prunes the engine's volumes takes the record for a moment only: its guard writes it again", async () => {
    const byName = (vs: Awaited<ReturnType<typeof records>>) =>
      vs.map((v) => ({ name: v.Name, labels: v.Labels })).sort((x, y) => x.name.localeCompare(y.name));
    const before = await records(); // the squatted name's, and the tag of it the test before made
    assert.equal(before.length, 2, JSON.stringify(before));
    // The host's prune (on the raw socket; scoped to this suite's records, as the machine is shared).
    const filters = JSON.stringify({
      label: ['io.berth.role=tag-record', `io.berth.test-session=${SESSION}`],
    });
    const pruned = await send(RAW, {
      method: 'POST',
      path: `/v1.41/volumes/prune?filters=${encodeURIComponent(filters)}`,
    });
    assert.equal(pruned.status, 200, pruned.text);
    for (const v of before) assert.ok(pruned.text.includes(v.Name), `the prune removed ${v.Name}`);
    // A's guard reads the removal from the engine's events and writes the record again.
    let after: Awaited<ReturnType<typeof records>> = [];
    for (let i = 0; i < 100 && after.length < before.length; i++) {
      await new Promise((r) => setTimeout(r, 50));
      after = await records();
    }
    assert.deepEqual(byName(after), byName(before), 'the same records, back');
    expectAbsent(
      await postJson(sockB, '/v1.41/containers/create', JSON.stringify({ Image: squat })),
      'create from a squatted name after the prune',
    );
    assert.equal((await containersOf(tenantB)).length, 0);
  });

  test('docker run of the name through the other guard never runs the squatter’s image (CLI)', async () => {
    const r = await docker(`unix://${sockB}`, ['run', '--rm', '--network', 'none', squat, 'cat', '/who']);
    assert.notEqual(r.code, 0, r.stdout);
    assert.doesNotMatch(r.stdout, /tenant-a/);
    assert.equal((await containersOf(tenantB)).length, 0);
  });

  test('nor does tagging it, or building FROM it', async () => {
    const mine = `berth-squat-mine-${SESSION}`;
    const t = await send(sockB, {
      method: 'POST',
      path: `/v1.41/images/${encodeURIComponent(squat)}/tag?repo=${mine}&tag=1`,
    });
    expectAbsent(t, 'tag from a squatted name');
    assert.equal(await images(c).find(`${mine}:1`), undefined);
    const built = await postBuild(
      sockB,
      dockerContext(`FROM ${squat}\nRUN cat /who\n`),
      `t=${encodeURIComponent(`${mine}:2`)}`,
    );
    expectRefused(built, 'build-options', 'build FROM a squatted name');
    assert.match(built.text, /another tenant set this name/);
    assert.equal(await images(c).find(`${mine}:2`), undefined);
  });

  test('nor does naming it as a build cache source; the host’s names still serve, by the ID read', async () => {
    const refused = await postBuild(
      sockB,
      dockerContext(`FROM ${IMAGE}\nRUN echo b > /b\n`),
      `cachefrom=${encodeURIComponent(JSON.stringify([squat]))}`,
    );
    expectRefused(refused, 'build-options', 'cache-from a squatted name');
    assert.match(refused.text, /cache-from/);
    const ok = await postBuild(
      sockB,
      dockerContext(`FROM ${IMAGE}\nRUN echo b > /b\n`),
      `cachefrom=${encodeURIComponent(JSON.stringify([hostTag, 'no-such-image-anywhere:1']))}`,
    );
    assert.equal(ok.status, 200, ok.text);
    assert.doesNotMatch(ok.text, /errorDetail/, ok.text);
    expectRefused(
      await postBuild(sockB, dockerContext(`FROM ${IMAGE}\n`), `cachefrom=${encodeURIComponent('not json')}`),
      'malformed',
      'cachefrom that is not JSON',
      400,
    );
  });

  test('a legacy archive (no manifest.json), whose load sets tags unreported, is refused', async () => {
    const legacy = `${REG}/berth-squat-legacy-${SESSION}`;
    const archive = Buffer.concat([
      entry('repositories', JSON.stringify({ [legacy]: { '1': squatId.replace(/^sha256:/, '') } })),
      END,
    ]);
    const r = await send(sockA, {
      method: 'POST',
      path: '/v1.41/images/load?quiet=1',
      headers: [['Content-Type', 'application/x-tar']],
      body: archive,
    });
    expectRefused(r, 'image-tag', 'legacy load');
    assert.match(r.text, /manifest\.json/);
    assert.equal(await images(c).find(`${legacy}:1`), undefined);
  });

  test("the squatter uses its own name, and the other tenant the host's names and IDs", async () => {
    const own = await docker(`unix://${sockA}`, ['run', '--rm', '--network', 'none', squat, 'cat', '/who']);
    assert.equal(own.code, 0, own.stderr);
    assert.equal(own.stdout.trim(), 'tenant-a');
    const host = await docker(`unix://${sockB}`, ['run', '--rm', '--network', 'none', hostTag, 'true']);
    assert.equal(host.code, 0, host.stderr);
    // By ID the tenant names the content itself: nothing is looked up.
    const byId = await docker(`unix://${sockB}`, [
      'run',
      '--rm',
      '--network',
      'none',
      squatId,
      'cat',
      '/who',
    ]);
    assert.equal(byId.code, 0, byId.stderr);
    assert.equal(byId.stdout.trim(), 'tenant-a');
  });

  test('a name the squatter loads from an archive is absent for the other tenant too', async () => {
    const file = join(dir.path, 'a.tar');
    // The archive: A's image under another name, saved on the host and untagged there again.
    await images(c).tag(squatId, loaded.slice(0, loaded.lastIndexOf(':')), '1');
    const save = await docker(HOST, ['save', '-o', file, loaded]);
    assert.equal(save.code, 0, save.stderr);
    await images(c).remove(loaded);
    const load = await send(sockA, {
      method: 'POST',
      path: '/v1.41/images/load?quiet=1',
      headers: [['Content-Type', 'application/x-tar']],
      body: readFileSync(file),
    });
    assert.equal(load.status, 200, load.text);
    assert.equal((await images(c).inspect(loaded)).Id, squatId);
    // The load's pending record is replaced by one naming the image.
    const rs = (await records()).filter((v) => v.Labels?.['io.berth.tag.image'] !== squatId);
    assert.deepEqual(rs, []);
    expectAbsent(await postJson(sockB, '/v1.41/containers/create', JSON.stringify({ Image: loaded })));
    assert.equal((await containersOf(tenantB)).length, 0);
  });

  test('the runner does not run a job in an image a tenant squatted, and runs it by the ID it read', async () => {
    using ws = workspace(
      `name: squat\ndocker: none\njobs:\n  use:\n    image: ${squat}\n    steps:\n      - cat /who\n`,
    );
    const r = await runJson(ws.file);
    try {
      assert.notEqual(r.code, 0, r.stdout);
      assert.equal(jobStatus(r.events, 'use'), 'failed');
      assert.ok(!logLines(r.events, 'use').includes('tenant-a'));
      const finished = r.events.find((e) => e.kind === 'job.finished');
      assert.match(JSON.stringify(finished), new RegExp(`set by the job of tenant ${tenantA}`));
    } finally {
      await removeRun(r.runId);
    }
    // The host's own name still runs (by the ID the runner read).
    using ok = workspace(
      `name: host\ndocker: none\njobs:\n  use:\n    image: ${hostTag}\n    steps:\n      - echo ran\n`,
    );
    const r2 = await runJson(ok.file);
    try {
      assert.equal(r2.code, 0, r2.stdout + r2.stderr);
      assert.deepEqual(logLines(r2.events, 'use'), ['ran']);
    } finally {
      await removeRun(r2.runId);
    }
  });

  test("the squatter's cleanup takes its tags and then its records", async () => {
    await a.close({ cleanup: true });
    assert.equal(await images(c).find(squat), undefined);
    assert.equal(await images(c).find(loaded), undefined);
    assert.equal(await images(c).find(`${hub}:1`), undefined);
    assert.deepEqual(await records(), []);
    // B's guard wrote no record (it set no name).
    await b.close({ cleanup: true });
    assert.deepEqual(await records(), []);
  });
});

describe('squatting: a name another tenant set to the registry’s very image', () => {
  const c = engine();
  const dir = tempDir('berth-squat-reg-');
  let registry: TestRegistry;
  let a: GuardHandle;
  let b: GuardHandle;
  let repo = '';

  before(async () => {
    registry = await startRegistry(dir.path);
    repo = `${registry.addr}/berth-squat-reg-${SESSION}`;
    // The registry serves one image under :1 and :latest; the engine has neither name.
    for (const t of ['1', 'latest']) {
      await images(c).tag(IMAGE, repo, t);
      const push = await docker(HOST, ['push', `${repo}:${t}`]);
      assert.equal(push.code, 0, push.stderr);
      await images(c).remove(`${repo}:${t}`);
    }
    a = await createGuard({
      tenant: uniqueName('sqr-a'),
      listen: join(dir.path, 'a.sock'),
      labels: sessionLabels(),
    });
    b = await createGuard({
      tenant: uniqueName('sqr-b'),
      listen: join(dir.path, 'b.sock'),
      labels: sessionLabels(),
    });
  });

  after(async () => {
    await a.close({ cleanup: true }).catch(() => undefined);
    await b.close({ cleanup: true }).catch(() => undefined);
    const f = await images(c).find(IMAGE);
    for (const ref of [...(f?.RepoTags ?? []), ...(f?.RepoDigests ?? [])])
      if (ref.startsWith(repo))
        await images(c)
          .remove(ref)
          .catch(() => false);
    await registry.close();
    dir[Symbol.dispose]();
  });

  test('is usable by the others once their pull finds the registry serving that image', async () => {
    const pulled = await docker(a.address, ['pull', `${repo}:1`]);
    assert.equal(pulled.code, 0, pulled.stderr);
    const tagged = await docker(a.address, ['tag', `${repo}:1`, `${repo}:latest`]);
    assert.equal(tagged.code, 0, tagged.stderr);
    const sockB = b.address.replace(/^unix:\/\//, '');
    expectAbsent(
      await postJson(
        sockB,
        '/v1.41/containers/create',
        JSON.stringify({ Image: `${repo}:latest`, Cmd: ['true'] }),
      ),
      'before the pull',
    );
    const pull = await docker(b.address, ['pull', `${repo}:latest`]);
    assert.equal(pull.code, 0, pull.stderr);
    const run = await docker(b.address, [
      'run',
      '--rm',
      '--network',
      'none',
      `${repo}:latest`,
      'echo',
      'ran',
    ]);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout.trim(), 'ran');
  });
});
