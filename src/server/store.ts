/**
 * The server's store: projects, the run queue and history (runs, jobs, steps), log lines and
 * resource samples, on SQLite or PostgreSQL through the Sql adapter. Timestamps are epoch ms.
 */
import { randomBytes } from 'node:crypto';
import { BerthError } from '../common/index.js';
import type { Sql, SqlValue } from './sql.js';

export type RunStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'interrupted';
export type Trigger = 'webhook' | 'manual' | 'poll' | 'rerun';
export const FINISHED: readonly RunStatus[] = ['succeeded', 'failed', 'cancelled', 'interrupted'];

/**
 * What a project's pipelines may have beyond the defaults. A pipeline file comes from whoever can
 * push to the repository, so by default a server run gets no variable of the server's environment
 * (`secrets:` names find nothing), reads no secret files, runs jobs in guard or none mode only,
 * and its persistent tenants are the project's own (`project/<name>/<tenant>`). The admin grants
 * more per project.
 */
export interface ProjectGrants {
  /** Variables of the server's environment the project's `secrets:` may name. */
  env: string[];
  /** Docker modes beyond guard and none (dind: a nested daemon with near-full capabilities; host: root on the host). */
  docker: ('dind' | 'host')[];
}

export const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const GRANTABLE_MODES = ['dind', 'host'] as const;

/** Grants as given (CLI, API), checked: every problem named. */
export function checkGrants(g: { env?: unknown; docker?: unknown } | undefined): ProjectGrants {
  const env = g?.env ?? [];
  const docker = g?.docker ?? [];
  if (!Array.isArray(env) || env.some((e) => typeof e !== 'string' || !ENV_NAME.test(e)))
    throw new BerthError('BERTH_USAGE', `grants.env must be a list of environment variable names`, {
      hint: 'e.g. REGISTRY_PASSWORD (letters, digits, _; not starting with a digit)',
    });
  if (!Array.isArray(docker) || docker.some((d) => !(GRANTABLE_MODES as readonly unknown[]).includes(d)))
    throw new BerthError('BERTH_USAGE', `grants.docker must be a list of: ${GRANTABLE_MODES.join(', ')}`, {
      hint: 'guard and none are always allowed',
    });
  return {
    env: [...new Set(env as string[])].sort(),
    docker: [...new Set(docker as ('dind' | 'host')[])].sort(),
  };
}

export interface Project {
  id: string;
  name: string;
  repoUrl: string;
  secret: string;
  branch: string | null;
  pollSeconds: number | null;
  createdAt: number;
  grants: ProjectGrants;
}

export interface Run {
  id: string;
  seq: number;
  projectId: string;
  status: RunStatus;
  trigger: Trigger;
  ref: string | null;
  branch: string | null;
  sha: string | null;
  message: string | null;
  rerunOf: string | null;
  queuedAt: number;
  startedAt: number | null;
  finishedAt: number | null;
  exitCode: number | null;
  error: string | null;
}

export interface JobRecord {
  runId: string;
  name: string;
  status: string;
  needs: string[];
  startedAt: number | null;
  finishedAt: number | null;
  exitCode: number | null;
}

export interface StepRecord {
  runId: string;
  job: string;
  idx: number;
  name: string;
  status: string;
  startedAt: number | null;
  finishedAt: number | null;
  exitCode: number | null;
}

export interface LogLine {
  seq: number;
  ts: number;
  job: string;
  step: number | null;
  stream: string;
  text: string;
}

export interface Sample {
  ts: number;
  cpuPercent: number;
  memBytes: number;
}

