/**
 * One job's lifecycle: its network, its services (readiness polled), its Docker access, the
 * long-lived job container with the workspace at /workspace, steps run in order via exec, artifacts
 * copied out, and cleanup of everything whatever happens.
 */
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join, normalize, posix, sep } from 'node:path';
import { Writable } from 'node:stream';
import { LineSplitter, MAX_LINE } from './lines.js';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import {
  LABEL_JOB,
  LABEL_ROLE,
  LABEL_TENANT,
  LOCAL_IMAGE_PREFIX,
  errorMessage,
  sleep,
} from '../common/index.js';
import {
  containers,
  exec,
  followProgress,
  images,
  isConflict,
  isNotFound,
  networks,
} from '../engine/index.js';
import type { DockerClient } from '../engine/index.js';
import { tagWriterOf } from '../guard/index.js';
import { dockerAccess } from './access.js';
import type { DockerAccess } from './access.js';
import type { JobStatus, RunEvent, StepStatus } from './events.js';
import { now } from './events.js';
import { jobTempRoot, objectName } from './paths.js';
import type { JobSpec } from './spec.js';
import { maskSecrets } from './spec.js';

export interface JobContext {
  client: DockerClient;
  runId: string;
  job: JobSpec;
  workspace: string;
  /** Environment for every step (pipeline env, vars, secrets, CI variables). */
  env: Record<string, string>;
  /** The secrets by name, set again over the job's env: a secret wins over every env (docs/pipeline.md). */
  secretEnv: Record<string, string>;
  /** The secrets' values, masked in every log line. */
  secrets: string[];
  labels: Record<string, string>;
  extraLabels: Record<string, string>;
  registry?: string;
  artifactsDir: string;
  /** What the whole run may still save as artifacts (shared by its jobs), when it is bounded. */
  artifactBudget?: { left: number } | undefined;
  graceMs: number;
  emit(e: RunEvent): void;
  /** Full (masked) log text for the job's log file. */
  log(text: string): void;
  onStep(
    idx: number,
    fields: {
      status: StepStatus;
      exit_code?: number | null;
      started_at?: string;
      finished_at?: string;
      duration_ms?: number;
    },
  ): void;
}

export interface JobOutcome {
  status: JobStatus;
  exitCode?: number;
  reason?: string;
}

