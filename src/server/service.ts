/**
 * The CI server's engine room: the queue (bounded concurrency, FIFO per project), checkout of the
 * pushed commit into a per-run workspace, the run itself through the runner, and the record of
 * everything it reports — jobs, steps, log lines, resource samples — in the server store, with a
 * live feed for the API's event stream.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { existsSync, lstatSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { BerthError, LABEL_JOB, LABEL_RUN, errorMessage, tenantOf } from '../common/index.js';
import { DockerClient, containers } from '../engine/index.js';
import { effectiveNeeds, loadRunSpec, objectName, reap, runPipeline } from '../runner/index.js';
import type { RunEvent, RunSpec } from '../runner/index.js';
import { ArtifactStore } from './artifacts.js';
import type { ArtifactStoreOptions } from './artifacts.js';
import { pickRunsToStart } from './schedule.js';
import type { Project, Run, RunStatus, ServerStore } from './store.js';

const exec = promisify(execFile);

export type ServerEvent =
  | { kind: 'run.queued'; run: Run }
  | { kind: 'run.updated'; run: Run }
  | { kind: 'runner'; runId: string; event: RunEvent; seq?: number }
  | { kind: 'sample'; runId: string; job: string; ts: number; cpuPercent: number; memBytes: number };

export interface ServiceOptions {
  store: ServerStore;
  dataDir: string;
  concurrency: number;
  perProject?: number;
  /** Extra labels on everything runs create (tests add their session label). */
  labels?: Record<string, string>;
  /** Seconds between resource samples of running jobs. */
  sampleSeconds?: number;
  /** What is kept of runs' artifacts (default: the newest 20 runs of each project, 1 GiB a run). */
  artifacts?: Partial<ArtifactStoreOptions>;
  log?: (line: string) => void;
}

export const DEFAULT_KEEP_ARTIFACT_RUNS = 20;
export const DEFAULT_MAX_RUN_ARTIFACT_BYTES = 2 ** 30;

interface Active {
  run: Run;
  abort: AbortController;
  force: AbortController;
  done: Promise<void>;
}

export class ServerService {
  readonly events = new EventEmitter();
  private readonly active = new Map<string, Active>();
  private ticking = false;
  private stopped = false;

  /** The artifacts of finished runs (`<data>/artifacts`). */
  readonly artifacts: ArtifactStore;

  constructor(readonly o: ServiceOptions) {
    this.events.setMaxListeners(0);
    this.artifacts = new ArtifactStore(join(o.dataDir, 'artifacts'), {
      keepRuns: o.artifacts?.keepRuns ?? DEFAULT_KEEP_ARTIFACT_RUNS,
      maxRunBytes: o.artifacts?.maxRunBytes ?? DEFAULT_MAX_RUN_ARTIFACT_BYTES,
    });
  }

  private emit(e: ServerEvent): void {
    this.events.emit('event', e);
  }

  /** At start: runs that were running when the server died are interrupted and their leftovers reaped. */
  async recover(): Promise<string[]> {
    const ids = await this.o.store.interruptRunning();
    // Workspaces of runs the last server did not finish (nothing runs yet at start: all of them),
    // and the runner's copies of those runs (their logs are in the store; their artifacts, of a
    // run cut short, are not kept).
    rmSync(join(this.o.dataDir, 'workspaces'), { recursive: true, force: true });
    rmSync(join(this.o.dataDir, 'runner', 'runs'), { recursive: true, force: true });
    if (ids.length) {
      const r = await this.reapLeftovers();
      this.o.log?.(`marked ${ids.length} interrupted run(s); reaped ${r?.containers ?? 0} container(s)`);
    }
    return ids;
  }

