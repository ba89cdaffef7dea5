/** Names and host paths of a run's objects. */
import { homedir, hostname, tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { createHash, randomBytes } from 'node:crypto';
import { lstatSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { BerthError, pidAlive, privateDirProblem } from '../common/index.js';

/** A new run id: sortable by time, safe in Docker names: 20261123-021900-a1b2. */
export function newRunId(date = new Date()): string {
  const p = (n: number) => String(n).padStart(2, '0');
  const d = `${date.getUTCFullYear()}${p(date.getUTCMonth() + 1)}${p(date.getUTCDate())}`;
  const t = `${p(date.getUTCHours())}${p(date.getUTCMinutes())}${p(date.getUTCSeconds())}`;
  return `${d}-${t}-${randomBytes(2).toString('hex')}`;
}

/** Docker object names for a job: network, job container, service containers. */
export function objectName(runId: string, job: string, service?: string): string {
  const clean = (s: string) => s.replace(/[^a-zA-Z0-9_.-]/g, '-');
  return `berth-${runId}-${clean(job)}${service === undefined ? '' : `-${clean(service)}`}`;
}

/**
 * The folder that holds runs' temp roots, one only this user can write: `/run/berth/runs` for root
 * (`/run` is root's), `$XDG_RUNTIME_DIR/berth-run` for others, else `$TMPDIR/berth-run-<uid>`. It
 * used to be `$TMPDIR/berth-run` for everyone: a local user who made that folder first could
 * swap a run's folder for a link, and the root runner chmodded, mounted and removed any folder of
 * the host through it (red-team pass 29).
 */
export function runTempBase(): string {
  if (process.geteuid?.() === 0) return '/run/berth/runs';
  const runtime = process.env.XDG_RUNTIME_DIR;
  if (runtime !== undefined && runtime !== '') return join(runtime, 'berth-run');
  return join(tmpdir(), `berth-run-${process.geteuid?.() ?? 'user'}`);
}

/**
 * Makes the base (0700) where it is missing and checks it is this user's alone: a folder (not a
 * link), owned by this user, writable by no one else (a looser mode of our own is tightened).
 * Throws RUN_FAILED, saying what to remove, otherwise.
 */
export function ensureRunTempBase(): string {
  const base = runTempBase();
  mkdirSync(base, { recursive: true, mode: 0o700 });
  const why = runTempBaseProblem(base);
  if (why !== undefined)
    throw new BerthError('RUN_FAILED', `the runs' temp folder ${base} ${why}`, {
      hint: `remove ${base} (berth makes it again, for this user only)`,
    });
  return base;
}

/** Why `base` cannot hold runs' folders (undefined: it can); tightens the mode of our own. */
export function runTempBaseProblem(base = runTempBase()): string | undefined {
  return privateDirProblem(base);
}

/**
 * Host folder for a run's per-job state (guard sockets…). Kept short and outside the workspace:
 * unix socket paths are limited to 107 bytes.
 */
export function jobTempRoot(runId: string): string {
  return join(runTempBase(), runId);
}

/**
 * The file in a run's temp root that names the runner owning it. Its name holds a `+`, which a
 * job's folder name never does (job names are cleaned to `[a-zA-Z0-9_.-]`).
 */
export const RUN_OWNER_FILE = 'owner+berth.json';

/** The runner process that made a run's temp root. */
export interface RunOwner {
  runId: string;
  pid: number;
  host: string;
}

/**
 * Makes a run's temp root (mode 0700) and records its owner in it (this process, this host), so
 * the reaper judges the folder by what the runner wrote, never by a label on an engine object.
 */
export function createRunTempRoot(runId: string, owner: Omit<RunOwner, 'runId'> = ownProcess()): string {
  ensureRunTempBase();
  const root = jobTempRoot(runId);
  // Not recursive: a folder already there (whoever made it) is not taken for this run's.
  mkdirSync(root, { mode: 0o700 });
  const record: RunOwner = { runId, pid: owner.pid, host: owner.host };
  writeFileSync(join(root, RUN_OWNER_FILE), `${JSON.stringify(record)}\n`, { mode: 0o600 });
  return root;
}

function ownProcess(): Omit<RunOwner, 'runId'> {
  return { pid: process.pid, host: hostname() };
}

/** Reads a run owner record; undefined unless it is well formed and names this run. */
export function parseRunOwner(text: string, runId: string): RunOwner | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null) return undefined;
  const o = v as Record<string, unknown>;
  if (o.runId !== runId || typeof o.host !== 'string') return undefined;
  if (typeof o.pid !== 'number' || !Number.isInteger(o.pid) || o.pid <= 0) return undefined;
  return { runId, pid: o.pid, host: o.host };
}

/**
 * The owner recorded in a run's temp root: undefined when the folder is absent, is not a plain
 * directory, or holds no well-formed owner file (a folder of an older berth, or not berth's).
 */
export function readRunOwner(runId: string): RunOwner | undefined {
  const root = jobTempRoot(runId);
  try {
    if (!lstatSync(root).isDirectory()) return undefined;
    const file = join(root, RUN_OWNER_FILE);
    if (!lstatSync(file).isFile()) return undefined;
    return parseRunOwner(readFileSync(file, 'utf8'), runId);
  } catch {
    return undefined;
  }
}

/** Whether an owner record names a runner on this host that no longer runs. */
export function runOwnerGone(owner: RunOwner | undefined, host = hostname()): boolean {
  return owner !== undefined && owner.host === host && !pidAlive(owner.pid);
}

/**
 * Where a workspace's runs are stored (the SQLite history, job logs, artifacts) by default:
 * outside the workspace, which every job can write (red-team pass 23: with the store at
 * `<workspace>/.berth`, a job replaced its own log file, or its artifacts folder, with a link, and
 * the runner, as root, wrote into any file or folder of the host). One folder per workspace, under
 * `$BERTH_STATE_DIR`, else `/var/lib/berth/runs` for root, else `~/.local/state/berth/runs`.
 */
export function defaultStoreDir(workspace: string): string {
  const root =
    process.env.BERTH_STATE_DIR ??
    (process.getuid?.() === 0 ? '/var/lib/berth/runs' : join(homedir(), '.local', 'state', 'berth', 'runs'));
  const abs = resolve(workspace);
  const key = createHash('sha256').update(abs).digest('hex').slice(0, 12);
  const name =
    basename(abs)
      .replace(/[^A-Za-z0-9_.-]/g, '-')
      .slice(0, 40) || 'root';
  return join(root, `${name}-${key}`);
}
