/**
 * Attack: images nobody names. An image the host keeps by ID only (no tag) is not the tenant's to
 * remove, and deleting it by ID is refused; a tenant that tags it first, then removes its tag (or
 * leaves the tag to the guard's cleanup), would have dockerd delete the image with its last name.
 * And an image archive without tags (`docker save <id>`) loads an image the tenant made, which the
 * cleanup must remove like its other objects, without taking an image the engine already had.
 */
import { request } from 'node:http';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { images, networks } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { SESSION, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, send } from '../support/rawhttp.js';
import { entry } from '../support/tar.js';
import { startRegistry } from '../support/registry.js';
import { docker } from '../support/index.js';

const RAW = '/var/run/docker.sock';
const EMPTY_TAR = Buffer.alloc(1024);

/** An untagged image made on the raw socket (an import of an empty archive), labelled uniquely. */
async function hostImage(label: string): Promise<string> {
  const changes = encodeURIComponent(`LABEL io.berth.test-session=${SESSION} berth.test.unique=${label}`);
  const r = await send(RAW, {
    method: 'POST',
    path: `/v1.41/images/create?fromSrc=-&changes=${changes}`,
    headers: [['Content-Type', 'application/x-tar']],
    body: EMPTY_TAR,
  });
  const id = /"status":"(sha256:[0-9a-f]{64})"/.exec(r.text)?.[1];
  assert.ok(id, r.text);
  return id;
}

