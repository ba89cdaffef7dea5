/**
 * The server's artifact store on a real file system (no engine): what a run's folder holds beyond
 * regular files stays behind, the run's budget holds, and nothing outside a run's artifacts can be
 * opened through it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { ArtifactNotFound, ArtifactStore } from './artifacts.js';

function scratch(): { path: string; [Symbol.dispose](): void } {
  const path = mkdtempSync(join(tmpdir(), 'berth-artifacts-'));
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) };
}

async function text(s: Readable): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts).toString();
}

/** A runner's artifacts folder: two jobs, nested files, and things that are not regular files. */
function runnerFolder(at: string): void {
  mkdirSync(join(at, 'build', 'dist', 'deep'), { recursive: true });
  mkdirSync(join(at, 'test'), { recursive: true });
  writeFileSync(join(at, 'build', 'dist', 'app.js'), 'console.log(1)\n');
  writeFileSync(join(at, 'build', 'dist', 'deep', 'x.txt'), 'deep\n');
  writeFileSync(join(at, 'test', 'report.xml'), '<testsuite/>\n');
  writeFileSync(join(at, 'secret.txt'), 'outside every job\n');
  symlinkSync('/etc/hostname', join(at, 'build', 'dist', 'host-file'));
  symlinkSync('/etc', join(at, 'test', 'etc'));
  execFileSync('mkfifo', [join(at, 'test', 'pipe')]);
}

test('ingest keeps regular files under job folders, nothing else, and lists them', async () => {
  using dir = scratch();
  const from = join(dir.path, 'runner');
  runnerFolder(from);
  const store = new ArtifactStore(join(dir.path, 'store'), { keepRuns: 5, maxRunBytes: 1 << 20 });
  const kept = await store.ingest('r_abc1', from);
  // secret.txt sits beside the job folders: a file of no job, left behind.
  assert.deepEqual(kept, { files: 3, bytes: 33, skipped: 0 });
  assert.equal(existsSync(join(dir.path, 'store', 'r_abc1', 'secret.txt')), false);
  const list = await store.list('r_abc1');
  assert.deepEqual(list, [
    { job: 'build', path: 'dist/app.js', size: 15 },
    { job: 'build', path: 'dist/deep/x.txt', size: 5 },
    { job: 'test', path: 'report.xml', size: 13 },
  ]);
  assert.equal(existsSync(join(dir.path, 'store', 'r_abc1', 'build', 'dist', 'host-file')), false);
  assert.equal(existsSync(join(dir.path, 'store', 'r_abc1', 'test', 'etc')), false);
  assert.equal(existsSync(join(dir.path, 'store', 'r_abc1', 'test', 'pipe')), false);
  const f = await store.open('r_abc1', 'build', ['dist', 'deep', 'x.txt']);
  assert.equal(f.size, 5);
  assert.equal(await text(f.stream), 'deep\n');
});

test('a run keeps files up to its budget, in name order, and counts the rest', async () => {
  using dir = scratch();
  const from = join(dir.path, 'runner');
  mkdirSync(join(from, 'j'), { recursive: true });
  for (const n of ['a', 'b', 'c', 'd']) writeFileSync(join(from, 'j', n), Buffer.alloc(5000));
  // Four blocks: the folder j (one block), then a and b (5000 bytes each).
  const store = new ArtifactStore(join(dir.path, 'store'), { keepRuns: 5, maxRunBytes: 4 * 4096 });
  const kept = await store.ingest('r_b', from);
  assert.deepEqual(kept, { files: 2, bytes: 10_000, skipped: 2 });
  assert.deepEqual(
    (await store.list('r_b')).map((a) => a.path),
    ['a', 'b'],
  );
});

test('empty files and folders cost a block each: they cannot fill the disk under the budget (red-team pass 27)', async () => {
  using dir = scratch();
  const from = join(dir.path, 'runner');
  for (let i = 0; i < 200; i++) {
    const d = join(from, 'j', `d${String(i).padStart(3, '0')}`);
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, 'f'), '');
  }
  const store = new ArtifactStore(join(dir.path, 'store'), { keepRuns: 5, maxRunBytes: 64 * 4096 });
  const kept = await store.ingest('r_e', from);
  // The job folder, then a folder and its empty file per pair of blocks: 31 of them.
  assert.equal(kept.files, 31);
  assert.equal(kept.skipped, 200 - 31);
  const entries = execFileSync('find', [join(dir.path, 'store', 'r_e')], { encoding: 'utf8' })
    .trim()
    .split('\n');
  assert.ok(entries.length <= 64 + 1, `${entries.length} entries kept`);
});

test('open refuses every path that is not a stored artifact', async () => {
  using dir = scratch();
  const from = join(dir.path, 'runner');
  runnerFolder(from);
  const root = join(dir.path, 'store');
  const store = new ArtifactStore(root, { keepRuns: 5, maxRunBytes: 1 << 20 });
  await store.ingest('r_c', from);
  // Planted after the ingest, as if something else wrote into the store: still never followed.
  symlinkSync('/etc', join(root, 'r_c', 'build', 'etc-link'));
  symlinkSync('/etc/hostname', join(root, 'r_c', 'build', 'host-link'));
  writeFileSync(join(root, 'other.txt'), 'not an artifact\n');
  const refused: [string, string, string[]][] = [
    ['r_c', 'build', []],
    ['r_c', 'build', ['dist']],
    ['r_c', '..', ['other.txt']],
    ['r_c', 'build', ['..', '..', 'other.txt']],
    ['r_c', 'build', ['.', 'dist', 'app.js']],
    ['r_c', 'build', ['dist/app.js']],
    ['r_c', 'build', ['etc-link', 'hostname']],
    ['r_c', 'build', ['host-link']],
    ['r_c', 'build', ['dist', 'app.js\0']],
    ['../r_c', 'build', ['dist', 'app.js']],
    ['r_nope', 'build', ['dist', 'app.js']],
    ['r_c', 'nojob', ['x']],
  ];
  for (const [run, job, path] of refused)
    await assert.rejects(store.open(run, job, path), ArtifactNotFound, `${run} ${job} ${path.join('/')}`);
  assert.equal(readFileSync(join(root, 'other.txt'), 'utf8'), 'not an artifact\n');
});

test('prune removes the artifacts of the runs a project no longer keeps, of that project only', async () => {
  using dir = scratch();
  const store = new ArtifactStore(join(dir.path, 'store'), { keepRuns: 1, maxRunBytes: 1 << 20 });
  for (const id of ['r_1', 'r_2', 'r_3']) {
    const from = join(dir.path, `runner-${id}`);
    mkdirSync(join(from, 'j'), { recursive: true });
    writeFileSync(join(from, 'j', 'f'), id);
    await store.ingest(id, from);
  }
  const project: Record<string, string> = { r_1: 'p', r_2: 'q', r_3: 'p' };
  const removed = await store.prune(new Set(['r_3']), (id) => Promise.resolve(project[id] === 'p'));
  assert.equal(removed, 1);
  assert.deepEqual(await store.list('r_1'), []);
  assert.equal((await store.list('r_2')).length, 1);
  assert.equal((await store.list('r_3')).length, 1);
});
