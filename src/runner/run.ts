/**
 * `berth run`: schedules a pipeline's jobs over its DAG (independent jobs in parallel), runs each
 * with JobRun, records everything in the store, and reports events.
 */
import { availableParallelism, hostname } from 'node:os';
import { join } from 'node:path';
import { rmSync } from 'node:fs';
import { LABEL_OWNER_HOST, LABEL_OWNER_PID, LABEL_RUN, errorMessage } from '../common/index.js';
import { DockerClient } from '../engine/index.js';
import { gitInfo } from '../pipeline/index.js';
import type { JobStatus, RunEvent, RunStatus } from './events.js';
import { now } from './events.js';
import { JobRun } from './job.js';
import { createRunTempRoot, defaultStoreDir, jobTempRoot, newRunId, runTempBaseProblem } from './paths.js';
import { reap } from './reaper.js';
import type { DockerMode, JobSpec, RunSpec } from './spec.js';
import { maskSecrets } from './spec.js';
import { openStore } from './store.js';

export interface RunOptions {
  spec: RunSpec;
  /** Run only these jobs (and what they need). */
  jobs?: string[];
  /** Overrides every job's docker mode (a persistent tenant keeps its settings). */
  docker?: DockerMode;
  /** `--var K=V`: environment for every step. */
  vars?: Record<string, string>;
  /**
   * The branch the run is for, where the workspace's checkout does not say it: a detached HEAD,
   * as a server run's checkout of the pushed commit always is (BERTH_BRANCH).
   */
  branch?: string;
  /** Concurrent jobs (default: CPU count). */
  parallel?: number;
  /** Extra labels on every object (tests add their session label). */
  labels?: Record<string, string>;
  /** The store folder (default: defaultStoreDir of the workspace, outside it). */
  storeDir?: string;
  /** Where secret values are read from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Aborting it stops the run gracefully (SIGTERM, grace, SIGKILL). */
  signal?: AbortSignal;
  /** Aborting it stops the run at once. */
  forceSignal?: AbortSignal;
  /** Grace between SIGTERM and SIGKILL (default 10 s). */
  graceMs?: number;
  client?: DockerClient;
  /** An image registry as the host engine reaches it (host:port): BERTH_REGISTRY in every job (dind jobs get an address their nested daemon reaches). */
  registry?: string;
  /** Reap stale leftovers of dead runners first (default true). */
  reapFirst?: boolean;
  /**
   * The most all of the run's jobs together save as artifacts (bytes, each file counted at least
   * a block): `berth serve` passes what it keeps of a run. Default: each job up to
   * MAX_ARTIFACT_BYTES, with no bound for the run. 0 saves none.
   */
  artifactsMaxBytes?: number;
  onEvent?: (e: RunEvent) => void;
}

export interface RunOutcome {
  runId: string;
  status: RunStatus;
  /** 0 all passed, 1 a job failed, 130 interrupted. */
  exitCode: number;
  jobs: { job: string; status: JobStatus; exitCode?: number; durationMs: number; reason?: string }[];
  storeDir: string;
}

/** The jobs to run for `--job` selections: the named ones plus everything they need. */
export function selectJobs(spec: RunSpec, names: readonly string[] | undefined): JobSpec[] {
  if (!names || names.length === 0) return spec.jobs;
  const byName = new Map(spec.jobs.map((j) => [j.name, j]));
  const keep = new Set<string>();
  const add = (n: string) => {
    if (keep.has(n)) return;
    keep.add(n);
    for (const d of byName.get(n)?.needs ?? []) add(d);
  };
  for (const n of names) add(n);
  return spec.jobs.filter((j) => keep.has(j.name));
}

/**
 * The effective dependencies: `needs`, and for a job with `when: always|on_failure` and no needs,
 * every other job that is not itself such a "finally" job (it runs last).
 */
