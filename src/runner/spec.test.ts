import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isBerthError } from '../common/index.js';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { maskSecrets, parseDuration, parseRunSpec } from './spec.js';
import { effectiveNeeds, selectJobs, shouldRun } from './run.js';
import { formatEvent, formatters } from './events.js';
import { isRunIdSegment, isStale, ofRunTenant } from './reaper.js';
import { defaultStoreDir } from './paths.js';

const FILE = '/repo/berth.yml';

test('maps a parsed pipeline onto the runner spec: defaults, docker forms, services, steps', () => {
  using dir = {
    path: mkdtempSync(join(tmpdir(), 'berth-spec-')),
    [Symbol.dispose]() {
      rmSync(this.path, { recursive: true, force: true });
    },
  };
  writeFileSync(join(dir.path, 'token.txt'), 'from-a-file\n');
  const spec = parseRunSpec(
    `
env: { A: "1" }
variables: { V: "0" }
secrets: [TOKEN, { name: FILE_TOKEN, file: token.txt }]
jobs:
  build:
    steps:
      - make
      - name: check
        run: make check
  deploy:
    needs: [build]
    when: always
    timeout: 90s
    docker: { mode: guard, tenant: env/production, keep: true }
    services:
      db:
        image: postgres
        command: [postgres, -c, fsync=off]
        ready: pg_isready
    steps: [./deploy.sh]
`,
    join(dir.path, 'berth.yml'),
  );
  assert.equal(spec.workspace, dir.path);
  assert.deepEqual(spec.env, { A: '1' });
  assert.deepEqual(spec.variables, { V: '0' });
  assert.deepEqual(spec.secrets, ['TOKEN']);
  assert.deepEqual(spec.secretFiles, { FILE_TOKEN: 'from-a-file' });
  const [build, deploy] = spec.jobs;
  assert.equal(build?.image, 'berth-local/tools');
  assert.equal(build?.workdir, '/workspace');
  assert.equal(build?.docker.mode, 'guard');
  assert.deepEqual(
    build?.steps.map((s) => [s.name, s.run]),
    [
      ['make', 'make'],
      ['check', 'make check'],
    ],
  );
  assert.deepEqual(deploy?.needs, ['build']);
  assert.equal(deploy?.when, 'always');
  assert.equal(deploy?.timeoutMs, 90_000);
  assert.deepEqual(deploy?.docker, { mode: 'guard', tenant: 'env/production', keep: true, cache: undefined });
  assert.deepEqual(deploy?.services[0]?.command, ['postgres', '-c', 'fsync=off']);
  assert.equal(deploy?.services[0]?.ready, 'pg_isready');
});

test('invalid pipelines are PIPELINE_INVALID (exit 2) with positions', () => {
  let err: unknown;
  try {
    parseRunSpec(
      'jobs:\n  a:\n    steps: [x]\n    when: sometimes\n  b:\n    needs: [zz]\n    steps: [x]\n',
      '/r/berth.yml',
    );
  } catch (e) {
    err = e;
  }
  assert.ok(isBerthError(err, 'PIPELINE_INVALID'));
  assert.equal(err.exitCode, 2);
  assert.match(err.message, /\/r\/berth\.yml:4:\d+: jobs\.a\.when/);
  assert.match(err.message, /\/r\/berth\.yml:6:\d+: jobs\.b\.needs/);
});

test('durations, masking', () => {
  assert.equal(parseDuration('1500ms'), 1500);
  assert.equal(parseDuration('2m'), 120_000);
  assert.equal(parseDuration('30'), 30_000);
  assert.equal(parseDuration('soon'), undefined);
  assert.equal(maskSecrets('x=hunter2 and hunter2!', ['hunter2', 'ab']), 'x=*** and ***!');
  assert.equal(maskSecrets('abcde', ['abcd', 'abcde']), '***', 'the longest secret wins');
  assert.equal(maskSecrets('one\nline-two', ['line-two']), 'one\n***');
});

