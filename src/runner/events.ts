/**
 * Run events: what the runner reports while it works. The CLI prints them (text or `--json`, one per
 * line) and the dashboard can render the same union with the same formatter table.
 */

export type JobStatus = 'queued' | 'running' | 'passed' | 'failed' | 'skipped' | 'timed_out' | 'cancelled';
export type RunStatus = 'running' | 'passed' | 'failed' | 'cancelled' | 'invalid' | 'abandoned';
export type StepStatus = 'running' | 'passed' | 'failed' | 'skipped' | 'timed_out' | 'cancelled';

export type RunEvent =
  | { kind: 'run.started'; time: string; runId: string; pipeline: string; jobs: string[]; workspace: string }
  | { kind: 'job.queued'; time: string; runId: string; job: string }
  | { kind: 'job.started'; time: string; runId: string; job: string; image: string; docker: string }
  | { kind: 'step.started'; time: string; runId: string; job: string; step: number; name: string }
  | {
      kind: 'log';
      time: string;
      runId: string;
      job: string;
      step?: number;
      stream: 'stdout' | 'stderr' | 'system';
      line: string;
    }
  | {
      kind: 'step.finished';
      time: string;
      runId: string;
      job: string;
      step: number;
      name: string;
      status: StepStatus;
      exitCode?: number;
      durationMs: number;
    }
  | {
      kind: 'job.finished';
      time: string;
      runId: string;
      job: string;
      status: JobStatus;
      exitCode?: number;
      durationMs: number;
      reason?: string;
    }
  | {
      kind: 'run.finished';
      time: string;
      runId: string;
      status: RunStatus;
      exitCode: number;
      durationMs: number;
      jobs: { job: string; status: JobStatus; exitCode?: number; durationMs: number }[];
    }
  | { kind: 'warning'; time: string; runId: string; job?: string; message: string };

export type RunEventKind = RunEvent['kind'];
export type EventOf<K extends RunEventKind> = Extract<RunEvent, { kind: K }>;

/** The text form of every event (without colour); exhaustive over the union. */
export const formatters: { [K in RunEventKind]: (e: EventOf<K>) => string } = {
  'run.started': (e) => `run ${e.runId}: ${e.pipeline} (${e.jobs.length} jobs) in ${e.workspace}`,
  'job.queued': (e) => `[${e.job}] queued`,
  'job.started': (e) => `[${e.job}] started (image ${e.image}, docker ${e.docker})`,
  'step.started': (e) => `[${e.job}] step ${e.step + 1}: ${e.name}`,
  log: (e) => `[${e.job}${e.step === undefined ? '' : `#${e.step + 1}`}] ${e.line}`,
  'step.finished': (e) =>
    `[${e.job}] step ${e.step + 1} ${e.status}${e.exitCode === undefined ? '' : ` (exit ${e.exitCode})`} in ${formatDuration(e.durationMs)}`,
  'job.finished': (e) =>
    `[${e.job}] ${e.status}${e.exitCode === undefined ? '' : ` (exit ${e.exitCode})`}${e.reason ? `: ${e.reason}` : ''} in ${formatDuration(e.durationMs)}`,
  'run.finished': (e) => `run ${e.runId} ${e.status} in ${formatDuration(e.durationMs)}`,
  warning: (e) => `${e.job ? `[${e.job}] ` : ''}WARNING: ${e.message}`,
};

export function formatEvent(e: RunEvent): string {
  return (formatters[e.kind] as (e: RunEvent) => string)(e);
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${ms}ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  return `${m}m${Math.round(s - m * 60)}s`;
}

export function now(): string {
  return new Date().toISOString();
}