const SCHEMA = (bigint: string) => `
CREATE TABLE IF NOT EXISTS projects (
  id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, repo_url TEXT NOT NULL, secret TEXT NOT NULL,
  branch TEXT, poll_seconds INTEGER, created_at ${bigint} NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, seq ${bigint} NOT NULL, project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  status TEXT NOT NULL, trigger TEXT NOT NULL, ref TEXT, branch TEXT, sha TEXT, message TEXT, rerun_of TEXT,
  queued_at ${bigint} NOT NULL, started_at ${bigint}, finished_at ${bigint}, exit_code INTEGER, error TEXT);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status, seq);
CREATE INDEX IF NOT EXISTS runs_project ON runs(project_id, seq);
CREATE TABLE IF NOT EXISTS jobs (
  run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, name TEXT NOT NULL, status TEXT NOT NULL,
  needs TEXT NOT NULL, started_at ${bigint}, finished_at ${bigint}, exit_code INTEGER, PRIMARY KEY (run_id, name));
CREATE TABLE IF NOT EXISTS steps (
  run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, job TEXT NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL,
  status TEXT NOT NULL, started_at ${bigint}, finished_at ${bigint}, exit_code INTEGER, PRIMARY KEY (run_id, job, idx));
CREATE TABLE IF NOT EXISTS log_lines (
  run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, seq INTEGER NOT NULL, ts ${bigint} NOT NULL, job TEXT NOT NULL,
  step INTEGER, stream TEXT NOT NULL, text TEXT NOT NULL, PRIMARY KEY (run_id, seq));
CREATE TABLE IF NOT EXISTS samples (
  run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, job TEXT NOT NULL, ts ${bigint} NOT NULL,
  cpu_percent REAL NOT NULL, mem_bytes ${bigint} NOT NULL);
CREATE INDEX IF NOT EXISTS samples_job ON samples(run_id, job, ts);
CREATE TABLE IF NOT EXISTS deliveries (
  project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE, id TEXT NOT NULL, at ${bigint} NOT NULL,
  PRIMARY KEY (project_id, id));
`;

type R = Record<string, unknown>;
const s = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const n = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v));

function toProject(r: R): Project {
  return {
    id: String(r.id),
    name: String(r.name),
    repoUrl: String(r.repo_url),
    secret: String(r.secret),
    branch: s(r.branch),
    pollSeconds: n(r.poll_seconds),
    createdAt: Number(r.created_at),
    grants: parseGrants(r.grants),
  };
}

/** A stored grants column; a store from before grants, or an unreadable value, grants nothing. */
function parseGrants(v: unknown): ProjectGrants {
  try {
    return checkGrants(
      typeof v === 'string' ? (JSON.parse(v) as { env?: unknown; docker?: unknown }) : undefined,
    );
  } catch {
    return { env: [], docker: [] };
  }
}

function toRun(r: R): Run {
  return {
    id: String(r.id),
    seq: Number(r.seq),
    projectId: String(r.project_id),
    status: String(r.status) as RunStatus,
    trigger: String(r.trigger) as Trigger,
    ref: s(r.ref),
    branch: s(r.branch),
    sha: s(r.sha),
    message: s(r.message),
    rerunOf: s(r.rerun_of),
    queuedAt: Number(r.queued_at),
    startedAt: n(r.started_at),
    finishedAt: n(r.finished_at),
    exitCode: n(r.exit_code),
    error: s(r.error),
  };
}

export const PROJECT_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

export class ServerStore {
  private logSeq = new Map<string, number>();

  private constructor(readonly sql: Sql) {}

  static async open(sql: Sql): Promise<ServerStore> {
    await sql.exec(SCHEMA(sql.dialect === 'postgres' ? 'BIGINT' : 'INTEGER'));
    // Stores made before grants: the column is added (NULL: nothing granted).
    const cols =
      sql.dialect === 'postgres'
        ? await sql.all(
            "SELECT column_name AS name FROM information_schema.columns WHERE table_name = 'projects'",
          )
        : await sql.all("SELECT name FROM pragma_table_info('projects')");
    if (!cols.some((c) => c.name === 'grants')) await sql.exec('ALTER TABLE projects ADD COLUMN grants TEXT');
    return new ServerStore(sql);
  }

  close(): Promise<void> {
    return this.sql.close();
  }

  // ---- projects