describe('attack: removing or keeping images nobody names', () => {
  const c = engine();
  const dir = tempDir('berth-untagged-');
  const made: string[] = [];
  let guard: GuardHandle;
  let sock = '';

  before(async () => {
    sock = join(dir.path, 'g.sock');
    guard = await createGuard({ tenant: uniqueName('untag'), listen: sock, labels: sessionLabels() });
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    for (const id of made)
      await images(c)
        .remove(id, true)
        .catch(() => false);
    c.close();
    dir[Symbol.dispose]();
  });

  test('a host image named only by ID survives the tenant tagging it and removing the tag', async () => {
    const id = await hostImage(uniqueName('u1'));
    made.push(id);
    expectRefused(
      await send(sock, { method: 'DELETE', path: `/v1.41/images/${id}` }),
      'image-tag',
      'deleting the host image by ID',
    );
    const repo = `berth-grab-${SESSION}`;
    const tag = await send(sock, { method: 'POST', path: `/v1.41/images/${id}/tag?repo=${repo}&tag=1` });
    assert.equal(tag.status, 201, tag.text);
    // Its one name is the tenant's now, but the image is not: by ID, dockerd would delete it.
    expectRefused(
      await send(sock, { method: 'DELETE', path: `/v1.41/images/${id}` }),
      'image-tag',
      'deleting the host image by ID once tagged',
    );
    const del = await send(sock, { method: 'DELETE', path: `/v1.41/images/${repo}:1` });
    assert.equal(del.status, 200, del.text);
    assert.match(del.text, /Untagged/);
    assert.doesNotMatch(del.text, new RegExp(id.slice(7, 19)), 'the answer reports no deletion of the image');
    assert.equal((await images(c).inspect(id)).Id, id, 'the host image is still there');
    assert.equal(await images(c).find(`${repo}:1`), undefined, 'the tenant’s tag is gone');
  });

  test('nor the guard’s cleanup of a tag the tenant left on it', async () => {
    const id = await hostImage(uniqueName('u2'));
    made.push(id);
    const other = join(dir.path, 'o.sock');
    const g = await createGuard({ tenant: uniqueName('untag2'), listen: other, labels: sessionLabels() });
    const repo = `berth-grab2-${SESSION}`;
    try {
      const tag = await send(other, { method: 'POST', path: `/v1.41/images/${id}/tag?repo=${repo}&tag=1` });
      assert.equal(tag.status, 201, tag.text);
    } finally {
      await g.close({ cleanup: true });
    }
    assert.equal(await images(c).find(`${repo}:1`), undefined, 'the cleanup removed the tag');
    assert.equal((await images(c).inspect(id)).Id, id, 'and left the host image');
  });

  test('an image another party made a moment ago is not the tenant’s for building FROM it', async () => {
    // The image is seconds old: a rule that counted images by their creation date took it for the
    // tenant's build's, and let the tenant delete it by ID and its cleanup remove it.
    const id = await hostImage(uniqueName('u5'));
    made.push(id);
    const other = join(dir.path, 'f.sock');
    // No labels of the guard's own: with them the build would add a step, and make an image.
    const g = await createGuard({ tenant: uniqueName('untag5'), listen: other });
    try {
      const b = await docker(`unix://${other}`, ['build', '-q', '-'], {
        env: { DOCKER_BUILDKIT: '0' },
        input: `FROM ${id}\n`,
      });
      assert.equal(b.code, 0, b.stderr);
      assert.equal(b.stdout.trim(), id, 'the build gave back the image it names');
      expectRefused(
        await send(other, { method: 'DELETE', path: `/v1.41/images/${id}` }),
        'image-tag',
        'deleting the image its build named',
      );
    } finally {
      await g.close({ cleanup: true });
    }
    assert.equal((await images(c).inspect(id)).Id, id, 'the image is still there');
  });

  test('an image someone else makes while the tenant holds its build’s upload open is not the tenant’s', async () => {
    const other = join(dir.path, 'w.sock');
    const g = await createGuard({ tenant: uniqueName('untag7'), listen: other });
    const repo = `berth-window-${SESSION}`;
    let id = '';
    try {
      // The upload starts, and stalls after a first entry.
      const answer = new Promise<string>((resolve, reject) => {
        const req = request(
          {
            socketPath: other,
            method: 'POST',
            path: '/v1.41/build?rm=1',
            headers: { 'Content-Type': 'application/x-tar', 'Transfer-Encoding': 'chunked' },
          },
          (res) => {
            let text = '';
            res.on('data', (d: Buffer) => (text += d.toString()));
            res.on('end', () => resolve(text));
          },
        );
        req.on('error', reject);
        req.write(entry('pad', 'x'));
        void (async () => {
          await new Promise((r) => setTimeout(r, 300));
          // Meanwhile the host makes an image it keeps by ID; the tenant tags it and names it.
          id = await hostImage(uniqueName('u7'));
          made.push(id);
          const tag = await send(other, {
            method: 'POST',
            path: `/v1.41/images/${id}/tag?repo=${repo}&tag=1`,
          });
          assert.equal(tag.status, 201, tag.text);
          req.end(Buffer.concat([entry('Dockerfile', `FROM ${repo}:1\n`), Buffer.alloc(1024)]));
        })().catch(reject);
      });
      const text = await answer;
      assert.match(text, new RegExp(`"ID":"${id}"`), 'the build reported the host image as its own');
      expectRefused(
        await send(other, { method: 'DELETE', path: `/v1.41/images/${id}` }),
        'image-tag',
        'deleting the host image by ID',
      );
      const rmi = await send(other, { method: 'DELETE', path: `/v1.41/images/${repo}:1` });
      assert.equal(rmi.status, 200, rmi.text);
      assert.equal((await images(c).inspect(id)).Id, id, 'the host image stays after the untag');
    } finally {
      await g.close({ cleanup: true });
    }
    assert.equal((await images(c).inspect(id)).Id, id, 'and after the cleanup');
  });

  test('a build that prints someone else’s new image as one of its steps does not make it the tenant’s', async () => {
    // A RUN step can print dockerd's ` ---> <id>` step line. Here it names an image the host makes
    // while the build runs (after the check's list of images), handed in through a tenant server.
    const other = join(dir.path, 's.sock');
    const g = await createGuard({ tenant: uniqueName('untag8'), listen: other });
    const srv = uniqueName('srv');
    let id = '';
    try {
      const run = await docker(`unix://${other}`, [
        'run',
        '-d',
        '--name',
        srv,
        'berth-local/busybox',
        'sh',
        '-c',
        'mkdir -p /www && exec httpd -f -p 80 -h /www',
      ]);
      assert.equal(run.code, 0, run.stderr);
      const building = docker(`unix://${other}`, ['build', '-'], {
        env: { DOCKER_BUILDKIT: '0' },
        input: `FROM berth-local/busybox\nRUN for i in $(seq 300); do wget -q -O /tmp/id http://${srv}/id && break; sleep 0.1; done; sleep 1; printf ' ---> %s\\n' "$(cat /tmp/id)"; exit 1\n`,
      });
      await new Promise((r) => setTimeout(r, 1500));
      // A child of the tenant's own base, as another job's build from the same base would be.
      const host = await docker(`unix://${RAW}`, ['build', '-q', '-'], {
        env: { DOCKER_BUILDKIT: '0' },
        input: `FROM berth-local/busybox\nRUN echo ${uniqueName('victim')} > /v\n`,
      });
      assert.equal(host.code, 0, host.stderr);
      id = host.stdout.trim();
      made.push(id);
      const put = await docker(`unix://${other}`, [
        'exec',
        srv,
        'sh',
        '-c',
        `echo ${id.slice(7, 19)} > /www/id`,
      ]);
      assert.equal(put.code, 0, put.stderr);
      const b = await building;
      assert.notEqual(b.code, 0);
      assert.match(b.stdout, new RegExp(` ---> ${id.slice(7, 19)}`), 'the step printed the host image');
      expectRefused(
        await send(other, { method: 'DELETE', path: `/v1.41/images/${id}` }),
        'image-tag',
        'deleting the printed image by ID',
      );
    } finally {
      await g.close({ cleanup: true });
    }
    assert.equal((await images(c).inspect(id)).Id, id, 'the host image is still there after the cleanup');
  });

  test('a guard stopped during a build removes its tenant network all the same', async () => {
    const tenant = uniqueName('untag9');
    const sockPath = join(dir.path, 'n.sock');
    const g = await createGuard({ tenant, listen: sockPath });
    const building = docker(`unix://${sockPath}`, ['build', '-q', '-'], {
      env: { DOCKER_BUILDKIT: '0' },
      input: 'FROM berth-local/busybox\nRUN sleep 12\n',
    });
    // The RUN step's container is on the tenant network (it carries no label of the tenant's).
    await new Promise((r) => setTimeout(r, 3000));
    const label = { label: [`io.berth.tenant=${tenant}`] };
    assert.equal((await networks(c).list(label)).length, 1, 'the build made the tenant network');
    await g.close({ cleanup: true });
    await building;
    assert.deepEqual(await networks(c).list(label), [], 'the tenant network is gone');
  });

  test('a digest reference that is the last name of the host’s image: removing it keeps the image', async () => {
    const registry = await startRegistry(dir.path);
    const id = await hostImage(uniqueName('u6'));
    made.push(id);
    const other = join(dir.path, 'd.sock');
    const remote = `${registry.addr}/berth-digest-${SESSION}`;
    try {
      // The registry gets the host image's content; the host keeps the image by ID only.
      const archive = await send(RAW, { method: 'GET', path: `/v1.41/images/${id}/get` });
      const t = await send(RAW, {
        method: 'POST',
        path: `/v1.41/images/${id}/tag?repo=${encodeURIComponent(remote)}&tag=1`,
      });
      assert.equal(t.status, 201, t.text);
      const push = await docker(`unix://${RAW}`, ['push', `${remote}:1`]);
      assert.equal(push.code, 0, push.stderr);
      const digest = /digest: (sha256:[0-9a-f]{64})/.exec(push.stdout)?.[1] ?? '';
      assert.ok(digest, push.stdout);
      assert.equal((await docker(`unix://${RAW}`, ['rmi', `${remote}:1`])).code, 0);
      const back = await send(RAW, {
        method: 'POST',
        path: '/v1.41/images/load?quiet=1',
        headers: [['Content-Type', 'application/x-tar']],
        body: archive.body,
      });
      assert.equal(back.status, 200, back.text);
      assert.deepEqual((await images(c).inspect(id)).RepoDigests, []);
      // The tenant pulls it by digest: dockerd records the reference on the host's image.
      const g = await createGuard({ tenant: uniqueName('untag6'), listen: other, labels: sessionLabels() });
      try {
        const pull = await send(other, {
          method: 'POST',
          path: `/v1.41/images/create?fromImage=${encodeURIComponent(`${remote}@${digest}`)}`,
        });
        assert.equal(pull.status, 200, pull.text);
        assert.deepEqual((await images(c).inspect(id)).RepoDigests, [`${remote}@${digest}`]);
        expectRefused(
          await send(other, {
            method: 'DELETE',
            path: `/v1.41/images/${encodeURIComponent(`${remote}@${digest}`)}`,
          }),
          'image-tag',
          'removing the digest reference that is the host image’s last name',
        );
        assert.equal((await images(c).inspect(id)).Id, id, 'the image is still there');
      } finally {
        await g.close({ cleanup: true });
      }
      assert.equal((await images(c).inspect(id)).Id, id, 'and after the cleanup');
    } finally {
      await registry.close();
    }
  });

  test('an untagged load makes an image the cleanup removes; one the engine had stays', async () => {
    const fresh = await hostImage(uniqueName('u3'));
    made.push(fresh);
    const saved = await send(RAW, { method: 'GET', path: `/v1.41/images/${fresh}/get` });
    assert.equal(saved.status, 200);
    assert.ok(await images(c).remove(fresh, true));
    // A tagged archive of another new image: the image the load makes is the tenant's too.
    const fresh2 = await hostImage(uniqueName('u4'));
    made.push(fresh2);
    const repo = `berth-loaded-${SESSION}`;
    const tagged = await send(RAW, {
      method: 'POST',
      path: `/v1.41/images/${fresh2}/tag?repo=${repo}&tag=1`,
    });
    assert.equal(tagged.status, 201);
    const savedTagged = await send(RAW, { method: 'GET', path: `/v1.41/images/${repo}:1/get` });
    assert.equal(savedTagged.status, 200);
    assert.ok(await images(c).remove(`${repo}:1`, true));
    assert.equal(await images(c).find(fresh2), undefined);
    const had = (await images(c).inspect('berth-local/busybox')).Id;
    const savedHad = await send(RAW, { method: 'GET', path: `/v1.41/images/${had}/get` });
    const other = join(dir.path, 'l.sock');
    const g = await createGuard({ tenant: uniqueName('untag3'), listen: other, labels: sessionLabels() });
    try {
      for (const archive of [saved.body, savedHad.body, savedTagged.body]) {
        const r = await send(other, {
          method: 'POST',
          path: '/v1.41/images/load?quiet=1',
          headers: [['Content-Type', 'application/x-tar']],
          body: archive,
        });
        assert.equal(r.status, 200, r.text);
        assert.match(r.text, /Loaded image( ID)?: /);
      }
      assert.equal((await images(c).inspect(`${repo}:1`)).Id, fresh2);
      assert.equal((await images(c).inspect(fresh)).Id, fresh, 'the load made the image');
      // The tenant may remove what it loaded, by ID; not the image the engine had.
      expectRefused(
        await send(other, { method: 'DELETE', path: `/v1.41/images/${had}` }),
        'image-tag',
        'an image the engine had before the load',
      );
    } finally {
      await g.close({ cleanup: true });
    }
    assert.equal(await images(c).find(fresh), undefined, 'the cleanup removed the loaded image');
    assert.equal(await images(c).find(fresh2), undefined, 'and the tagged one, with its tag');
    assert.equal((await images(c).inspect(had)).Id, had, 'the image the engine had is still there');
  });

  test('deleting the tenant’s own image takes no unnamed parent of someone else’s (commit, build)', async () => {
    // dockerd deletes an image's unnamed parents with it unless told not to: a tenant made a host
    // image (named by nothing, or by the tenant's own tag only) the parent of its own image, then
    // deleted its image, and the host's went too.
    for (const via of ['commit', 'build'] as const) {
      const id = await hostImage(uniqueName(`u-${via}`));
      made.push(id);
      let mine = '';
      if (via === 'commit') {
        const cr = await send(sock, {
          method: 'POST',
          path: `/v1.41/containers/create?name=${uniqueName('u-box')}`,
          headers: [['Content-Type', 'application/json']],
          body: JSON.stringify({ Image: id, Cmd: ['true'], HostConfig: { NetworkMode: 'none' } }),
        });
        assert.equal(cr.status, 201, cr.text);
        const box = (JSON.parse(cr.text) as { Id: string }).Id;
        const cm = await send(sock, { method: 'POST', path: `/v1.41/commit?container=${box}` });
        assert.equal(cm.status, 201, cm.text);
        mine = (JSON.parse(cm.text) as { Id: string }).Id;
        assert.equal((await send(sock, { method: 'DELETE', path: `/v1.41/containers/${box}` })).status, 204);
      } else {
        const repo = `berth-parent-${SESSION}`;
        const tag = await send(sock, { method: 'POST', path: `/v1.41/images/${id}/tag?repo=${repo}&tag=1` });
        assert.equal(tag.status, 201, tag.text);
        const ctx = Buffer.concat([
          entry('Dockerfile', `FROM ${repo}:1\nLABEL berth.test.step=1\n`),
          Buffer.alloc(1024),
        ]);
        const b = await send(sock, {
          method: 'POST',
          path: '/v1.41/build?q=1',
          headers: [['Content-Type', 'application/x-tar']],
          body: ctx,
        });
        assert.equal(b.status, 200, b.text);
        mine = /sha256:[0-9a-f]{64}/.exec(b.text)?.[0] ?? '';
        assert.ok(mine, b.text);
        // The tenant's tag on the host image goes (moved aside); the image stays, named by nothing.
        assert.equal((await send(sock, { method: 'DELETE', path: `/v1.41/images/${repo}:1` })).status, 200);
      }
      const chain: string[] = [];
      for (let p: string | undefined = mine; p;) {
        chain.push(p);
        p = ((await images(c).inspect(p)) as { Parent?: string }).Parent || undefined;
      }
      assert.ok(chain.includes(id), `${via}: the tenant's image descends from the host's`);
      const steps = chain.slice(1, chain.indexOf(id));
      const del = await send(sock, { method: 'DELETE', path: `/v1.41/images/${mine}` });
      assert.equal(del.status, 200, del.text);
      assert.equal(await images(c).find(mine), undefined, `${via}: the tenant's image is gone`);
      assert.equal((await images(c).inspect(id)).Id, id, `${via}: the host image is still there`);
      // The build's own step images between the two are the tenant's: they go with its image, or
      // (where dockerd still tears down the build's last container) with the tenant's prune.
      assert.equal((await send(sock, { method: 'POST', path: '/v1.41/images/prune' })).status, 200);
      assert.equal((await images(c).inspect(id)).Id, id, `${via}: the host image survived the prune`);
      for (const step of steps)
        assert.equal(await images(c).find(step), undefined, `${via}: step ${step} left`);
    }
  });
});
