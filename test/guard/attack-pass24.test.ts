/**
 * Leftovers from the twenty-fourth red-team pass, checked on the engine after the guard's cleanup:
 * - `docker import -` without a name: the image was taken for a pull, nobody's, kept by the cleanup
 *   and not removable by the tenant;
 * - a load of an image whose config names an owner (`io.berth.tenant`): containers run from it
 *   carry the label, and a later guard of that tenant took them for another guard's.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { images } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import { SESSION, docker, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';

const IMAGE = 'berth-local/busybox';
const RAW = 'unix:///var/run/docker.sock';

describe('attack: pass 24 (images a tenant leaves behind)', () => {
  const c = engine();
  const dir = tempDir('berth-pass24-');
  const made: string[] = [];
  /** Whether the engine has an image of this reference. */
  const exists = (ref: string) =>
    images(c)
      .inspect(ref)
      .then(
        () => true,
        () => false,
      );

  after(async () => {
    for (const id of made)
      await images(c)
        .remove(id, true)
        .catch(() => false);
    c.close();
    dir[Symbol.dispose]();
  });

  test('an image imported without a name is the tenant’s: removable by ID, and gone after the cleanup', async () => {
    const g = await createGuard({
      tenant: uniqueName('p24i'),
      listen: join(dir.path, 'i.sock'),
      labels: sessionLabels(),
    });
    try {
      const tar = join(dir.path, 'rootfs.tar');
      const created = await docker(g.address, ['create', '--network', 'none', IMAGE, 'true']);
      assert.equal(created.code, 0, created.stderr);
      const cid = created.stdout.trim();
      assert.equal((await docker(g.address, ['export', '-o', tar, cid])).code, 0);
      const imported = await docker(g.address, ['import', tar]);
      assert.equal(imported.code, 0, imported.stderr);
      const id = imported.stdout.trim();
      made.push(id);
      assert.match(id, /^sha256:[0-9a-f]{64}$/);
      // A second one, left for the cleanup.
      const second = await docker(g.address, ['import', '--change', `LABEL p24=${SESSION}`, tar]);
      assert.equal(second.code, 0, second.stderr);
      made.push(second.stdout.trim());
      const rmi = await docker(g.address, ['rmi', id]);
      assert.equal(rmi.code, 0, rmi.stderr);
      assert.equal(await exists(id), false, 'removed by ID');
    } finally {
      await g.close({ cleanup: true });
    }
    assert.equal(await exists(made[1] ?? ''), false, 'the cleanup removed the unnamed import');
  });

  test('a load of an image naming an owner is undone: its tag and image removed, an error answered', async () => {
    const tenant = uniqueName('p24l');
    // The archive, made on the host: an image whose config labels it as the tenant's own.
    const tag = `berth-p24-owned-${SESSION}:1`;
    const build = await docker(RAW, ['build', '-q', '-t', tag, '-'], {
      input: `FROM ${IMAGE}\nLABEL io.berth.tenant=${tenant}\n`,
    });
    assert.equal(build.code, 0, build.stderr);
    const id = build.stdout.trim();
    const archive = join(dir.path, 'owned.tar');
    assert.equal((await docker(RAW, ['save', '-o', archive, tag])).code, 0);
    assert.equal((await docker(RAW, ['rmi', tag])).code, 0);
    assert.ok(readFileSync(archive).length > 0);
    const g = await createGuard({ tenant, listen: join(dir.path, 'l.sock'), labels: sessionLabels() });
    try {
      const loaded = await docker(g.address, ['load', '-i', archive]);
      assert.notEqual(loaded.code, 0, loaded.stdout);
      assert.match(
        loaded.stderr + loaded.stdout,
        /berth: ownership: the loaded image carries the label io\.berth\.tenant=/,
      );
      assert.equal(await exists(tag), false, 'the tag is gone');
      assert.equal(await exists(id), false, 'the image is gone');
    } finally {
      await g.close({ cleanup: true });
      made.push(id);
    }
  });
});
