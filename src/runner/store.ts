/**
 * The run history: an embedded SQLite database at `<dir>/berth.db` (WAL) with runs, jobs and steps,
 * and full logs as files under `<dir>/runs/<id>/<job>.log`. The server reads the same store.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { BerthError, privateDirProblem } from '../common/index.js';
import type { JobStatus, RunStatus, StepStatus } from './events.js';

export interface RunRow {
  id: string;
  pipeline: string;
  file: string;
  workspace: string;
  status: RunStatus;
  exit_code: number | null;
  started_at: string;
  finished_at: string | null;
  commit_sha: string | null;
  branch: string | null;
  owner_pid: number;
  owner_host: string;
}

export interface JobRow {
  run_id: string;
  name: string;
  status: JobStatus;
  exit_code: number | null;
  started_at: string | null;
  finished_at: string | null;
  duration_ms: number | null;
  reason: string | null;
}

export interface StepRow {
  run_id: string;
  job: string;
  idx: number;
  name: string;
  status: StepStatus;
  exit_code: number | null;
  started_at: string | null;
  finished_at: string | null;
  duration_ms: number | null;
}

const MIGRATIONS: string[] = [
  `CREATE TABLE runs (
     id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, file TEXT NOT NULL, workspace TEXT NOT NULL,
     status TEXT NOT NULL, exit_code INTEGER, started_at TEXT NOT NULL, finished_at TEXT,
     commit_sha TEXT, branch TEXT, owner_pid INTEGER NOT NULL, owner_host TEXT NOT NULL);
   CREATE TABLE jobs (
     run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE, name TEXT NOT NULL,
     status TEXT NOT NULL, exit_code INTEGER, started_at TEXT, finished_at TEXT, duration_ms INTEGER,
     reason TEXT, PRIMARY KEY (run_id, name));
   CREATE TABLE steps (
     run_id TEXT NOT NULL, job TEXT NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL,
     status TEXT NOT NULL, exit_code INTEGER, started_at TEXT, finished_at TEXT, duration_ms INTEGER,
     PRIMARY KEY (run_id, job, idx), FOREIGN KEY (run_id, job) REFERENCES jobs(run_id, name) ON DELETE CASCADE);
   CREATE INDEX runs_started ON runs(started_at);`,
];

export class Store {
  readonly dir: string;
  private readonly db: Database.Database;

  constructor(dir: string) {
    this.dir = dir;
    try {
      // Job logs are read by whoever may run berth here, not by every user of the machine.
      mkdirSync(join(dir, 'runs'), { recursive: true, mode: 0o700 });
      // A store an older berth made with the default modes is tightened (red-team pass 30).
      for (const d of [dir, join(dir, 'runs')]) privateDirProblem(d);
      this.db = new Database(join(dir, 'berth.db'));
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('busy_timeout = 5000');
      this.db.pragma('foreign_keys = ON');
      this.migrate();
    } catch (cause) {
      throw new BerthError('STORE_FAILED', `cannot open the run store in ${dir}`, { cause });
    }
  }

  private migrate(): void {
    const version = this.db.pragma('user_version', { simple: true }) as number;
    for (let v = version; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v] ?? '');
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  createRun(
    r: Omit<RunRow, 'status' | 'exit_code' | 'finished_at'>,
    jobs: { name: string; steps: string[] }[],
  ): void {
    this.db.transaction(() => {
      this.db
        .prepare(
          `INSERT INTO runs (id, pipeline, file, workspace, status, started_at, commit_sha, branch, owner_pid, owner_host)
           VALUES (@id, @pipeline, @file, @workspace, 'running', @started_at, @commit_sha, @branch, @owner_pid, @owner_host)`,
        )
        .run(r);
      const job = this.db.prepare(`INSERT INTO jobs (run_id, name, status) VALUES (?, ?, 'queued')`);
      const step = this.db.prepare(
        `INSERT INTO steps (run_id, job, idx, name, status) VALUES (?, ?, ?, ?, 'skipped')`,
      );
      for (const j of jobs) {
        job.run(r.id, j.name);
        j.steps.forEach((s, i) => step.run(r.id, j.name, i, s));
      }
    })();
    mkdirSync(this.runDir(r.id), { recursive: true });
  }

  finishRun(id: string, status: RunStatus, exitCode: number, finishedAt: string): void {
    this.db
      .prepare(`UPDATE runs SET status = ?, exit_code = ?, finished_at = ? WHERE id = ?`)
      .run(status, exitCode, finishedAt, id);
  }

  updateJob(runId: string, name: string, fields: Partial<Omit<JobRow, 'run_id' | 'name'>>): void {
    const keys = Object.keys(fields);
    if (keys.length === 0) return;
    this.db
      .prepare(
        `UPDATE jobs SET ${keys.map((k) => `${k} = @${k}`).join(', ')} WHERE run_id = @run_id AND name = @name`,
      )
      .run({ ...fields, run_id: runId, name });
  }

  updateStep(
    runId: string,
    job: string,
    idx: number,
    fields: Partial<Omit<StepRow, 'run_id' | 'job' | 'idx' | 'name'>>,
  ): void {
    const keys = Object.keys(fields);
    if (keys.length === 0) return;
    this.db
      .prepare(
        `UPDATE steps SET ${keys.map((k) => `${k} = @${k}`).join(', ')} WHERE run_id = @run_id AND job = @job AND idx = @idx`,
      )
      .run({ ...fields, run_id: runId, job, idx });
  }

  /** Runs, newest first. */
  listRuns(limit = 20): RunRow[] {
    return this.db
      .prepare(`SELECT * FROM runs ORDER BY started_at DESC, id DESC LIMIT ?`)
      .all(limit) as RunRow[];
  }

  getRun(id: string): RunRow | undefined {
    return this.db.prepare(`SELECT * FROM runs WHERE id = ?`).get(id) as RunRow | undefined;
  }

  /** A run by id, unique id prefix, or `last`. */
  resolveRun(ref: string): RunRow {
    if (ref === 'last' || ref === 'latest') {
      const r = this.listRuns(1)[0];
      if (r) return r;
    } else {
      const exact = this.getRun(ref);
      if (exact) return exact;
      const matches = this.db
        .prepare(`SELECT * FROM runs WHERE id LIKE ? || '%' LIMIT 2`)
        .all(ref) as RunRow[];
      if (matches.length === 1 && matches[0]) return matches[0];
    }
    throw new BerthError('RUN_NOT_FOUND', `no run "${ref}" in ${this.dir}`, {
      hint: 'list runs with `berth ls`',
    });
  }

  jobs(runId: string): JobRow[] {
    return this.db.prepare(`SELECT * FROM jobs WHERE run_id = ? ORDER BY rowid`).all(runId) as JobRow[];
  }

  steps(runId: string, job?: string): StepRow[] {
    return (
      job === undefined
        ? this.db.prepare(`SELECT * FROM steps WHERE run_id = ? ORDER BY job, idx`).all(runId)
        : this.db.prepare(`SELECT * FROM steps WHERE run_id = ? AND job = ? ORDER BY idx`).all(runId, job)
    ) as StepRow[];
  }

  /** Runs still marked running. */
  runningRuns(): RunRow[] {
    return this.db.prepare(`SELECT * FROM runs WHERE status = 'running'`).all() as RunRow[];
  }

  /** Marks a run whose runner died as abandoned (and its unfinished jobs cancelled). */
  abandonRun(id: string, finishedAt: string): void {
    this.db.transaction(() => {
      this.db
        .prepare(`UPDATE runs SET status = 'abandoned', finished_at = ? WHERE id = ? AND status = 'running'`)
        .run(finishedAt, id);
      this.db
        .prepare(
          `UPDATE jobs SET status = 'cancelled', reason = 'runner died' WHERE run_id = ? AND status IN ('queued', 'running')`,
        )
        .run(id);
    })();
  }

  runDir(id: string): string {
    return join(this.dir, 'runs', id);
  }

  logPath(id: string, job: string): string {
    return join(this.runDir(id), `${job}.log`);
  }

  appendLog(id: string, job: string, text: string): void {
    appendFileSync(this.logPath(id, job), text);
  }

  readLog(id: string, job: string): string {
    const p = this.logPath(id, job);
    return existsSync(p) ? readFileSync(p, 'utf8') : '';
  }

  close(): void {
    this.db.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** Opens (creating and migrating) the store in `dir` (usually `<workspace>/.berth`). */
export function openStore(dir: string): Store {
  return new Store(dir);
}
