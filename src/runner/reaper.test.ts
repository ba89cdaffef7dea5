import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import {
  RUN_OWNER_FILE,
  createRunTempRoot,
  jobTempRoot,
  parseRunOwner,
  readRunOwner,
  runOwnerGone,
  runTempBase,
  runTempBaseProblem,
} from './paths.js';
import { folderVerdict } from './reaper.js';

const DEAD = 999_999_999;

test('parseRunOwner: only a well-formed record of this run', () => {
  const ok = JSON.stringify({ runId: 'r1', pid: 42, host: 'h' });
  assert.deepEqual(parseRunOwner(ok, 'r1'), { runId: 'r1', pid: 42, host: 'h' });
  assert.equal(parseRunOwner(ok, 'r2'), undefined, 'another run');
  assert.equal(parseRunOwner('not json', 'r1'), undefined);
  assert.equal(parseRunOwner('null', 'r1'), undefined);
  assert.equal(parseRunOwner(JSON.stringify({ runId: 'r1', pid: '42', host: 'h' }), 'r1'), undefined);
  assert.equal(parseRunOwner(JSON.stringify({ runId: 'r1', pid: 0, host: 'h' }), 'r1'), undefined);
  assert.equal(parseRunOwner(JSON.stringify({ runId: 'r1', pid: 1.5, host: 'h' }), 'r1'), undefined);
  assert.equal(parseRunOwner(JSON.stringify({ runId: 'r1', pid: 42 }), 'r1'), undefined);
});

test('runOwnerGone: this host and a dead pid', () => {
  const host = hostname();
  assert.equal(runOwnerGone({ runId: 'r', pid: DEAD, host }, host), true);
  assert.equal(runOwnerGone({ runId: 'r', pid: process.pid, host }, host), false, 'alive');
  assert.equal(runOwnerGone({ runId: 'r', pid: DEAD, host: `${host}-other` }, host), false, 'another host');
  assert.equal(runOwnerGone(undefined, host), false, 'no record');
});

test("folderVerdict: a run's folder goes on its own owner file, the store or --force, never on labels alone", () => {
  const host = hostname();
  const dead = { runId: 'r', pid: DEAD, host };
  const alive = { runId: 'r', pid: process.pid, host };
  const labels = { fromStore: false, forced: false, host };
  const store = { fromStore: true, forced: false, host };
  assert.deepEqual(folderVerdict(dead, true, labels), { remove: true, reaped: true });
  assert.deepEqual(
    folderVerdict(alive, true, labels),
    { remove: false, reaped: false },
    'a live run named by a (forged) label is not dead',
  );
  assert.deepEqual(folderVerdict(undefined, true, labels), { remove: false, reaped: false }, 'no owner file');
  assert.deepEqual(folderVerdict(undefined, false, labels), { remove: false, reaped: true }, 'no folder');
  assert.deepEqual(folderVerdict(undefined, true, store), { remove: true, reaped: true }, "an older berth's");
  assert.deepEqual(folderVerdict(alive, true, store), { remove: false, reaped: true }, 'owner file wins');
  assert.deepEqual(folderVerdict(alive, true, { ...labels, forced: true }), { remove: true, reaped: true });
});

test('createRunTempRoot records its owner; readRunOwner reads only a plain folder and file', () => {
  const runId = `unit-${randomBytes(4).toString('hex')}`;
  const root = jobTempRoot(runId);
  try {
    assert.equal(readRunOwner(runId), undefined, 'no folder');
    assert.equal(createRunTempRoot(runId), root);
    assert.deepEqual(readRunOwner(runId), { runId, pid: process.pid, host: hostname() });
    assert.deepEqual(JSON.parse(readFileSync(join(root, RUN_OWNER_FILE), 'utf8')), {
      runId,
      pid: process.pid,
      host: hostname(),
    });
    // An existing folder is never taken for a new run's.
    assert.throws(() => createRunTempRoot(runId, { pid: DEAD, host: hostname() }), /EEXIST/);
    writeFileSync(join(root, RUN_OWNER_FILE), JSON.stringify({ runId, pid: DEAD, host: hostname() }));
    assert.equal(readRunOwner(runId)?.pid, DEAD);
    writeFileSync(
      join(root, RUN_OWNER_FILE),
      JSON.stringify({ runId: 'other', pid: DEAD, host: hostname() }),
    );
    assert.equal(readRunOwner(runId), undefined, "another run's record");
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  // A symlink in place of the folder is not a run folder, whatever it points at.
  const target = mkdtempSync(join(tmpdir(), 'berth-unit-'));
  const linked = `unit-${randomBytes(4).toString('hex')}`;
  try {
    writeFileSync(
      join(target, RUN_OWNER_FILE),
      JSON.stringify({ runId: linked, pid: DEAD, host: hostname() }),
    );
    symlinkSync(target, jobTempRoot(linked));
    assert.equal(readRunOwner(linked), undefined);
  } finally {
    rmSync(jobTempRoot(linked), { force: true });
    rmSync(target, { recursive: true, force: true });
  }
});

test("the runs' temp base is this user's alone: a link or another user's folder is refused, a loose mode tightened (red-team pass 29)", () => {
  assert.equal(runTempBase(), process.geteuid?.() === 0 ? '/run/berth/runs' : runTempBase());
  assert.ok(!runTempBase().startsWith(join(tmpdir(), 'berth-run/')), 'never the shared $TMPDIR/berth-run');
  const dir = mkdtempSync(join(tmpdir(), 'berth-base-'));
  try {
    const own = join(dir, 'own');
    mkdirSync(own, { mode: 0o777 });
    chmodSync(own, 0o777);
    assert.equal(runTempBaseProblem(own), undefined);
    assert.equal(statSync(own).mode & 0o777, 0o700, 'tightened');
    const link = join(dir, 'link');
    symlinkSync(own, link);
    assert.match(runTempBaseProblem(link) ?? '', /not a folder/);
    if (process.geteuid?.() === 0) {
      const theirs = join(dir, 'theirs');
      mkdirSync(theirs);
      chownSync(theirs, 4321, 4321);
      assert.match(runTempBaseProblem(theirs) ?? '', /belongs to uid 4321/);
    }
    assert.match(runTempBaseProblem(join(dir, 'missing')) ?? '', /does not exist/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