  async createProject(p: {
    name: string;
    repoUrl: string;
    secret: string;
    branch?: string;
    pollSeconds?: number;
    grants?: { env?: unknown; docker?: unknown };
  }): Promise<Project> {
    const grants = checkGrants(p.grants);
    if (!PROJECT_NAME.test(p.name)) {
      throw new BerthError('BERTH_USAGE', `project name ${JSON.stringify(p.name)} is not valid`, {
        hint: 'use lower-case letters, digits, . _ - (max 63), starting with a letter or digit',
      });
    }
    if (p.repoUrl.trim() === '') throw new BerthError('BERTH_USAGE', 'a project needs a git URL or path');
    if (p.secret.length < 8)
      throw new BerthError('BERTH_USAGE', 'the webhook secret must have at least 8 characters');
    if (await this.project(p.name)) throw new BerthError('BERTH_USAGE', `project ${p.name} already exists`);
    const id = `p_${randomBytes(6).toString('hex')}`;
    await this.sql.run(
      'INSERT INTO projects (id, name, repo_url, secret, branch, poll_seconds, created_at, grants) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      [
        id,
        p.name,
        p.repoUrl,
        p.secret,
        p.branch ?? null,
        p.pollSeconds ?? null,
        Date.now(),
        JSON.stringify(grants),
      ],
    );
    const created = await this.project(id);
    if (!created) throw new BerthError('STORE_FAILED', `project ${p.name} vanished after insert`);
    return created;
  }

  /** A project by id or name. */
  async project(idOrName: string): Promise<Project | undefined> {
    const r = await this.sql.get('SELECT * FROM projects WHERE id = ? OR name = ?', [idOrName, idOrName]);
    return r ? toProject(r) : undefined;
  }

  async projects(): Promise<Project[]> {
    return (await this.sql.all('SELECT * FROM projects ORDER BY name')).map(toProject);
  }

  /** Replaces a project's grants. */
  async setGrants(idOrName: string, g: { env?: unknown; docker?: unknown }): Promise<Project> {
    const p = await this.project(idOrName);
    if (!p) throw new BerthError('BERTH_USAGE', `no project ${idOrName}`);
    await this.sql.run('UPDATE projects SET grants = ? WHERE id = ?', [JSON.stringify(checkGrants(g)), p.id]);
    return { ...p, grants: checkGrants(g) };
  }

  /**
   * Notes a webhook delivery's ID for a project: false when the project already had it (a replay,
   * or the forge sending it again). IDs older than `keepMs` are forgotten.
   */
  async firstDelivery(projectId: string, id: string, keepMs = 30 * 24 * 3600 * 1000): Promise<boolean> {
    const now = Date.now();
    await this.sql.run('DELETE FROM deliveries WHERE at < ?', [now - keepMs]);
    const had = await this.sql.get('SELECT 1 AS x FROM deliveries WHERE project_id = ? AND id = ?', [
      projectId,
      id,
    ]);
    if (had) return false;
    try {
      await this.sql.run('INSERT INTO deliveries (project_id, id, at) VALUES (?, ?, ?)', [
        projectId,
        id,
        now,
      ]);
    } catch {
      return false; // the same delivery, noted by a request at the same moment
    }
    return true;
  }

  async deleteProject(id: string): Promise<boolean> {
    return (await this.sql.run('DELETE FROM projects WHERE id = ?', [id])).changes > 0;
  }

  // ---- runs

  async enqueue(r: {
    projectId: string;
    trigger: Trigger;
    ref?: string | null;
    branch?: string | null;
    sha?: string | null;
    message?: string | null;
    rerunOf?: string | null;
  }): Promise<Run> {
    const id = `r_${Date.now().toString(36)}${randomBytes(3).toString('hex')}`;
    await this.sql.run(
      `INSERT INTO runs (id, seq, project_id, status, trigger, ref, branch, sha, message, rerun_of, queued_at)
       SELECT ?, COALESCE(MAX(seq), 0) + 1, ?, 'queued', ?, ?, ?, ?, ?, ?, ? FROM runs`,
      [
        id,
        r.projectId,
        r.trigger,
        r.ref ?? null,
        r.branch ?? null,
        r.sha ?? null,
        r.message ?? null,
        r.rerunOf ?? null,
        Date.now(),
      ],
    );
    const run = await this.run(id);
    if (!run) throw new BerthError('STORE_FAILED', `run ${id} vanished after insert`);
    return run;
  }

  async run(id: string): Promise<Run | undefined> {
    const r = await this.sql.get('SELECT * FROM runs WHERE id = ?', [id]);
    return r ? toRun(r) : undefined;
  }

  async runs(opts: { projectId?: string; status?: RunStatus[]; limit?: number } = {}): Promise<Run[]> {
    const where: string[] = [];
    const params: SqlValue[] = [];
    if (opts.projectId) {
      where.push('project_id = ?');
      params.push(opts.projectId);
    }
    if (opts.status?.length) {
      where.push(`status IN (${opts.status.map(() => '?').join(', ')})`);
      params.push(...opts.status);
    }
    const sql = `SELECT * FROM runs ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY seq DESC LIMIT ?`;
    return (await this.sql.all(sql, [...params, opts.limit ?? 100])).map(toRun);
  }

  /** Queued runs, oldest first. */
  async queued(): Promise<Run[]> {
    return (await this.sql.all("SELECT * FROM runs WHERE status = 'queued' ORDER BY seq ASC")).map(toRun);
  }

  async markStarted(id: string): Promise<boolean> {
    return (
      (
        await this.sql.run(
          "UPDATE runs SET status = 'running', started_at = ? WHERE id = ? AND status = 'queued'",
          [Date.now(), id],
        )
      ).changes > 0
    );
  }

  async markFinished(
    id: string,
    status: Exclude<RunStatus, 'queued' | 'running'>,
    exitCode: number | null,
    error?: string,
  ): Promise<void> {
    await this.sql.run('UPDATE runs SET status = ?, finished_at = ?, exit_code = ?, error = ? WHERE id = ?', [
      status,
      Date.now(),
      exitCode,
      error ?? null,
      id,
    ]);
  }

  /** At server start: runs that were running when the server died become interrupted. */
  async interruptRunning(): Promise<string[]> {
    const ids = (await this.sql.all("SELECT id FROM runs WHERE status = 'running'")).map((r) => String(r.id));
    for (const id of ids)
      await this.markFinished(id, 'interrupted', null, 'the server stopped while the run was running');
    await this.sql.run(
      "UPDATE jobs SET status = 'interrupted', finished_at = ? WHERE status IN ('running', 'queued') AND run_id IN (SELECT id FROM runs WHERE status = 'interrupted')",
      [Date.now()],
    );
    return ids;
  }

  // ---- jobs and steps

  async upsertJob(j: JobRecord): Promise<void> {
    await this.sql.run(
      `INSERT INTO jobs (run_id, name, status, needs, started_at, finished_at, exit_code) VALUES (?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (run_id, name) DO UPDATE SET status = excluded.status, needs = excluded.needs,
         started_at = COALESCE(excluded.started_at, jobs.started_at), finished_at = excluded.finished_at, exit_code = excluded.exit_code`,
      [j.runId, j.name, j.status, JSON.stringify(j.needs), j.startedAt, j.finishedAt, j.exitCode],
    );
  }

  async jobs(runId: string): Promise<JobRecord[]> {
    return (
      await this.sql.all(
        'SELECT * FROM jobs WHERE run_id = ? ORDER BY started_at IS NULL, started_at, name',
        [runId],
      )
    ).map((r) => ({
      runId: String(r.run_id),
      name: String(r.name),
      status: String(r.status),
      needs: JSON.parse(String(r.needs)) as string[],
      startedAt: n(r.started_at),
      finishedAt: n(r.finished_at),
      exitCode: n(r.exit_code),
    }));
  }

  async upsertStep(st: StepRecord): Promise<void> {
    await this.sql.run(
      `INSERT INTO steps (run_id, job, idx, name, status, started_at, finished_at, exit_code) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (run_id, job, idx) DO UPDATE SET status = excluded.status, name = excluded.name,
         started_at = COALESCE(excluded.started_at, steps.started_at), finished_at = excluded.finished_at, exit_code = excluded.exit_code`,
      [st.runId, st.job, st.idx, st.name, st.status, st.startedAt, st.finishedAt, st.exitCode],
    );
  }

  async steps(runId: string, job?: string): Promise<StepRecord[]> {
    const rows = job
      ? await this.sql.all('SELECT * FROM steps WHERE run_id = ? AND job = ? ORDER BY idx', [runId, job])
      : await this.sql.all('SELECT * FROM steps WHERE run_id = ? ORDER BY job, idx', [runId]);
    return rows.map((r) => ({
      runId: String(r.run_id),
      job: String(r.job),
      idx: Number(r.idx),
      name: String(r.name),
      status: String(r.status),
      startedAt: n(r.started_at),
      finishedAt: n(r.finished_at),
      exitCode: n(r.exit_code),
    }));
  }

  // ---- logs and samples

  /** Appends log lines of a run; returns them with their sequence numbers. */
  async appendLogs(
    runId: string,
    lines: { job: string; step: number | null; stream: string; text: string; ts?: number }[],
  ): Promise<LogLine[]> {
    let seq = this.logSeq.get(runId);
    if (seq === undefined) {
      const r = await this.sql.get('SELECT COALESCE(MAX(seq), 0) AS m FROM log_lines WHERE run_id = ?', [
        runId,
      ]);
      seq = Number(r?.m ?? 0);
    }
    const out: LogLine[] = [];
    for (const l of lines) {
      seq++;
      const line = { seq, ts: l.ts ?? Date.now(), job: l.job, step: l.step, stream: l.stream, text: l.text };
      await this.sql.run(
        'INSERT INTO log_lines (run_id, seq, ts, job, step, stream, text) VALUES (?, ?, ?, ?, ?, ?, ?)',
        [runId, line.seq, line.ts, line.job, line.step, line.stream, line.text],
      );
      out.push(line);
    }
    this.logSeq.set(runId, seq);
    return out;
  }

  /** Log lines of a run (optionally one job), with sequence numbers after `after`, at most `limit`. */
  async logs(runId: string, opts: { job?: string; after?: number; limit?: number } = {}): Promise<LogLine[]> {
    const params: SqlValue[] = [runId, opts.after ?? 0];
    let sql = 'SELECT * FROM log_lines WHERE run_id = ? AND seq > ?';
    if (opts.job) {
      sql += ' AND job = ?';
      params.push(opts.job);
    }
    sql += ' ORDER BY seq LIMIT ?';
    params.push(Math.min(opts.limit ?? 1000, 10_000));
    return (await this.sql.all(sql, params)).map((r) => ({
      seq: Number(r.seq),
      ts: Number(r.ts),
      job: String(r.job),
      step: n(r.step),
      stream: String(r.stream),
      text: String(r.text),
    }));
  }

  async addSample(runId: string, job: string, sample: Sample): Promise<void> {
    await this.sql.run(
      'INSERT INTO samples (run_id, job, ts, cpu_percent, mem_bytes) VALUES (?, ?, ?, ?, ?)',
      [runId, job, sample.ts, sample.cpuPercent, sample.memBytes],
    );
  }

  async samples(runId: string, job: string): Promise<Sample[]> {
    return (
      await this.sql.all('SELECT * FROM samples WHERE run_id = ? AND job = ? ORDER BY ts', [runId, job])
    ).map((r) => ({
      ts: Number(r.ts),
      cpuPercent: Number(r.cpu_percent),
      memBytes: Number(r.mem_bytes),
    }));
  }
}
