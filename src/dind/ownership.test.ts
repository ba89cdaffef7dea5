import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tenantOf } from '../common/index.js';
import {
  isOwnCacheLock,
  isOwnCacheVolume,
  isOwnSidecar,
  isOwnSocketDir,
  ownSidecarName,
  ownSocketDir,
} from './ownership.js';

test('tenantOf: only a non-empty io.berth.tenant names a tenant', () => {
  assert.equal(tenantOf(undefined), undefined);
  assert.equal(tenantOf(null), undefined);
  assert.equal(tenantOf({}), undefined);
  assert.equal(tenantOf({ 'io.berth.tenant': '' }), undefined);
  assert.equal(tenantOf({ 'io.berth.tenant': 'run/r1/build' }), 'run/r1/build');
});

test("berth's own dind objects: the right role and key, and no tenant", () => {
  const sidecar = { 'io.berth.role': 'dind', 'io.berth.dind': 'n1' };
  assert.equal(isOwnSidecar(sidecar, 'n1'), true);
  assert.equal(isOwnSidecar({ ...sidecar, 'io.berth.tenant': '' }, 'n1'), true);
  assert.equal(isOwnSidecar({ ...sidecar, 'io.berth.tenant': 't1' }, 'n1'), false);
  assert.equal(isOwnSidecar(sidecar, 'n2'), false, 'another daemon');
  assert.equal(isOwnSidecar({ 'io.berth.dind': 'n1' }, 'n1'), false, 'no role');
  assert.equal(isOwnSidecar(null, 'n1'), false);

  const vol = { 'io.berth.role': 'dind-cache', 'io.berth.dind.cache': 'k1' };
  assert.equal(isOwnCacheVolume(vol, 'k1'), true);
  assert.equal(isOwnCacheVolume({ ...vol, 'io.berth.tenant': 't1' }, 'k1'), false);
  assert.equal(isOwnCacheVolume(vol, 'k2'), false);
  assert.equal(isOwnCacheVolume({ 'io.berth.tenant': 't1' }, 'k1'), false, "what a tenant's create gives");
  assert.equal(isOwnCacheVolume(null, 'k1'), false, 'a volume with no labels');

  const lock = { 'io.berth.role': 'dind-cache-lock', 'io.berth.dind.cache': 'k1', 'io.berth.dind': 'n1' };
  assert.equal(isOwnCacheLock(lock, 'k1'), true);
  assert.equal(isOwnCacheLock({ ...lock, 'io.berth.tenant': 't1' }, 'k1'), false);
  assert.equal(isOwnCacheLock({ ...lock, 'io.berth.role': 'dind' }, 'k1'), false);
});

test('isOwnSocketDir: only a berth-dind-* directory directly in a base, symlinks resolved', () => {
  const base = mkdtempSync(join(tmpdir(), 'berth-own-test-'));
  const other = mkdtempSync(join(tmpdir(), 'berth-own-other-'));
  try {
    const bases = [base];
    const own = mkdtempSync(join(base, 'berth-dind-'));
    assert.equal(isOwnSocketDir(own, bases), true);
    assert.equal(ownSocketDir(own, bases), own);
    assert.equal(isOwnSocketDir(`${own}/`, bases), true, 'trailing slash');

    // Not made by berth's startDind: wrong name, nested deeper, elsewhere, relative, missing.
    const named = join(base, 'keep');
    mkdirSync(named);
    assert.equal(isOwnSocketDir(named, bases), false);
    const deeper = join(own, 'berth-dind-x');
    mkdirSync(deeper);
    assert.equal(isOwnSocketDir(deeper, bases), false);
    const elsewhere = join(other, 'berth-dind-abc');
    mkdirSync(elsewhere);
    assert.equal(isOwnSocketDir(elsewhere, bases), false);
    assert.equal(isOwnSocketDir('berth-dind-abc', bases), false);
    assert.equal(isOwnSocketDir(join(base, 'berth-dind-missing'), bases), false);
    assert.equal(isOwnSocketDir(join(base, 'berth-dind-zzz', '..', '..'), bases), false, 'dot segments');
    assert.equal(isOwnSocketDir('/', bases), false);
    assert.equal(isOwnSocketDir(base, bases), false, 'the base itself');

    // A file is not a dir; a symlink named like one (to a dir elsewhere, or to an own dir) is refused.
    const file = join(base, 'berth-dind-file');
    writeFileSync(file, 'x');
    assert.equal(isOwnSocketDir(file, bases), false);
    const link = join(base, 'berth-dind-link');
    symlinkSync(other, link);
    assert.equal(isOwnSocketDir(link, bases), false);
    const link2 = join(base, 'berth-dind-link2');
    symlinkSync(own, link2);
    assert.equal(isOwnSocketDir(link2, bases), false);
    // A path that reaches an own dir through a symlinked parent resolves to it.
    const viaLink = join(other, 'base-link');
    symlinkSync(base, viaLink);
    assert.equal(ownSocketDir(join(viaLink, own.slice(base.length + 1)), bases), own);
  } finally {
    rmSync(base, { recursive: true, force: true });
    rmSync(other, { recursive: true, force: true });
  }
});

test('ownSidecarName: a container is a daemon only when it is itself the sidecar (its name and labels)', () => {
  const labels = { 'io.berth.role': 'dind', 'io.berth.dind': 'n1' };
  assert.equal(ownSidecarName({ Names: ['/berth-dind-n1'], Labels: labels }), 'n1');
  assert.equal(ownSidecarName({ Names: ['berth-dind-n1'], Labels: labels }), 'n1');
  // A build step container: random name, the Dockerfile's labels, no tenant label.
  assert.equal(ownSidecarName({ Names: ['/eager_turing'], Labels: labels }), undefined, 'points at n1');
  assert.equal(ownSidecarName({ Names: ['/berth-dind-n2'], Labels: labels }), undefined, 'another name');
  assert.equal(
    ownSidecarName({ Names: ['/berth-dind-n1'], Labels: { ...labels, 'io.berth.tenant': 't' } }),
    undefined,
    "a tenant's",
  );
  assert.equal(ownSidecarName({ Names: ['/berth-dind-n1'], Labels: { 'io.berth.dind': 'n1' } }), undefined);
  assert.equal(
    ownSidecarName({ Names: ['/berth-dind-'], Labels: { ...labels, 'io.berth.dind': '' } }),
    undefined,
  );
  assert.equal(ownSidecarName({ Names: null, Labels: labels }), undefined);
  assert.equal(ownSidecarName({ Names: ['/berth-dind-n1'], Labels: null }), undefined);
});