export function effectiveNeeds(jobs: readonly JobSpec[]): Map<string, string[]> {
  const isFinally = (j: JobSpec) => j.when !== 'on_success' && j.needs.length === 0;
  const names = new Set(jobs.map((j) => j.name));
  const out = new Map<string, string[]>();
  for (const j of jobs) {
    out.set(
      j.name,
      isFinally(j)
        ? jobs.filter((o) => !isFinally(o)).map((o) => o.name)
        : j.needs.filter((n) => names.has(n)),
    );
  }
  return out;
}

/** Whether a job whose dependencies ended with these statuses should run. */
export function shouldRun(when: JobSpec['when'], deps: readonly JobStatus[]): boolean {
  const bad = deps.some((s) => s === 'failed' || s === 'timed_out');
  if (when === 'always') return true;
  if (when === 'on_failure') return bad;
  return deps.every((s) => s === 'passed');
}

export async function runPipeline(opts: RunOptions): Promise<RunOutcome> {
  const { spec } = opts;
  const client = opts.client ?? new DockerClient();
  const ownClient = opts.client === undefined;
  const storeDir = opts.storeDir ?? defaultStoreDir(spec.workspace);
  const store = openStore(storeDir);
  const runId = newRunId();
  const started = Date.now();
  const secretValues: string[] = [];
  // Text an event quotes from the pipeline or from what a job made (an image's name, a step's, an
  // artifact's path in a warning) may hold a secret: it is masked as log lines are, here, for
  // every reader of the events (the CLI, the server's log and event stream).
  const emit = (e: RunEvent) => {
    const mask = (text: string) => maskSecrets(text, secretValues);
    opts.onEvent?.(
      e.kind === 'warning'
        ? { ...e, message: mask(e.message) }
        : e.kind === 'step.started' || e.kind === 'step.finished'
          ? { ...e, name: mask(e.name) }
          : e.kind === 'job.started'
            ? { ...e, image: mask(e.image) }
            : e,
    );
  };
  const env = opts.env ?? process.env;
  const logFailed = new Set<string>();
  const secretEnv: Record<string, string> = {};
  for (const [k, v] of Object.entries(spec.secretFiles)) {
    secretEnv[k] = v;
    secretValues.push(v);
  }
  for (const s of spec.secrets) {
    const v = env[s];
    if (v === undefined)
      emit({ kind: 'warning', time: now(), runId, message: `secret ${s} is not set in the environment` });
    else {
      secretEnv[s] = v;
      secretValues.push(v);
    }
  }
  let jobs = selectJobs(spec, opts.jobs).map((j) => {
    if (!opts.docker || j.docker.tenant !== undefined) return j;
    return { ...j, docker: { ...j.docker, mode: opts.docker } };
  });
  const labels = {
    ...opts.labels,
    [LABEL_RUN]: runId,
    [LABEL_OWNER_PID]: String(process.pid),
    [LABEL_OWNER_HOST]: hostname(),
  };
  const git = gitInfo(spec.workspace);
  const commit = git?.sha ?? null;
  const branch = git?.branch ?? opts.branch ?? null;
  try {
    // Fail fast (ENGINE_UNREACHABLE, exit 69) rather than failing every job one by one.
    await client.ping();
    if (opts.reapFirst !== false) {
      try {
        const r = await reap(client, { store });
        if (r.runs.length)
          emit({
            kind: 'warning',
            time: now(),
            runId,
            message: `reaped leftovers of dead runs: ${r.runs.join(', ')}`,
          });
      } catch (err) {
        emit({
          kind: 'warning',
          time: now(),
          runId,
          message: `reaping stale runs failed: ${errorMessage(err)}`,
        });
      }
    }
    store.createRun(
      {
        id: runId,
        pipeline: spec.name,
        file: spec.file,
        workspace: spec.workspace,
        started_at: new Date(started).toISOString(),
        commit_sha: commit,
        branch,
        owner_pid: process.pid,
        owner_host: hostname(),
      },
      jobs.map((j) => ({ name: j.name, steps: j.steps.map((s) => s.name) })),
    );
    emit({
      kind: 'run.started',
      time: now(),
      runId,
      pipeline: spec.name,
      jobs: jobs.map((j) => j.name),
      workspace: spec.workspace,
    });
    // Shared by the run's jobs when the caller bounds the run (see artifactsMaxBytes).
    const runArtifacts = opts.artifactsMaxBytes === undefined ? undefined : { left: opts.artifactsMaxBytes };
    const baseEnv: Record<string, string> = {
      CI: 'true',
      BERTH: 'true',
      BERTH_RUN_ID: runId,
      BERTH_PIPELINE: spec.name,
      BERTH_WORKSPACE: '/workspace',
      ...(commit ? { BERTH_COMMIT_SHA: commit, BERTH_COMMIT_SHORT_SHA: commit.slice(0, 8) } : {}),
      ...(branch ? { BERTH_BRANCH: branch } : {}),
      ...spec.variables,
      ...opts.vars,
      ...spec.env,
      ...secretEnv,
    };
    const expand = (text: string) =>
      text.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/g, (m, k: string) => baseEnv[k] ?? m);
    jobs = jobs.map((j) => ({
      ...j,
      image: expand(j.image),
      services: j.services.map((s) => ({
        ...s,
        image: expand(s.image),
        env: Object.fromEntries(Object.entries(s.env).map(([k, v]) => [k, expand(v)])),
      })),
    }));
    const needs = effectiveNeeds(jobs);
    const status = new Map<string, JobStatus>(jobs.map((j) => [j.name, 'queued']));
    const results = new Map<string, RunOutcome['jobs'][number]>();
    const running = new Map<string, { run: JobRun; done: Promise<void> }>();
    const parallel = Math.max(1, opts.parallel ?? availableParallelism());
    let cancelled = opts.signal?.aborted === true;
    let forced = opts.forceSignal?.aborted === true;
    let wake: () => void = () => undefined;
    // Set from signal listeners: read through a call so control-flow narrowing does not freeze it.
    const isCancelled = () => cancelled;
    const onCancel = () => {
      cancelled = true;
      for (const r of running.values()) r.run.cancel(false);
      wake();
    };
    const onForce = () => {
      cancelled = true;
      forced = true;
      for (const r of running.values()) r.run.cancel(true);
      wake();
    };
    opts.signal?.addEventListener('abort', onCancel);
    opts.forceSignal?.addEventListener('abort', onForce);
    for (const j of jobs) emit({ kind: 'job.queued', time: now(), runId, job: j.name });
    const finish = (job: string, r: RunOutcome['jobs'][number]) => {
      status.set(job, r.status);
      results.set(job, r);
      store.updateJob(runId, job, {
        status: r.status,
        exit_code: r.exitCode ?? null,
        finished_at: now(),
        duration_ms: r.durationMs,
        reason: r.reason ?? null,
      });
      emit({
        kind: 'job.finished',
        time: now(),
        runId,
        job,
        status: r.status,
        exitCode: r.exitCode,
        durationMs: r.durationMs,
        reason: r.reason,
      });
    };
    try {
      // Its owner file tells the reaper whether this run's runner is alive (see reaper.ts).
      createRunTempRoot(runId);
      for (;;) {
        const queued = jobs.filter((j) => status.get(j.name) === 'queued');
        if (queued.length === 0 && running.size === 0) break;
        let progressed = false;
        for (const j of queued) {
          if (cancelled) {
            finish(j.name, { job: j.name, status: 'cancelled', durationMs: 0, reason: 'run interrupted' });
            progressed = true;
            continue;
          }
          const deps = (needs.get(j.name) ?? []).map((n) => status.get(n) ?? 'passed');
          if (deps.some((s) => s === 'queued' || s === 'running')) continue;
          if (!shouldRun(j.when, deps)) {
            finish(j.name, {
              job: j.name,
              status: 'skipped',
              durationMs: 0,
              reason: `when: ${j.when} (needs: ${deps.join(', ')})`,
            });
            progressed = true;
            continue;
          }
          if (running.size >= parallel) continue;
          status.set(j.name, 'running');
          progressed = true;
          const t0 = Date.now();
          store.updateJob(runId, j.name, { status: 'running', started_at: now() });
          emit({
            kind: 'job.started',
            time: now(),
            runId,
            job: j.name,
            image: j.image, // masked by emit: a private registry's token may be in the name
            docker: j.docker.mode,
          });
          const run = new JobRun({
            client,
            runId,
            job: j,
            workspace: spec.workspace,
            env: baseEnv,
            secretEnv,
            secrets: secretValues,
            labels,
            extraLabels: { ...opts.labels },
            registry: opts.registry,
            artifactsDir: join(store.runDir(runId), 'artifacts'),
            artifactBudget: runArtifacts,
            graceMs: opts.graceMs ?? 10_000,
            emit: (e) => emit(e),
            log: (text) => {
              // A log file that cannot be written (a full disk) costs the file, not the run: the
              // runner would die with its containers left (red-team pass 23).
              try {
                store.appendLog(runId, j.name, text);
              } catch (err) {
                if (!logFailed.has(j.name)) {
                  logFailed.add(j.name);
                  emit({
                    kind: 'warning',
                    time: now(),
                    runId,
                    job: j.name,
                    message: `log file: ${errorMessage(err)}`,
                  });
                }
              }
            },
            onStep: (idx, fields) => store.updateStep(runId, j.name, idx, fields),
          });
          const done = run.run().then(
            (o) => {
              running.delete(j.name);
              finish(j.name, {
                job: j.name,
                status: o.status,
                exitCode: o.exitCode,
                durationMs: Date.now() - t0,
                reason: o.reason && maskSecrets(o.reason, secretValues),
              });
              wake();
            },
            (err: unknown) => {
              running.delete(j.name);
              finish(j.name, {
                job: j.name,
                status: 'failed',
                durationMs: Date.now() - t0,
                reason: errorMessage(err),
              });
              wake();
            },
          );
          running.set(j.name, { run, done });
          if (isCancelled()) run.cancel(forced);
        }
        if (progressed) continue;
        await new Promise<void>((r) => {
          wake = r;
          if (running.size === 0) r();
        });
        wake = () => undefined;
      }
    } finally {
      opts.signal?.removeEventListener('abort', onCancel);
      opts.forceSignal?.removeEventListener('abort', onForce);
      await Promise.allSettled([...running.values()].map((r) => r.done));
      // Only under a base of this user's alone (a refused base is someone else's; red-team pass 30).
      if (runTempBaseProblem() === undefined) rmSync(jobTempRoot(runId), { recursive: true, force: true });
    }
    const list = jobs.map(
      (j) => results.get(j.name) ?? { job: j.name, status: 'cancelled' as const, durationMs: 0 },
    );
    const anyBad = list.some((r) => r.status === 'failed' || r.status === 'timed_out');
    const runStatus: RunStatus = cancelled ? 'cancelled' : anyBad ? 'failed' : 'passed';
    const exitCode = cancelled ? 130 : anyBad ? 1 : 0;
    const durationMs = Date.now() - started;
    store.finishRun(runId, runStatus, exitCode, now());
    emit({
      kind: 'run.finished',
      time: now(),
      runId,
      status: runStatus,
      exitCode,
      durationMs,
      jobs: list.map((r) => ({
        job: r.job,
        status: r.status,
        exitCode: r.exitCode,
        durationMs: r.durationMs,
      })),
    });
    return { runId, status: runStatus, exitCode, jobs: list, storeDir };
  } finally {
    store.close();
    if (ownClient) client.close();
  }
}