  /**
   * Leftovers of runs whose runner died (their owner process is gone), with this server's labels:
   * at start, and then every `everyMs` (red-team pass 20: the reap at start missed a dead server
   * whose process its parent had not reaped yet, and nothing looked again).
   */
  startReaping(everyMs = 10 * 60_000): void {
    this.reaper = setInterval(() => void this.reapLeftovers(), everyMs);
    this.reaper.unref();
  }
  private reaper: NodeJS.Timeout | undefined;

  private async reapLeftovers(): Promise<{ containers: number } | undefined> {
    using client = new DockerClient();
    const labelFilter = Object.entries(this.o.labels ?? {}).map(([k, v]) => `${k}=${v}`);
    return await reap(client, { labelFilter }).catch((err: unknown) => {
      this.o.log?.(`reaping leftovers failed: ${errorMessage(err)}`);
      return undefined;
    });
  }

  async enqueue(r: Parameters<ServerStore['enqueue']>[0]): Promise<Run> {
    const run = await this.o.store.enqueue(r);
    this.emit({ kind: 'run.queued', run });
    void this.tick();
    return run;
  }

  /** Cancels a queued run, or stops a running one (graceful, like Ctrl-C). */
  async cancel(runId: string): Promise<Run> {
    const run = await this.o.store.run(runId);
    if (!run) throw new BerthError('RUN_NOT_FOUND', `no run ${runId}`);
    if (run.status === 'queued') {
      await this.o.store.markFinished(runId, 'cancelled', null, 'cancelled while queued');
    } else if (run.status === 'running') {
      this.active.get(runId)?.abort.abort();
      await this.active.get(runId)?.done;
    }
    const now = await this.o.store.run(runId);
    if (now) this.emit({ kind: 'run.updated', run: now });
    return now ?? run;
  }

  async rerun(runId: string): Promise<Run> {
    const run = await this.o.store.run(runId);
    if (!run) throw new BerthError('RUN_NOT_FOUND', `no run ${runId}`);
    return this.enqueue({
      projectId: run.projectId,
      trigger: 'rerun',
      ref: run.ref,
      branch: run.branch,
      sha: run.sha,
      message: run.message,
      rerunOf: run.id,
    });
  }

  /** Starts what the limits allow. */
  async tick(): Promise<void> {
    if (this.ticking || this.stopped) return;
    this.ticking = true;
    try {
      const queued = await this.o.store.queued();
      const running = [...this.active.values()].map((a) => ({ id: a.run.id, project: a.run.projectId }));
      const pick = pickRunsToStart(
        queued.map((r) => ({ id: r.id, project: r.projectId, seq: r.seq })),
        running,
        { concurrency: this.o.concurrency, perProject: this.o.perProject ?? 1 },
      );
      for (const p of pick) {
        const run = queued.find((r) => r.id === p.id);
        if (run && (await this.o.store.markStarted(run.id)))
          this.launch({ ...run, status: 'running', startedAt: Date.now() });
      }
    } finally {
      this.ticking = false;
    }
  }

  private launch(run: Run): void {
    const abort = new AbortController();
    const force = new AbortController();
    const done = this.execute(run, abort.signal, force.signal)
      .catch((err: unknown) => this.o.log?.(`run ${run.id}: ${errorMessage(err)}`))
      .finally(() => {
        this.active.delete(run.id);
        void this.tick();
      });
    this.active.set(run.id, { run, abort, force, done });
    this.emit({ kind: 'run.updated', run });
  }

