/** Names and host paths of a run's objects. */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

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
 * Host folder for a run's per-job state (guard sockets…). Kept short and outside the workspace:
 * unix socket paths are limited to 107 bytes.
 */
export function jobTempRoot(runId: string): string {
  return join(tmpdir(), 'berth-run', runId);
}
