/** `berth run` when things go wrong: failing steps, timeouts, Ctrl-C, a runner killed with -9. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { defaultStoreDir } from '../../src/runner/index.js';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { LABEL_TENANT } from '../../src/common/index.js';
import { containers, networks, volumes } from '../../src/engine/index.js';
import { readRunOwner, jobTempRoot } from '../../src/runner/paths.js';
import { berth, engine, uniqueName } from '../support/index.js';
import {
  LABEL_ARG,
  jobStatus,
  leftovers,
  logLines,
  removeRun,
  runChecked,
  spawnRun,
  workspace,
} from './helpers.js';

test('a failing step skips the later steps and the jobs that need it; when: always jobs still run', async () => {
  using ws = workspace(`
name: failing
image: berth-local/busybox
docker: none
jobs:
  build:
    steps:
      - echo first
      - name: breaks
        run: echo about to fail; exit 7
      - echo never-printed
  deploy:
    needs: [build]
    steps:
      - echo never-deployed
  report:
    needs: [build]
    when: always
    steps:
      - echo report-ran
  on-fail:
    needs: [build]
    when: on_failure
    steps:
      - echo on-failure-ran
`);
  await runChecked(async (r) => {
    assert.equal(r.code, 1, r.stderr);
    assert.equal(jobStatus(r.events, 'build'), 'failed');
    assert.equal(jobStatus(r.events, 'deploy'), 'skipped');
    assert.equal(jobStatus(r.events, 'report'), 'passed');
    assert.equal(jobStatus(r.events, 'on-fail'), 'passed');
    assert.deepEqual(logLines(r.events, 'build'), ['first', 'about to fail']);
    const steps = r.events.flatMap((e) =>
      e.kind === 'step.finished' && e.job === 'build' ? [[e.status, e.exitCode]] : [],
    );
    assert.deepEqual(steps, [
      ['passed', 0],
      ['failed', 7],
      ['skipped', undefined],
    ]);
    const finished = r.events.find((e) => e.kind === 'job.finished' && e.job === 'build');
    assert.ok(finished?.kind === 'job.finished' && finished.exitCode === 7);
    // The summary is in the store too.
    const ls = await berth(['ls', '--json', '--store', defaultStoreDir(ws.path)]);
    const runs = JSON.parse(ls.stdout) as { id: string; status: string; exit_code: number }[];
    assert.equal(runs[0]?.id, r.runId);
    assert.equal(runs[0]?.status, 'failed');
    assert.equal(runs[0]?.exit_code, 1);
    const logs = await berth(['logs', r.runId, 'build', '--store', defaultStoreDir(ws.path)]);
    assert.match(logs.stdout, /about to fail/);
    assert.doesNotMatch(logs.stdout, /never-printed/);
  }, ws.file);
});

test('a job over its timeout is killed, marked timed_out, and cleaned up', async () => {
  using ws = workspace(`
name: timeout
image: berth-local/busybox
docker: none
jobs:
  slow:
    timeout: 5s
    services:
      side:
        image: berth-local/busybox
        command: sleep 600
    steps:
      - echo started-sleeping; sleep 600
      - echo not-reached
`);
  await runChecked((r) => {
    assert.equal(r.code, 1, r.stderr);
    assert.equal(jobStatus(r.events, 'slow'), 'timed_out');
    assert.ok(!logLines(r.events, 'slow').includes('not-reached'));
  }, ws.file);
});

test('Ctrl-C: running steps get SIGTERM, everything is cleaned up, exit 130', async () => {
  using ws = workspace(`
name: interrupt
image: berth-local/busybox
docker: none
jobs:
  long:
    services:
      db:
        image: berth-local/busybox
        command: sleep 600
    steps:
      - |
        trap 'echo got-SIGTERM; exit 143' TERM
        echo waiting-for-signal
        sleep 600 & wait $!
      - echo not-reached
  later:
    needs: [long]
    steps:
      - echo not-reached-either
`);
  const p = spawnRun(ws.file, ['--grace', '20s']);
  let runId = '';
  try {
    await p.waitFor(/^waiting-for-signal$/);
    runId = p.events().find((e) => e.kind === 'run.started')?.runId ?? '';
    assert.ok(runId);
    assert.ok((await leftovers(runId)).length >= 3, 'network, service and job container exist while running');
    p.child.kill('SIGINT');
    const exit = await p.exited;
    assert.equal(exit.code, 130, p.stderr());
    const events = p.events();
    assert.ok(logLines(events, 'long').includes('got-SIGTERM'), 'the step got SIGTERM and could react');
    assert.equal(jobStatus(events, 'long'), 'cancelled');
    assert.equal(jobStatus(events, 'later'), 'cancelled');
    assert.ok(!logLines(events, 'later').length);
    assert.deepEqual(await leftovers(runId), []);
    const log = readFileSync(join(defaultStoreDir(ws.path), 'runs', runId, 'long.log'), 'utf8');
    assert.match(log, /got-SIGTERM/);
  } finally {
    if (p.child.exitCode === null) p.child.kill('SIGKILL');
    await p.exited;
    await removeRun(runId);
  }
});

test('a second Ctrl-C forces the stop of a step that ignores SIGTERM, and still cleans up', async () => {
  using ws = workspace(`
image: berth-local/busybox
docker: none
jobs:
  stubborn:
    steps:
      - |
        trap 'echo ignoring-SIGTERM' TERM
        echo stubborn-started
        while :; do sleep 1 || true; done
`);
  // The grace is far longer than the test's own limit: only the forced stop can end this run in time.
  const p = spawnRun(ws.file, ['--grace', '30m']);
  let runId = '';
  try {
    await p.waitFor(/^stubborn-started$/);
    runId = p.events().find((e) => e.kind === 'run.started')?.runId ?? '';
    p.child.kill('SIGINT');
    await p.waitFor(/^ignoring-SIGTERM$/);
    assert.equal(p.child.exitCode, null, 'the first Ctrl-C waits for the grace period');
    p.child.kill('SIGINT');
    const exit = await Promise.race([
      p.exited,
      new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error('berth run did not stop')), 120_000).unref(),
      ),
    ]);
    assert.equal(exit.code, 130, p.stderr());
    assert.match(p.stderr(), /forcing stop/);
    assert.equal(jobStatus(p.events(), 'stubborn'), 'cancelled');
    assert.deepEqual(await leftovers(runId), []);
  } finally {
    if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await p.exited;
    await removeRun(runId);
  }
});

test('kill -9 of the runner, then `berth reap` leaves nothing behind (guard mode, objects the job made too)', async () => {
  using ws = workspace(`
name: killed
jobs:
  victim:
    docker: guard
    services:
      cache:
        image: berth-local/busybox
        command: sleep 600
    steps:
      - docker run -d --network none --name made-by-job berth-local/busybox sleep 600 >/dev/null
      - docker volume create made-by-job-vol >/dev/null
      - echo all-started; sleep 600
`);
  const p = spawnRun(ws.file);
  let runId = '';
  try {
    await p.waitFor(/^all-started$/);
    runId = p.events().find((e) => e.kind === 'run.started')?.runId ?? '';
    assert.ok(runId);
    p.child.kill('SIGKILL');
    await p.exited;
    const left = await leftovers(runId);
    assert.ok(
      left.length >= 5,
      `job, service, network and the job's own container and volume remain: ${left.join(', ')}`,
    );
    assert.equal(readRunOwner(runId)?.pid, p.child.pid, 'the run folder names its runner');
    const reaped = await berth(['reap', '--store', defaultStoreDir(ws.path), ...LABEL_ARG]);
    assert.equal(reaped.code, 0, reaped.stderr);
    assert.match(reaped.stdout, new RegExp(`reaped 1 run\\(s\\) \\(${runId}\\)`));
    assert.deepEqual(await leftovers(runId), []);
    assert.equal(existsSync(jobTempRoot(runId)), false, 'the run folder is gone');
    const ls = await berth(['ls', '--json', '--store', defaultStoreDir(ws.path)]);
    const runs = JSON.parse(ls.stdout) as { id: string; status: string; jobs: { status: string }[] }[];
    assert.equal(runs[0]?.status, 'abandoned');
    assert.equal(runs[0]?.jobs[0]?.status, 'cancelled');
  } finally {
    if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await p.exited;
    await removeRun(runId);
  }
});

test('a kept environment outlives its run; `berth reap --tenant` removes it, and only it', async () => {
  const env = `env/${uniqueName('keep')}`;
  const bystander = `env/${uniqueName('stay')}`;
  const job = (tenant: string, name: string) => `
  ${name}:
    docker: { mode: guard, tenant: ${tenant}, keep: true }
    steps:
      - docker run -d --name ${name}-app berth-local/busybox sleep 600 >/dev/null
      - docker volume create ${name}-data >/dev/null`;
  using ws = workspace(`
name: kept
jobs:${job(env, 'deploy')}${job(bystander, 'other')}
`);
  using c = engine();
  const of = async (tenant: string) => {
    const label = [`${LABEL_TENANT}=${tenant}`];
    return [
      ...(await containers(c).list({ all: true, filters: { label } })).map((x) => `container ${x.Names[0]}`),
      ...(await networks(c).list({ label })).map((x) => `network ${x.Name}`),
      ...(await volumes(c).list({ label })).map((x) => `volume ${x.Name}`),
    ].sort();
  };
  try {
    await runChecked((r) => assert.equal(r.code, 0, r.stdout + r.stderr), ws.file);
    const kept = await of(env);
    assert.equal(kept.length, 3, `the app, its network and its volume are kept: ${kept.join(', ')}`);
    const other = await of(bystander);
    assert.equal(other.length, 3);
    const reaped = await berth(['reap', '--tenant', env, ...LABEL_ARG]);
    assert.equal(reaped.code, 0, reaped.stderr);
    assert.match(reaped.stdout, /removed tenant .*: 1 container\(s\), 1 network\(s\), 1 volume\(s\)/);
    assert.deepEqual(await of(env), []);
    assert.deepEqual(await of(bystander), other, 'another environment is untouched');
    const usage = await berth(['reap', '--tenant', env, '--run', 'x']);
    assert.notEqual(usage.code, 0);
    assert.match(usage.stderr, /takes no --run/);
  } finally {
    for (const t of [env, bystander]) await berth(['reap', '--tenant', t, ...LABEL_ARG]);
  }
  assert.deepEqual(await of(bystander), []);
});