  private async execute(run: Run, signal: AbortSignal, forceSignal: AbortSignal): Promise<void> {
    const project = await this.o.store.projects().then((ps) => ps.find((p) => p.id === run.projectId));
    const ws = join(this.o.dataDir, 'workspaces', run.id);
    let status: Exclude<RunStatus, 'queued' | 'running'> = 'failed';
    let exitCode: number | null = null;
    let error: string | undefined;
    const sampler = new Sampler(this, run.id, (this.o.sampleSeconds ?? 2) * 1000);
    try {
      if (!project) throw new BerthError('RUN_FAILED', `project ${run.projectId} no longer exists`);
      await checkout(project.repoUrl, ws, run.sha ?? run.branch ?? project.branch ?? undefined);
      // The pipeline as committed: a link would be followed out of the workspace (red-team pass
      // 21: berth.yml -> /dev/zero grew the server to 17 GB; other targets echoed in errors).
      if (lstatSync(join(ws, 'berth.yml'), { throwIfNoEntry: false })?.isSymbolicLink())
        throw new BerthError(
          'PIPELINE_INVALID',
          'berth.yml is a symbolic link: a server run reads the file committed',
        );
      const spec = confine(
        loadRunSpec(join(ws, 'berth.yml'), {
          refuseSecretFiles: `a server run reads no file a pipeline names (it could be any file on the server); give the project the secret from the server's environment instead: berth project grant ${project.name} --pass-env <NAME>`,
        }),
        project,
      );
      // The job graph is known before anything runs: record it, so the dashboard draws the DAG
      // (every job queued, with what it waits for) from the first moment.
      const needs = effectiveNeeds(spec.jobs);
      this.needs.set(run.id, needs);
      for (const [name, deps] of needs)
        await this.o.store.upsertJob({
          runId: run.id,
          name,
          status: 'queued',
          needs: deps,
          startedAt: null,
          finishedAt: null,
          exitCode: null,
        });
      const outcome = await runPipeline({
        spec,
        // The checkout is detached: the branch is the one the push or the manual run named.
        branch: run.branch ?? undefined,
        storeDir: join(this.o.dataDir, 'runner'),
        labels: this.o.labels,
        signal,
        forceSignal,
        reapFirst: false,
        // The runner's copy is bounded by what the server keeps (red-team pass 27: 1 GiB a job,
        // while the run lasts, whatever --artifacts-max-mib said).
        artifactsMaxBytes: this.artifacts.opts.keepRuns > 0 ? this.artifacts.opts.maxRunBytes : 0,
        // Only what the project was granted of the server's environment (never the server's API
        // token, nor other projects' secrets, unless an admin named them).
        env: Object.fromEntries(
          project.grants.env.flatMap((k) => (process.env[k] === undefined ? [] : [[k, process.env[k]]])),
        ),
        onEvent: (e) => {
          void this.record(run.id, e);
          if (e.kind === 'run.started') sampler.runnerId = e.runId;
          if (e.kind === 'job.started') sampler.start(e.job);
          if (e.kind === 'job.finished') sampler.stop(e.job);
        },
      });
      exitCode = outcome.exitCode;
      status = signal.aborted ? 'cancelled' : outcome.exitCode === 0 ? 'succeeded' : 'failed';
    } catch (err) {
      error = errorMessage(err);
      status = signal.aborted ? 'cancelled' : 'failed';
      await this.o.store.appendLogs(run.id, [
        { job: '(server)', step: null, stream: 'system', text: `berth: ${error}` },
      ]);
    } finally {
      this.needs.delete(run.id);
      this.logUse.delete(run.id);
      // The runner's own copy of the run (its log files, the jobs' artifacts): the server keeps the
      // log in its store and the artifacts in its own, both bounded; the rest goes (a pushed job
      // could otherwise fill the disk, red-team pass 21).
      if (sampler.runnerId) {
        const runnerCopy = join(this.o.dataDir, 'runner', 'runs', sampler.runnerId);
        await this.keepArtifacts(run, join(runnerCopy, 'artifacts'));
        rmSync(runnerCopy, { recursive: true, force: true });
      }
      sampler.stopAll();
      await this.o.store.markFinished(run.id, status, exitCode, error);
      rmSync(ws, { recursive: true, force: true });
      const now = await this.o.store.run(run.id);
      if (now) this.emit({ kind: 'run.updated', run: now });
    }
  }

