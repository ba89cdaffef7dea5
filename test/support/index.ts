/**
 * Shared helpers for integration and end-to-end tests: the test session's id (the leak check in
 * scripts/run-tests.mjs looks for it), an engine client, a temp dir, the berth CLI and the docker CLI.
 */
import { execFile, spawn } from 'node:child_process';
import type { SpawnOptions } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { DockerClient } from '../../src/engine/index.js';
import { LABEL_TEST_SESSION } from '../../src/common/index.js';
import type { AuditRecord } from '../../src/guard/index.js';

export const ROOT = new URL('../../', import.meta.url).pathname;
export const SESSION = process.env.BERTH_TEST_SESSION ?? `ts${randomBytes(4).toString('hex')}`;
/** Debian's docker CLI (API 1.41); the tests drive the real client, not a mock. */
export const DOCKER_CLI = existsSync('/usr/bin/docker') ? '/usr/bin/docker' : 'docker';
export const BERTH_BIN = join(ROOT, 'dist/cli/main.js');

/** The guard's audit log at `path`, one record per line (none before the first line is written). */
export function auditRecords(path: string): AuditRecord[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as AuditRecord);
}

/**
 * The audit records written after the first `from`, once `count` of them match `until` (or after
 * five seconds, whatever is there). The front writes its line after the answer is sent, so a client
 * can hold the answer before the line is in the file.
 */
export async function auditAfter(
  path: string,
  from: number,
  until: (r: AuditRecord) => boolean,
  count = 1,
): Promise<AuditRecord[]> {
  const end = Date.now() + 5000;
  for (;;) {
    const records = auditRecords(path).slice(from);
    if (records.filter(until).length >= count || Date.now() > end) return records;
    await new Promise((res) => setTimeout(res, 20));
  }
}

/** Labels that mark an object as made by this test session. */
export function sessionLabels(extra: Record<string, string> = {}): Record<string, string> {
  return { [LABEL_TEST_SESSION]: SESSION, ...extra };
}

/** A unique name that carries the session id, for tenants, networks, containers. */
export function uniqueName(prefix: string): string {
  return `${prefix}-${SESSION}-${randomBytes(3).toString('hex')}`;
}

export function engine(): DockerClient {
  return new DockerClient();
}

export function tempDir(prefix = 'berth-test-'): { path: string; [Symbol.dispose](): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) };
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion, with optional stdin; never throws on a non-zero exit. */
export function run(
  file: string,
  args: readonly string[],
  opts: { env?: NodeJS.ProcessEnv; input?: string | Buffer; cwd?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      file,
      args,
      {
        env: { ...process.env, ...opts.env },
        cwd: opts.cwd,
        timeout: opts.timeoutMs ?? 120_000,
        maxBuffer: 256 * 1024 * 1024,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        if (err && typeof (err as NodeJS.ErrnoException).code === 'string') {
          reject(new Error(`cannot run ${file}: ${err.message}`, { cause: err }));
          return;
        }
        const code = err ? ((err as { code?: number }).code ?? 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

/** The command line that runs the berth CLI from source (always current; no build needed). */
export const BERTH_CMD: readonly string[] = [
  process.execPath,
  '--import',
  // Absolute, so the CLI also starts with a working directory outside the repository.
  import.meta.resolve('tsx'),
  join(ROOT, 'src/cli/main.ts'),
];

/** Runs the berth CLI from source. Tests that need the built CLI (inside containers) use BERTH_BIN. */
export function berth(args: readonly string[], opts: Parameters<typeof run>[2] = {}): Promise<RunResult> {
  const [node, ...pre] = BERTH_CMD;
  return run(node ?? process.execPath, [...pre, ...args], { cwd: ROOT, ...opts });
}

/** Runs Debian's docker CLI against `host` (a DOCKER_HOST value). */
export function docker(
  host: string,
  args: readonly string[],
  opts: Parameters<typeof run>[2] = {},
): Promise<RunResult> {
  return run(DOCKER_CLI, args, { ...opts, env: { DOCKER_HOST: host, ...opts.env } });
}

/** Starts a long-running program; the caller must stop it. */
export function start(file: string, args: readonly string[], opts: SpawnOptions = {}) {
  return spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
}

/** The pids of berth-front processes (the guard's fast front) whose parent is this process. */
export function frontProcesses(): number[] {
  const out: number[] = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const m = /^\d+ \((.*)\) \S+ (\d+)/.exec(readFileSync(`/proc/${pid}/stat`, 'utf8'));
      if (m?.[1] === 'berth-front' && Number(m[2]) === process.pid) out.push(Number(pid));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}
