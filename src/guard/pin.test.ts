import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  realpathSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BindSourceError, openBeneath } from './pin.js';

/** A map /workspace -> a temp folder, with a second map /cache -> another; removed after `fn`. */
function withMaps(fn: (ws: string, cache: string) => void): void {
  const base = realpathSync(mkdtempSync(join(tmpdir(), 'berth-pin-')));
  const ws = join(base, 'ws');
  const cache = join(base, 'cache');
  mkdirSync(join(ws, 'a', 'b'), { recursive: true });
  mkdirSync(cache);
  writeFileSync(join(ws, 'a', 'file.txt'), 'x');
  try {
    fn(ws, cache);
  } finally {
    rmSync(base, { recursive: true, force: true });
  }
}

const maps = (ws: string, cache: string) => [
  { jobPath: '/workspace', hostPath: ws },
  { jobPath: '/cache', hostPath: cache },
];

/** The walk's host path (its descriptor closed), or the reason it refused. */
function walk(source: string, ws: string, cache: string, create = false): string {
  try {
    const w = openBeneath(source, maps(ws, cache), create);
    closeSync(w.fd);
    return w.path;
  } catch (e) {
    if (e instanceof BindSourceError) return `refused:${e.reason}`;
    throw e;
  }
}

test('plain paths, the root itself, and `..` that stays inside', () => {
  withMaps((ws, cache) => {
    assert.equal(walk('/workspace/a/b', ws, cache), join(ws, 'a', 'b'));
    assert.equal(walk('/workspace', ws, cache), ws);
    assert.equal(walk('/workspace/a/file.txt', ws, cache), join(ws, 'a', 'file.txt'));
    assert.equal(walk('/cache', ws, cache), cache);
    assert.equal(walk('/workspace/a/../a/b', ws, cache), join(ws, 'a', 'b'));
  });
});

test('outside every map, or led out of it, is refused', () => {
  withMaps((ws, cache) => {
    assert.equal(walk('/etc', ws, cache), 'refused:outside');
    assert.equal(walk('/workspacex', ws, cache), 'refused:outside');
    symlinkSync('/', join(ws, 'root'));
    symlinkSync('../..', join(ws, 'a', 'up'));
    symlinkSync('/etc', join(ws, 'a', 'etc'));
    assert.equal(walk('/workspace/root', ws, cache), 'refused:outside');
    assert.equal(walk('/workspace/root/etc', ws, cache), 'refused:outside');
    assert.equal(walk('/workspace/a/up', ws, cache), 'refused:outside');
    assert.equal(walk('/workspace/a/etc', ws, cache), 'refused:outside');
  });
});

test('symlinks inside: relative from where they are, absolute as the job sees them, or as host paths in a map', () => {
  withMaps((ws, cache) => {
    symlinkSync('a/b', join(ws, 'rel'));
    symlinkSync('/workspace/a', join(ws, 'jobabs'));
    symlinkSync(join(ws, 'a', 'b'), join(ws, 'hostabs'));
    symlinkSync('/cache', join(ws, 'tocache'));
    symlinkSync('../a', join(ws, 'a', 'b', 'back'));
    assert.equal(walk('/workspace/rel', ws, cache), join(ws, 'a', 'b'));
    assert.equal(walk('/workspace/jobabs/b', ws, cache), join(ws, 'a', 'b'));
    assert.equal(walk('/workspace/hostabs', ws, cache), join(ws, 'a', 'b'));
    assert.equal(walk('/workspace/tocache', ws, cache), cache);
    // `..` after a symlink is the physical parent (a/b/back -> ../a from a/b = a/a, which is missing).
    assert.equal(walk('/workspace/a/b/back', ws, cache), 'refused:missing');
  });
});

test('loops, files in the middle, and missing paths', () => {
  withMaps((ws, cache) => {
    symlinkSync('loop2', join(ws, 'loop1'));
    symlinkSync('loop1', join(ws, 'loop2'));
    assert.equal(walk('/workspace/loop1', ws, cache), 'refused:loop');
    assert.equal(walk('/workspace/a/file.txt/x', ws, cache), 'refused:not-a-directory');
    assert.equal(walk('/workspace/new/deep', ws, cache), 'refused:missing');
    assert.equal(walk('/workspace/new/deep', ws, cache, true), join(ws, 'new', 'deep'));
    assert.ok(statSync(join(ws, 'new', 'deep')).isDirectory());
    assert.equal((statSync(join(ws, 'new')).mode & 0o777).toString(8), '755');
  });
});

test('creating never follows a symlink planted where a folder is missing', () => {
  withMaps((ws, cache) => {
    symlinkSync('/tmp/berth-nowhere-at-all', join(ws, 'dangling'));
    assert.equal(walk('/workspace/dangling/x', ws, cache, true), 'refused:outside');
    symlinkSync('missing-inside', join(ws, 'inner'));
    assert.equal(walk('/workspace/inner/x', ws, cache, true), join(ws, 'missing-inside', 'x'));
  });
});