  /**
   * Moves a finished run's artifacts into the server's store (within the run's budget, said in its
   * log) and removes those of the project's runs older than the newest `keepRuns`.
   */
  private async keepArtifacts(run: Run, from: string): Promise<void> {
    const { keepRuns, maxRunBytes } = this.artifacts.opts;
    const say = (text: string) =>
      this.o.store.appendLogs(run.id, [{ job: '(server)', step: null, stream: 'system', text }]);
    try {
      if (keepRuns > 0) {
        const kept = await this.artifacts.ingest(run.id, from);
        if (kept.files > 0 || kept.skipped > 0)
          await say(
            `artifacts: ${kept.files} file(s), ${(kept.bytes / 2 ** 20).toFixed(1)} MiB kept` +
              (kept.skipped > 0
                ? `; ${kept.skipped} file(s) not kept (over the run's ${(maxRunBytes / 2 ** 20).toFixed(0)} MiB)`
                : ''),
          );
      }
      const newest =
        keepRuns > 0 ? await this.o.store.runs({ projectId: run.projectId, limit: keepRuns }) : [];
      const keep = new Set(newest.map((r) => r.id));
      await this.artifacts.prune(
        keep,
        async (id) => (await this.o.store.run(id))?.projectId === run.projectId,
      );
    } catch (err) {
      this.o.log?.(`run ${run.id}: keeping artifacts failed: ${errorMessage(err)}`);
      await say(`berth: artifacts not kept: ${errorMessage(err)}`).catch(() => undefined);
    }
  }

  private pending = Promise.resolve();
  /** Per running run: each job's effective dependencies (from the pipeline file). */
  private readonly needs = new Map<string, Map<string, string[]>>();

  /** Records runner events in order (appends are sequenced per run). */
  private record(runId: string, e: RunEvent): Promise<void> {
    this.pending = this.pending
      .then(async () => {
        const t = Date.parse(e.time);
        switch (e.kind) {
          case 'job.queued':
            await this.o.store.upsertJob({
              runId,
              name: e.job,
              status: 'queued',
              needs: this.needs.get(runId)?.get(e.job) ?? [],
              startedAt: null,
              finishedAt: null,
              exitCode: null,
            });
            break;
          case 'job.started':
            await this.o.store.upsertJob({
              runId,
              name: e.job,
              status: 'running',
              needs: this.needs.get(runId)?.get(e.job) ?? [],
              startedAt: t,
              finishedAt: null,
              exitCode: null,
            });
            break;
          case 'job.finished':
            await this.o.store.upsertJob({
              runId,
              name: e.job,
              status: e.status,
              needs: this.needs.get(runId)?.get(e.job) ?? [],
              startedAt: null,
              finishedAt: t,
              exitCode: e.exitCode ?? null,
            });
            // Why a job failed before or around its steps (an engine error, a missing image…).
            if (e.reason)
              await this.o.store.appendLogs(runId, [
                { job: e.job, step: null, stream: 'system', text: `berth: ${e.status}: ${e.reason}`, ts: t },
              ]);
            break;
          case 'step.started':
            await this.o.store.upsertStep({
              runId,
              job: e.job,
              idx: e.step,
              name: e.name,
              status: 'running',
              startedAt: t,
              finishedAt: null,
              exitCode: null,
            });
            break;
          case 'step.finished':
            await this.o.store.upsertStep({
              runId,
              job: e.job,
              idx: e.step,
              name: e.name,
              status: e.status,
              startedAt: null,
              finishedAt: t,
              exitCode: e.exitCode ?? null,
            });
            break;
          case 'log': {
            // A run's log is bounded (red-team pass 20: one run's 200k lines made a 148 MB store):
            // past the bound, one line says so and the rest is not kept.
            const kept = this.logBudget(runId, Buffer.byteLength(e.line));
            if (kept === 'drop') return;
            const lines = [{ job: e.job, step: e.step ?? null, stream: e.stream, text: e.line, ts: t }];
            if (kept === 'last')
              lines.push({
                job: e.job,
                step: e.step ?? null,
                stream: 'system',
                text: `berth: the run's log reached ${MAX_RUN_LOG_LINES} lines or ${MAX_RUN_LOG_BYTES / 1024 / 1024} MiB; the rest of it is not kept`,
                ts: t,
              });
            const stored = await this.o.store.appendLogs(runId, lines);
            for (const [i, line] of stored.entries()) {
              const event: RunEvent = i === 0 ? e : { ...e, stream: 'system', line: line.text };
              this.emit({ kind: 'runner', runId, event, seq: line.seq });
            }
            return;
          }
          case 'warning':
            // Shown with the log, where the run's reader looks (a host-mode job's warning among them).
            await this.o.store.appendLogs(runId, [
              {
                job: e.job ?? '(run)',
                step: null,
                stream: 'system',
                text: `berth: warning: ${e.message}`,
                ts: t,
              },
            ]);
            break;
          default:
            break;
        }
        this.emit({ kind: 'runner', runId, event: e });
      })
      .catch((err: unknown) => this.o.log?.(`recording ${e.kind} for ${runId}: ${errorMessage(err)}`));
    return this.pending;
  }

