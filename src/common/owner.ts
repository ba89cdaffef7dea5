/**
 * Process ownership of engine objects: objects carry the pid and host of the berth process that
 * made them, so a later run can tell a leftover (its owner is gone) from a neighbour's live object.
 */
import { hostname } from 'node:os';
import { LABEL_OWNER_HOST, LABEL_OWNER_PID } from './labels.js';

/** Whether a process is alive on this host (EPERM means alive, just not ours to signal). */
export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The owner labels for objects this process creates. */
export function ownerLabels(): Record<string, string> {
  return { [LABEL_OWNER_PID]: String(process.pid), [LABEL_OWNER_HOST]: hostname() };
}

/**
 * Whether an object's owner is gone: it was made on this host by a process that no longer runs,
 * or it carries no owner at all (made before owners were recorded). Objects of other hosts are
 * never judged here.
 */
export function ownerGone(labels: Record<string, string> | null | undefined): boolean {
  if (!labels) return false;
  const host = labels[LABEL_OWNER_HOST];
  if (host !== undefined && host !== hostname()) return false;
  const pid = labels[LABEL_OWNER_PID];
  return pid === undefined || !pidAlive(Number(pid));
}
