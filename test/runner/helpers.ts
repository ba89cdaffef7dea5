/** Helpers for the runner's end-to-end tests: temp workspaces, the CLI with the session label. */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { LABEL_RUN, LABEL_TEST_SESSION } from '../../src/common/index.js';
import { containers, networks, volumes } from '../../src/engine/index.js';
import { ofRunTenant } from '../../src/runner/index.js';
import type { RunEvent } from '../../src/runner/index.js';
import { BERTH_CMD, SESSION, berth, engine, start, tempDir } from '../support/index.js';
import type { RunResult } from '../support/index.js';

export const LABEL_ARG = ['--label', `${LABEL_TEST_SESSION}=${SESSION}`];

/** A temp workspace holding `berth.yml` with `yaml`; removed on dispose. */
export function workspace(yaml: string): { path: string; file: string; [Symbol.dispose](): void } {
  const dir = tempDir('berth-run-');
  const file = join(dir.path, 'berth.yml');
  writeFileSync(file, yaml);
  return { path: dir.path, file, [Symbol.dispose]: () => dir[Symbol.dispose]() };
}

export function parseEvents(stdout: string): RunEvent[] {
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as RunEvent);
}

/** `berth run FILE --json` with the session label; answers the result and its events. */
export async function runJson(
  file: string,
  args: string[] = [],
  env: NodeJS.ProcessEnv = {},
): Promise<RunResult & { events: RunEvent[]; runId: string }> {
  const r = await berth(['run', file, '--json', ...LABEL_ARG, ...args], {
    env: { BERTH_NO_REAP_ON_START: '1', ...env },
    timeoutMs: 300_000,
  });
  const events = parseEvents(r.stdout);
  const started = events.find((e) => e.kind === 'run.started');
  return { ...r, events, runId: started?.runId ?? '' };
}

export function jobStatus(events: RunEvent[], job: string): string | undefined {
  const e = events.find((x) => x.kind === 'job.finished' && x.job === job);
  return e?.kind === 'job.finished' ? e.status : undefined;
}

/** What the job's steps printed (stdout and stderr, not the runner's own lines). */
export function logLines(events: RunEvent[], job: string): string[] {
  return events.flatMap((e) => (e.kind === 'log' && e.job === job && e.stream !== 'system' ? [e.line] : []));
}

/** Containers, networks and volumes on the engine labelled with this run. */
export async function leftovers(runId: string): Promise<string[]> {
  using c = engine();
  const label = [`${LABEL_RUN}=${runId}`];
  // A persistent tenant's containers may inherit a run's labels from an image built in that run;
  // they are not the run's (see ofRunTenant), so they are not leftovers.
  const cs = (await containers(c).list({ all: true, filters: { label } })).filter((x) =>
    ofRunTenant(x.Labels ?? {}),
  );
  const ns = await networks(c).list({ label });
  const vs = await volumes(c).list({ label });
  return [
    ...cs.map((x) => `container ${x.Names[0]}`),
    ...ns.map((x) => `network ${x.Name}`),
    ...vs.map((x) => `volume ${x.Name}`),
  ];
}

/** Removes everything labelled with this run (test cleanup when an assertion failed midway). */
export async function removeRun(runId: string): Promise<void> {
  if (!runId) return;
  using c = engine();
  const label = [`${LABEL_RUN}=${runId}`];
  for (const x of await containers(c).list({ all: true, filters: { label } }))
    if (ofRunTenant(x.Labels ?? {})) await containers(c).remove(x.Id);
  for (const x of await networks(c).list({ label })) await networks(c).remove(x.Id);
  for (const x of await volumes(c).list({ label })) await volumes(c).remove(x.Name);
}

/** Starts `berth run FILE --json` in the background, collecting its events. */
export function spawnRun(file: string, args: string[] = []) {
  const [node, ...pre] = BERTH_CMD;
  const child: ChildProcess = start(
    node ?? process.execPath,
    [...pre, 'run', file, '--json', ...LABEL_ARG, ...args],
    {
      env: { ...process.env, BERTH_NO_REAP_ON_START: '1' },
    },
  );
  let out = '';
  let err = '';
  child.stdout?.on('data', (b: Buffer) => (out += b.toString('utf8')));
  child.stderr?.on('data', (b: Buffer) => (err += b.toString('utf8')));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    exited,
    stdout: () => out,
    stderr: () => err,
    events: () => parseEvents(out),
    /** Resolves when a log line matching `re` has been printed (or rejects on exit / after 120 s). */
    waitFor: (re: RegExp) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`timed out waiting for ${re}; stdout:\n${out}\nstderr:\n${err}`)),
          120_000,
        );
        const check = () => {
          if (parseEvents(out).some((e) => e.kind === 'log' && re.test(e.line))) {
            clearTimeout(timer);
            child.stdout?.off('data', check);
            resolve();
          }
        };
        child.stdout?.on('data', check);
        void exited.then(() => {
          clearTimeout(timer);
          reject(new Error(`berth run exited before ${re}; stdout:\n${out}\nstderr:\n${err}`));
        });
        check();
      }),
  };
}

/**
 * `berth run FILE --json` (as runJson), then `check` on the result, then: the run left no
 * container, network or volume behind. Whatever it did leave is removed even when a check fails.
 */
export async function runChecked(
  check: (r: Awaited<ReturnType<typeof runJson>>) => void | Promise<void>,
  file: string,
  args: string[] = [],
  env: NodeJS.ProcessEnv = {},
): Promise<void> {
  const r = await runJson(file, args, env);
  try {
    await check(r);
    assert.deepEqual(await leftovers(r.runId), [], `run ${r.runId} left objects behind`);
  } finally {
    await removeRun(r.runId);
  }
}