  /** Lines and bytes of each run's log kept so far. */
  private readonly logUse = new Map<string, { lines: number; bytes: number }>();

  /** Whether a run's next log line is kept ('keep'), is the last kept ('last'), or goes ('drop'). */
  private logBudget(runId: string, length: number): 'keep' | 'last' | 'drop' {
    const u = this.logUse.get(runId) ?? { lines: 0, bytes: 0 };
    this.logUse.set(runId, u);
    if (u.lines >= MAX_RUN_LOG_LINES || u.bytes >= MAX_RUN_LOG_BYTES) return 'drop';
    u.lines++;
    u.bytes += length;
    return u.lines >= MAX_RUN_LOG_LINES || u.bytes >= MAX_RUN_LOG_BYTES ? 'last' : 'keep';
  }

  recordSample(runId: string, job: string, ts: number, cpuPercent: number, memBytes: number): void {
    void this.o.store.addSample(runId, job, { ts, cpuPercent, memBytes }).catch(() => undefined);
    this.emit({ kind: 'sample', runId, job, ts, cpuPercent, memBytes });
  }

  private readonly polled = new Map<string, string>();
  private poller: NodeJS.Timeout | undefined;

  /** Polls the branch of every project that asks for it, and queues a run when its head moves. */
  startPolling(everyMs = 5_000): void {
    this.poller = setInterval(() => void this.pollOnce(), everyMs);
    this.poller.unref();
  }

  async pollOnce(now = Date.now()): Promise<number> {
    let queued = 0;
    for (const p of await this.o.store.projects()) {
      if (!p.pollSeconds || !p.branch) continue;
      const last = this.polled.get(`${p.id}@at`);
      if (last && now - Number(last) < p.pollSeconds * 1000) continue;
      this.polled.set(`${p.id}@at`, String(now));
      try {
        const { stdout } = await exec('git', ['ls-remote', p.repoUrl, `refs/heads/${p.branch}`], {
          timeout: 60_000,
        });
        const sha = stdout.split(/\s/)[0] ?? '';
        if (!/^[0-9a-f]{40}$/.test(sha)) continue;
        const seen =
          this.polled.get(p.id) ??
          (await this.o.store.runs({ projectId: p.id, limit: 1 }))[0]?.sha ??
          undefined;
        this.polled.set(p.id, sha);
        if (seen !== sha) {
          await this.enqueue({
            projectId: p.id,
            trigger: 'poll',
            ref: `refs/heads/${p.branch}`,
            branch: p.branch,
            sha,
          });
          queued++;
        }
      } catch (err) {
        this.o.log?.(`polling ${p.name}: ${errorMessage(err)}`);
      }
    }
    return queued;
  }

