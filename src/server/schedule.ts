/**
 * The queue's scheduling decision, pure: which queued runs start now. Global concurrency is
 * bounded; within a project runs start in the order they were queued (FIFO) and at most
 * `perProject` of them run at once (1 by default, so a project's pushes build in order).
 */

export interface QueuedRun {
  id: string;
  project: string;
  /** Monotonic position in the queue (e.g. the row id), lower = earlier. */
  seq: number;
}

export interface RunningRun {
  id: string;
  project: string;
}

export interface ScheduleLimits {
  concurrency: number;
  perProject: number;
}

export function pickRunsToStart(
  queued: readonly QueuedRun[],
  running: readonly RunningRun[],
  limits: ScheduleLimits,
): QueuedRun[] {
  let free = limits.concurrency - running.length;
  if (free <= 0) return [];
  const busy = new Map<string, number>();
  for (const r of running) busy.set(r.project, (busy.get(r.project) ?? 0) + 1);
  const picked: QueuedRun[] = [];
  const blocked = new Set<string>();
  for (const run of [...queued].sort((a, b) => a.seq - b.seq)) {
    if (free <= 0) break;
    // FIFO per project: once a project's earliest queued run cannot start, none of its later ones may.
    if (blocked.has(run.project)) continue;
    const n = busy.get(run.project) ?? 0;
    if (n >= limits.perProject) {
      blocked.add(run.project);
      continue;
    }
    picked.push(run);
    busy.set(run.project, n + 1);
    free--;
  }
  return picked;
}
