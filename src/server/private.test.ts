/**
 * The server's data folder and store are this user's own (red-team passes 29 and 30): a folder
 * that is a link or another user's is refused, a loose one of ours tightened, and the store is
 * never opened through a link nor taken from another user.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chownSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isBerthError } from '../common/index.js';
import { ensurePrivateDir, openSqlite } from './sql.js';

const root = process.geteuid?.() === 0;

test('the data folder: made 0700, a loose one of ours tightened, a link or another user’s refused', () => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-private-'));
  try {
    const fresh = join(dir, 'a', 'data');
    ensurePrivateDir(fresh, 'server data folder');
    assert.equal(statSync(fresh).mode & 0o777, 0o700);
    const loose = join(dir, 'loose');
    mkdirSync(loose, { mode: 0o777 });
    ensurePrivateDir(loose, 'server data folder');
    assert.equal(statSync(loose).mode & 0o777, 0o700);
    const target = join(dir, 'elsewhere');
    mkdirSync(target, { mode: 0o755 });
    symlinkSync(target, join(dir, 'link'));
    assert.throws(
      () => ensurePrivateDir(join(dir, 'link'), 'server data folder'),
      (e: unknown) => isBerthError(e, 'BERTH_CONFIG') && /is not a folder/.test(e.message),
    );
    assert.equal(statSync(target).mode & 0o777, 0o755, 'the link target is not chmodded');
    if (root) {
      const theirs = join(dir, 'theirs');
      mkdirSync(theirs);
      chownSync(theirs, 4321, 4321);
      assert.throws(
        () => ensurePrivateDir(theirs, 'server data folder'),
        (e: unknown) => isBerthError(e, 'BERTH_CONFIG') && /belongs to uid 4321/.test(e.message),
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the store: 0600, never through a link, never another user’s file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-store-'));
  try {
    await openSqlite(join(dir, 'server.db')).close();
    assert.equal(statSync(join(dir, 'server.db')).mode & 0o777, 0o600);
    const victim = join(dir, 'victim');
    writeFileSync(victim, 'precious');
    symlinkSync(victim, join(dir, 'linked.db'));
    assert.throws(
      () => openSqlite(join(dir, 'linked.db')),
      (e: unknown) => isBerthError(e, 'BERTH_CONFIG') && /a link is refused/.test(e.message),
    );
    if (root) {
      writeFileSync(join(dir, 'theirs.db'), '');
      chownSync(join(dir, 'theirs.db'), 4321, 4321);
      assert.throws(
        () => openSqlite(join(dir, 'theirs.db')),
        (e: unknown) => isBerthError(e, 'BERTH_CONFIG') && /not a file of this user's own/.test(e.message),
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