  running(): string[] {
    return [...this.active.keys()];
  }

  /** Stops accepting work; running runs are stopped gracefully (their leftovers removed). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.poller);
    clearInterval(this.reaper);
    for (const a of this.active.values()) a.abort.abort();
    await Promise.all([...this.active.values()].map((a) => a.done));
  }
}

/** Samples CPU and memory of running job containers from the engine's stats. */
class Sampler {
  runnerId: string | undefined;
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly client = new DockerClient();

  constructor(
    private readonly svc: ServerService,
    private readonly runId: string,
    private readonly everyMs: number,
  ) {}

  /** Jobs whose stats read is still under way. */
  private readonly reading = new Set<string>();

  start(job: string): void {
    // One read at a time per job: on a busy engine a read can outlast the interval, and two
    // answering together made two samples of one millisecond (seen in CI).
    const t = setInterval(() => {
      if (this.reading.has(job)) return;
      this.reading.add(job);
      void this.sample(job).finally(() => this.reading.delete(job));
    }, this.everyMs);
    this.timers.set(job, t);
  }

  stop(job: string): void {
    clearInterval(this.timers.get(job));
    this.timers.delete(job);
  }

  stopAll(): void {
    for (const t of this.timers.values()) clearInterval(t);
    this.timers.clear();
    this.client.close();
  }