/** Keeps the job container alive; steps run beside it via exec. */
const KEEPER = ['sh', '-c', 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'];
const PIDFILE = '/tmp/.berth-step.pid';
/** The most of a job's artifacts saved (bytes, as their archive states them). */
export const MAX_ARTIFACT_BYTES = 2 ** 30;
/** The most files and folders a job's artifacts hold (an empty one still costs an inode). */
export const MAX_ARTIFACT_ENTRIES = 10_000;
/** What an artifact file or folder costs at least against the byte bounds (a block). */
const ENTRY_COST = 4096;
const STEP_WRAPPER = `mkdir -p /tmp && echo $$ > ${PIDFILE} && exec sh -e -c "$1"`;

/** A running job that can be stopped from outside (Ctrl-C) or by its timeout. */
export class JobRun {
  private stopping: 'cancel' | 'timeout' | undefined;
  private containerId: string | undefined;
  private killTimer: NodeJS.Timeout | undefined;
  private readonly killed: Promise<void>;
  private resolveKilled!: () => void;

  constructor(private readonly ctx: JobContext) {
    this.killed = new Promise((r) => (this.resolveKilled = r));
  }

  /** Graceful stop: SIGTERM to the running step's process group, then SIGKILL after the grace. */
  cancel(force = false): void {
    this.stopping ??= 'cancel';
    if (force) {
      void this.kill();
      return;
    }
    void this.signalStep('TERM');
    this.killTimer ??= setTimeout(() => void this.kill(), this.ctx.graceMs);
  }

  private async signalStep(sig: string): Promise<void> {
    const id = this.containerId;
    if (!id) return;
    try {
      await exec(this.ctx.client).run(id, [
        'sh',
        '-c',
        `p=$(cat ${PIDFILE} 2>/dev/null) && kill -${sig} -- -$p 2>/dev/null || kill -${sig} $p 2>/dev/null; true`,
      ]);
    } catch {
      // the container may be gone already
    }
  }

  private async kill(): Promise<void> {
    clearTimeout(this.killTimer);
    const id = this.containerId;
    this.resolveKilled();
    if (!id) return;
    try {
      await removeContainerSettled(this.ctx.client, id);
    } catch {
      // removed again in cleanup
    }
  }

  async run(): Promise<JobOutcome> {
    const { ctx } = this;
    const { client, job, runId } = ctx;
    const labels = { ...ctx.labels, [LABEL_JOB]: job.name };
    const netName = objectName(runId, job.name);
    const jobDir = join(jobTempRoot(runId), job.name.replace(/[^a-zA-Z0-9_.-]/g, '-'));
    const cleanups: (() => Promise<unknown>)[] = [];
    const sys = (line: string) => this.logLine(undefined, 'system', line);
    let timer: NodeJS.Timeout | undefined;
    if (job.timeoutMs !== undefined) {
      timer = setTimeout(() => {
        this.stopping ??= 'timeout';
        sys(`timeout of ${job.timeoutMs}ms reached: killing the job`);
        void this.kill();
      }, job.timeoutMs);
    }
    try {
      mkdirSync(jobDir, { recursive: true, mode: 0o700 });
      cleanups.push(() => Promise.resolve(rmSync(jobDir, { recursive: true, force: true })));
      // Each image is run by the ID read here: a name is not looked up again at the create.
      const imageIds = new Map<string, string>();
      for (const img of new Set([job.image, ...job.services.map((s) => s.image)])) {
        const local = await images(client).find(img);
        if (local) {
          // A name a guard's tenant set to an image of its own is not the registry's image.
          const squatted = await squatReason(client, img, local.Id);
          if (squatted !== undefined) return { status: 'failed', reason: squatted };
          imageIds.set(img, local.Id);
          continue;
        }
        if (img.startsWith(LOCAL_IMAGE_PREFIX)) {
          return {
            status: 'failed',
            reason: `image ${img} is not on the engine; build it with \`berth images build-local\``,
          };
        }
        sys(`pulling ${img}`);
        try {
          await pullImage(client, img);
        } catch (err) {
          return { status: 'failed', reason: `cannot pull image ${img}: ${errorMessage(err)}` };
        }
        const pulled = await images(client).find(img);
        if (pulled) {
          // A tenant may have set the name between the pull and this look.
          const squatted = await squatReason(client, img, pulled.Id);
          if (squatted !== undefined) return { status: 'failed', reason: squatted };
          imageIds.set(img, pulled.Id);
        }
        // Images the runner pulled for this job go with it (kept if something still uses them).
        cleanups.push(() =>
          images(client)
            .remove(img)
            .catch(() => false),
        );
      }
      await networks(client).create({ Name: netName, Labels: { ...labels, [LABEL_ROLE]: 'network' } });
      cleanups.push(() => removeNetworkSettled(client, netName));
      const access: DockerAccess = await dockerAccess(job.docker.mode)({
        client,
        runId,
        job: job.name,
        spec: job.docker,
        workspace: ctx.workspace,
        jobDir,
        network: netName,
        labels,
        extraLabels: ctx.extraLabels,
        registry: ctx.registry,
        warn: (message) => ctx.emit({ kind: 'warning', time: now(), runId, job: job.name, message }),
        log: sys,
      });
      cleanups.push(() => access.close());
      if (this.stopped()) return this.stoppedOutcome();
      for (const svc of job.services) {
        const name = objectName(runId, job.name, svc.name);
        cleanups.push(() => containers(client).remove(name, { force: true }));
        await containers(client).create(
          {
            Image: imageIds.get(svc.image) ?? svc.image,
            Cmd: svc.command,
            Env: Object.entries(svc.env).map(([k, v]) => `${k}=${v}`),
            Labels: { ...labels, [LABEL_TENANT]: '', [LABEL_ROLE]: 'service', 'io.berth.service': svc.name },
            HostConfig: { NetworkMode: netName, Init: true },
            NetworkingConfig: { EndpointsConfig: { [netName]: { Aliases: [svc.name] } } },
          },
          name,
        );
        await containers(client).start(name);
        sys(`service ${svc.name} started (${svc.image})`);
      }
      for (const svc of job.services) {
        if (!svc.ready) continue;
        const ok = await this.waitReady(
          objectName(runId, job.name, svc.name),
          svc.ready,
          svc.readyTimeoutMs,
          svc.readyIntervalMs,
        );
        if (this.stopped()) return this.stoppedOutcome();
        if (!ok)
          return {
            status: 'failed',
            reason: `service ${svc.name} not ready within ${svc.readyTimeoutMs}ms (ready: ${svc.ready})`,
          };
        sys(`service ${svc.name} ready`);
      }
      const jobName = objectName(runId, job.name);
      cleanups.push(() => removeContainerSettled(client, jobName));
      const env = {
        // docker-compose names a project after its folder, /workspace for every job: two jobs using
        // compose at once on one engine would take each other's networks, volumes and containers
        // (red-team pass 25). The pipeline's env or the job's may set another.
        ...(job.docker.mode === 'none' ? {} : { COMPOSE_PROJECT_NAME: composeProject(runId, job.name) }),
        ...ctx.env,
        BERTH_JOB: job.name,
        BERTH_DOCKER_MODE: job.docker.mode,
        ...job.env,
        ...ctx.secretEnv,
        ...access.env,
      };
      const created = await containers(client).create(
        {
          Image: imageIds.get(job.image) ?? job.image,
          Entrypoint: [],
          Cmd: KEEPER,
          Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
          WorkingDir: job.workdir,
          // No tenant: an image labelled with one would otherwise make the job container look like
          // that tenant's (red-team pass 23: the reaper then skipped it, and `reap --tenant` took it).
          Labels: { ...labels, [LABEL_TENANT]: '', [LABEL_ROLE]: 'job' },
          Hostname: job.name.slice(0, 63).replace(/[^a-zA-Z0-9-]/g, '-'),
          HostConfig: {
            NetworkMode: netName,
            Init: true,
            Binds: [`${ctx.workspace}:/workspace`, ...access.binds],
          },
        },
        jobName,
      );
      this.containerId = created.Id;
      if (this.stopped()) return this.stoppedOutcome();
      await containers(client).start(created.Id);
      let failed: JobOutcome | undefined;
      for (let i = 0; i < job.steps.length; i++) {
        const step = job.steps[i];
        if (!step) continue;
        if (failed || this.stopped()) {
          const st: StepStatus = this.stopped() ? 'cancelled' : 'skipped';
          ctx.onStep(i, { status: st });
          ctx.emit({
            kind: 'step.finished',
            time: now(),
            runId,
            job: job.name,
            step: i,
            name: step.name,
            status: st,
            durationMs: 0,
          });
          continue;
        }
        const t0 = Date.now();
        const startedAt = now();
        ctx.emit({ kind: 'step.started', time: startedAt, runId, job: job.name, step: i, name: step.name });
        ctx.log(`--- step ${i + 1}: ${maskSecrets(step.name, ctx.secrets)}\n`);
        ctx.onStep(i, { status: 'running', started_at: startedAt });
        let exitCode: number | undefined;
        let errorText: string | undefined;
        try {
          const r = await exec(client).run(created.Id, ['sh', '-c', STEP_WRAPPER, 'step', step.run], {
            env: Object.entries(step.env).map(([k, v]) => `${k}=${v}`),
            workdir: job.workdir,
            stdout: this.lineSink(i, 'stdout'),
            stderr: this.lineSink(i, 'stderr'),
          });
          exitCode = r.exitCode;
        } catch (err) {
          errorText = errorMessage(err);
        }
        const status: StepStatus =
          this.stopped() === 'timeout'
            ? 'timed_out'
            : this.stopped()
              ? 'cancelled'
              : exitCode === 0
                ? 'passed'
                : 'failed';
        const durationMs = Date.now() - t0;
        ctx.onStep(i, { status, exit_code: exitCode ?? null, finished_at: now(), duration_ms: durationMs });
        ctx.emit({
          kind: 'step.finished',
          time: now(),
          runId,
          job: job.name,
          step: i,
          name: step.name,
          status,
          exitCode,
          durationMs,
        });
        if (status === 'failed') {
          failed = {
            status: 'failed',
            exitCode,
            reason: errorText
              ? `step ${i + 1} (${step.name}): ${errorText}`
              : `step ${i + 1} (${step.name}) exited ${exitCode}`,
          };
        }
      }
      if (this.stopped()) return this.stoppedOutcome();
      if (job.artifacts.length > 0) await this.collectArtifacts(created.Id);
      return failed ?? { status: 'passed', exitCode: 0 };
    } catch (err) {
      if (this.stopped()) return this.stoppedOutcome();
      return { status: 'failed', reason: errorMessage(err) };
    } finally {
      clearTimeout(timer);
      clearTimeout(this.killTimer);
      this.resolveKilled();
      for (const c of cleanups.reverse()) {
        try {
          await c();
        } catch (err) {
          if (!isNotFound(err))
            ctx.emit({
              kind: 'warning',
              time: now(),
              runId,
              job: job.name,
              message: `cleanup: ${errorMessage(err)}`,
            });
        }
      }
    }
  }

  /** Why the job is stopping (set from timers and signal handlers, so read through a call). */
  private stopped(): 'cancel' | 'timeout' | undefined {
    return this.stopping;
  }

  private stoppedOutcome(): JobOutcome {
    return this.stopped() === 'timeout'
      ? { status: 'timed_out', reason: `timed out after ${this.ctx.job.timeoutMs}ms` }
      : { status: 'cancelled', reason: 'interrupted' };
  }

  private async waitReady(
    container: string,
    cmd: string,
    timeoutMs: number,
    intervalMs: number,
  ): Promise<boolean> {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until && !this.stopped()) {
      try {
        const r = await exec(this.ctx.client).run(container, ['sh', '-c', cmd]);
        if (r.exitCode === 0) return true;
      } catch {
        // not running yet
      }
      await Promise.race([sleep(intervalMs), this.killed]);
    }
    return false;
  }

  private logLine(step: number | undefined, stream: 'stdout' | 'stderr' | 'system', raw: string): void {
    const line = maskSecrets(raw, this.ctx.secrets);
    this.ctx.log(`${stream === 'stderr' ? '! ' : stream === 'system' ? '# ' : ''}${line}\n`);
    this.ctx.emit({
      kind: 'log',
      time: now(),
      runId: this.ctx.runId,
      job: this.ctx.job.name,
      step,
      stream,
      line,
    });
  }

  /** A writable that splits output into lines and reports each (masked). */
  private lineSink(step: number, stream: 'stdout' | 'stderr'): Writable {
    const secrets = this.ctx.secrets;
    const lines = new LineSplitter(
      (line) => this.logLine(step, stream, line),
      MAX_LINE,
      (text) => maskSecrets(text, secrets),
      secrets.reduce((n, v) => Math.max(n, v.length), 0),
    );
    return new Writable({
      write: (chunk: Buffer, _enc, cb) => {
        lines.push(chunk);
        cb();
      },
      final: (cb) => {
        lines.end();
        cb();
      },
    });
  }

  private async collectArtifacts(containerId: string): Promise<void> {
    const dest = join(this.ctx.artifactsDir, this.ctx.job.name);
    const run = this.ctx.artifactBudget;
    let saved = 0;
    let entries = 0;
    let overBudget = false;
    const warn = (message: string) =>
      this.ctx.emit({ kind: 'warning', time: now(), runId: this.ctx.runId, job: this.ctx.job.name, message });
    if (run !== undefined && run.left <= 0) {
      warn('artifacts: none are kept for this run');
      return;
    }
    /** Whether an entry of `bytes` fits the job's bounds and the run's; charges it if so. */
    const take = (bytes: number, name: string): boolean => {
      const cost = Math.max(bytes, ENTRY_COST);
      const fits =
        !overBudget &&
        entries < MAX_ARTIFACT_ENTRIES &&
        saved + cost <= MAX_ARTIFACT_BYTES &&
        (run === undefined || cost <= run.left);
      if (!fits) {
        // Bounded (red-team passes 23 and 27: a sparse file became 1.1 GB on the host; 20 000
        // empty folders cost no byte of the budget): past a bound, nothing more is saved, once said.
        if (!overBudget) {
          const bound =
            entries >= MAX_ARTIFACT_ENTRIES
              ? `${MAX_ARTIFACT_ENTRIES} files and folders`
              : saved + cost > MAX_ARTIFACT_BYTES
                ? `the job's ${MAX_ARTIFACT_BYTES / 2 ** 30} GiB`
                : "the run's budget";
          warn(`artifacts: over ${bound}; ${name} and what follows are not saved`);
        }
        overBudget = true;
        return false;
      }
      saved += cost;
      entries++;
      if (run) run.left -= cost;
      return true;
    };
    for (const p of this.ctx.job.artifacts) {
      const inContainer = posix.isAbsolute(p) ? p : posix.join('/workspace', p);
      try {
        const res = await containers(this.ctx.client).getArchive(containerId, inContainer);
        const extract = tar.extract();
        extract.on('entry', (header, stream, next) => {
          // A throw here would escape the pipeline below and end the process (red-team pass 27:
          // a file and a folder of one name, from two paths, took the whole server down).
          const skip = (err?: Error) => {
            stream.resume();
            next(err);
          };
          try {
            const target = normalize(join(dest, header.name));
            // Inside this job's folder (a sibling whose name starts with the job's is outside).
            if (target !== dest && !target.startsWith(`${dest}${sep}`)) return skip();
            if (header.type === 'directory') {
              if (!existsSync(target) && !take(0, header.name)) return skip();
              mkdirSync(target, { recursive: true });
              return skip();
            }
            if (header.type !== 'file' || !take(header.size, header.name)) return skip();
            mkdirSync(dirname(target), { recursive: true });
            stream
              .pipe(createWriteStream(target))
              .on('finish', () => next())
              .on('error', (err) => skip(err));
          } catch (err) {
            skip(err instanceof Error ? err : new Error(String(err)));
          }
        });
        await pipeline(res, extract);
        this.logLine(undefined, 'system', `artifact ${p} saved to ${dest}`);
      } catch (err) {
        warn(`artifact ${p}: ${errorMessage(err)}`);
      }
    }
  }
}