test('when semantics, "finally" jobs, --job selection', () => {
  assert.equal(shouldRun('on_success', ['passed', 'passed']), true);
  assert.equal(shouldRun('on_success', ['passed', 'skipped']), false);
  assert.equal(shouldRun('on_success', []), true);
  assert.equal(shouldRun('always', ['failed', 'cancelled']), true);
  assert.equal(shouldRun('on_failure', ['passed', 'timed_out']), true);
  assert.equal(shouldRun('on_failure', ['passed']), false);
  const spec = parseRunSpec(
    'jobs:\n  a: { steps: [x] }\n  b: { needs: [a], steps: [x] }\n  c: { steps: [x] }\n  fin: { when: always, steps: [x] }\n',
    FILE,
  );
  const needs = effectiveNeeds(spec.jobs);
  assert.deepEqual(needs.get('fin'), ['a', 'b', 'c'], 'a when: always job without needs runs last');
  assert.deepEqual(needs.get('b'), ['a']);
  assert.deepEqual(
    selectJobs(spec, ['b']).map((j) => j.name),
    ['a', 'b'],
  );
});

test('every event kind has a formatter', () => {
  const kinds = Object.keys(formatters).sort();
  assert.deepEqual(kinds, [
    'job.finished',
    'job.queued',
    'job.started',
    'log',
    'run.finished',
    'run.started',
    'step.finished',
    'step.started',
    'warning',
  ]);
  assert.equal(
    formatEvent({ kind: 'log', time: '', runId: 'r', job: 'build', step: 1, stream: 'stdout', line: 'hi' }),
    '[build#2] hi',
  );
});

test('the reaper spares live owners, other hosts and persistent tenants', () => {
  const base = { 'io.berth.run': 'r1', 'io.berth.owner.host': 'h1' };
  assert.equal(isStale({ ...base, 'io.berth.owner.pid': String(process.pid) }, 'h1'), false, 'owner alive');
  assert.equal(isStale({ ...base, 'io.berth.owner.pid': '999999999' }, 'h1'), true, 'owner dead');
  assert.equal(isStale({ ...base, 'io.berth.owner.pid': '999999999' }, 'h2'), false, 'other host');
  assert.equal(ofRunTenant({ ...base, 'io.berth.tenant': 'run/r1/build' }), true);
  assert.equal(ofRunTenant({ ...base, 'io.berth.tenant': 'env/production' }), false);
  // The runner's own containers set an empty tenant over whatever their image says (pass 23).
  assert.equal(ofRunTenant({ ...base, 'io.berth.tenant': '' }), true);
});

test('the reaper deletes only run folders whose id is one path segment', () => {
  assert.equal(isRunIdSegment('20261123-021900-a1b2'), true);
  assert.equal(isRunIdSegment('r1'), true);
  for (const bad of ['', '.', '..', '../x', 'a/b', '/tmp', 'a..b', '-x', 'x y'])
    assert.equal(isRunIdSegment(bad), false, bad);
});

test('red-team pass 23: secret files only from inside the workspace, links resolved', () => {
  using dir = {
    path: mkdtempSync(join(tmpdir(), 'berth-spec-')),
    [Symbol.dispose]() {
      rmSync(this.path, { recursive: true, force: true });
    },
  };
  const ws = join(dir.path, 'ws');
  mkdirSync(ws);
  writeFileSync(join(dir.path, 'outside.txt'), 'host secret\n');
  writeFileSync(join(ws, 'inside.txt'), 'job secret\n');
  symlinkSync(join(dir.path, 'outside.txt'), join(ws, 'link.txt'));
  const spec = (f: string) =>
    parseRunSpec(`secrets: [{ name: S, file: ${f} }]\njobs:\n  a:\n    steps: [x]\n`, join(ws, 'berth.yml'));
  assert.equal(spec('inside.txt').secretFiles.S, 'job secret');
  for (const f of ['../outside.txt', join(dir.path, 'outside.txt'), 'link.txt', '/etc/hostname'])
    assert.throws(() => spec(f), /is outside the workspace .*; a secret file is read only from inside it/, f);
});

test('red-team pass 23: the default run store is outside the workspace, one per workspace', () => {
  const a = defaultStoreDir('/srv/ci/app');
  assert.ok(!a.startsWith('/srv/ci/app'), a);
  assert.notEqual(a, defaultStoreDir('/srv/ci/other'));
  assert.equal(a, defaultStoreDir('/srv/ci/app/'));
  assert.match(a, /\/app-[0-9a-f]{12}$/);
});