  private async sample(job: string): Promise<void> {
    if (!this.runnerId) return;
    try {
      const list = await containers(this.client).list({
        all: false,
        filters: { label: [`${LABEL_RUN}=${this.runnerId}`, `${LABEL_JOB}=${job}`, 'io.berth.role=job'] },
      });
      // The job container by its own name, not just its labels: a tenant's build step container
      // may carry the same labels (its Dockerfile's) and no tenant label.
      const own = `/${objectName(this.runnerId, job)}`;
      const c = list.find((x) => x.Names.includes(own) && tenantOf(x.Labels) === undefined);
      if (!c) return;
      const s = await this.client.json<StatsJson>('GET', `/containers/${c.Id}/stats`, {
        query: { stream: false },
      });
      // A container that ended while its stats were read reports no memory: not a sample.
      const mem = s.memory_stats?.usage;
      if (mem === undefined || mem <= 0) return;
      this.svc.recordSample(this.runId, job, Date.now(), cpuPercent(s), mem);
    } catch {
      /* the job may have just ended */
    }
  }
}

interface StatsJson {
  cpu_stats?: { cpu_usage?: { total_usage?: number }; system_cpu_usage?: number; online_cpus?: number };
  precpu_stats?: { cpu_usage?: { total_usage?: number }; system_cpu_usage?: number };
  memory_stats?: { usage?: number };
}

/** CPU percent as `docker stats` computes it. Pure. */
export function cpuPercent(s: StatsJson): number {
  const cpu = (s.cpu_stats?.cpu_usage?.total_usage ?? 0) - (s.precpu_stats?.cpu_usage?.total_usage ?? 0);
  const sys = (s.cpu_stats?.system_cpu_usage ?? 0) - (s.precpu_stats?.system_cpu_usage ?? 0);
  const n = s.cpu_stats?.online_cpus ?? 1;
  return sys > 0 && cpu > 0 ? (cpu / sys) * n * 100 : 0;
}

/** Clones the project and checks out the commit (or branch) into a fresh workspace. */
export async function checkout(repoUrl: string, dir: string, rev: string | undefined): Promise<void> {
  if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  try {
    // Neither the URL nor the revision is ever read as an option. `--no-local`: a clone of a local
    // path would hardlink the source's object files into the workspace, where a job (root in its
    // container) could rewrite them, and with them what every later clone checks out, another
    // project's included (red-team pass 34). Through git's transport the objects are the clone's own.
    await exec('git', ['clone', '--quiet', '--no-local', '--no-checkout', '--', repoUrl, dir], {
      timeout: 300_000,
    });
    const { stdout } = await exec(
      'git',
      ['-C', dir, 'rev-parse', '--verify', '--end-of-options', `${rev ?? 'HEAD'}^{commit}`],
      { timeout: 120_000 },
    );
    await exec('git', ['-C', dir, 'checkout', '--quiet', '--detach', stdout.trim()], { timeout: 120_000 });
  } catch (err) {
    throw new BerthError(
      'RUN_FAILED',
      `cannot check out ${rev ?? 'HEAD'} of ${repoUrl}: ${errorMessage(err).split('\n').slice(-2).join(' ')}`,
    );
  }
}

/** A server run's job without a `timeout` of its own stops after this long. */
export const SERVER_JOB_TIMEOUT_MS = 60 * 60_000;

/** The most of one run's log the server keeps (lines, bytes of UTF-8). */
export const MAX_RUN_LOG_LINES = 200_000;
export const MAX_RUN_LOG_BYTES = 64 * 1024 * 1024;

/** Modes every project's jobs may use; the others are granted per project (ProjectGrants). */
const ALWAYS_ALLOWED: readonly string[] = ['guard', 'none'];

/**
 * A pushed pipeline, held to what its project was granted (red-team pass 20): docker modes beyond
 * guard and none refused unless granted, and persistent tenants made the project's own
 * (`project/<name>/<tenant>`: another project's pipeline naming the same tenant gets its own,
 * and cannot see, exec into or remove the first one's deployment).
 */
export function confine(spec: RunSpec, project: Pick<Project, 'name' | 'grants'>): RunSpec {
  // A job without a timeout of its own gets the server's (a pushed job could run, and write,
  // for ever).
  spec = {
    ...spec,
    jobs: spec.jobs.map((j) => (j.timeoutMs === undefined ? { ...j, timeoutMs: SERVER_JOB_TIMEOUT_MS } : j)),
  };
  for (const j of spec.jobs) {
    const mode = j.docker.mode;
    if (!ALWAYS_ALLOWED.includes(mode) && !(project.grants.docker as readonly string[]).includes(mode))
      throw new BerthError(
        'PIPELINE_INVALID',
        `${spec.file}: jobs.${j.name}.docker: mode ${mode} is not granted to project ${project.name} (${
          mode === 'host'
            ? "the host's Docker socket is root on the server"
            : 'a nested daemon runs with near-full capabilities'
        }, and the pipeline is whatever was pushed)`,
        { hint: `an admin can grant it: berth project grant ${project.name} --allow-docker ${mode}` },
      );
  }
  return {
    ...spec,
    jobs: spec.jobs.map((j) => ({
      ...j,
      docker: {
        ...j.docker,
        ...(j.docker.tenant === undefined
          ? {}
          : { tenant: `${PROJECT_TENANT_PREFIX}${project.name}/${j.docker.tenant}` }),
        // A dind layer cache is the project's own too (another project's jobs could fill it with
        // images under the names this one's builds start from).
        ...(j.docker.cache === undefined ? {} : { cache: projectCacheKey(project.name, j.docker.cache) }),
      },
    })),
  };
}

/** Where a server run's persistent tenants live: `project/<project>/<tenant as written>`. */
export const PROJECT_TENANT_PREFIX = 'project/';

/**
 * A project's dind cache key: one per (project, cache) pair. Both names may hold `-`, so joining
 * them alone made (`a`, `b-x`) and (`a-b`, `x`) share one cache (red-team pass 26); a hash of the
 * pair, at a fixed place, keeps them apart, and the names follow for people reading `berth dind ls`.
 */
export function projectCacheKey(project: string, cache: string): string {
  const pair = createHash('sha256').update(`${project}\0${cache}`).digest('hex').slice(0, 16);
  return `project-${pair}-${project}-${cache}`.slice(0, 128);
}