/** Why a job may not run `img` (naming `id` now): a guard's tenant set the name to its own image. */
async function squatReason(client: DockerClient, img: string, id: string): Promise<string | undefined> {
  const writer = await tagWriterOf(
    (filters) => client.json('GET', '/volumes', { query: { filters } }),
    img,
    id,
  );
  return writer === undefined
    ? undefined
    : `image ${img} on the engine was set by the job of tenant ${writer}, not pulled; name the image by digest, or run again once that job ended`;
}

/** Pulls `ref` (repo[:tag] or repo@digest) onto the engine. */
export async function pullImage(client: DockerClient, ref: string): Promise<void> {
  const at = ref.indexOf('@');
  const slash = ref.lastIndexOf('/');
  const colon = ref.lastIndexOf(':');
  const [fromImage, tag] =
    at >= 0
      ? [ref, undefined]
      : colon > slash
        ? [ref.slice(0, colon), ref.slice(colon + 1)]
        : [ref, 'latest'];
  const res = await client.request({ method: 'POST', path: '/images/create', query: { fromImage, tag } });
  await followProgress(res);
}

/**
 * Removes a container and returns only once it is gone: a forced stop and the cleanup may remove
 * the same container at once, and dockerd answers the second with 409 "removal in progress".
 */
export async function removeContainerSettled(
  client: DockerClient,
  id: string,
  waitMs = 30_000,
): Promise<void> {
  const end = Date.now() + waitMs;
  for (;;) {
    try {
      await containers(client).remove(id, { force: true });
    } catch (err) {
      if (isNotFound(err)) return;
      if (!isConflict(err) || Date.now() > end) throw err;
    }
    if ((await containers(client).find(id)) === undefined) return;
    if (Date.now() > end) return;
    await sleep(100);
  }
}

/** Removes a network, waiting out endpoints that are still being torn down. */
export async function removeNetworkSettled(
  client: DockerClient,
  name: string,
  waitMs = 30_000,
): Promise<void> {
  const end = Date.now() + waitMs;
  for (;;) {
    try {
      await networks(client).remove(name);
      return;
    } catch (err) {
      if (isNotFound(err)) return;
      if (Date.now() > end) throw err;
      await sleep(200);
    }
  }
}

/**
 * A compose project name of the job's own: compose keeps lowercase letters, digits, `-` and `_`.
 * A job name with other characters (`.`) gets a hash of itself, so `a.b` and `ab` stay apart
 * (red-team pass 27).
 */
export function composeProject(runId: string, job: string): string {
  const name = `${runId}-${job}`.toLowerCase();
  const kept = name.replace(/[^a-z0-9_-]/g, '');
  return kept === name ? kept : `${kept}-${createHash('sha256').update(job).digest('hex').slice(0, 8)}`;
}
