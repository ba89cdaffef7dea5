/** What a step sees: its environment, git facts, and secret masking. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { BerthError } from '../common/index.js';
import type { JobSpec, Pipeline } from './types.js';

export interface RunContext {
  id: string;
  sha?: string;
  branch?: string;
}

export interface GitInfo {
  sha: string;
  branch: string | undefined;
}

/**
 * The environment of every step of `job`: CI variables, then pipeline `variables`, pipeline `env`,
 * job `env` (later wins; job env wins over everything), then `secrets` (name → value) if given.
 */
export function stepEnvironment(input: {
  pipeline: Pipeline;
  job: JobSpec;
  run: RunContext;
  registry?: string;
  secrets?: Record<string, string>;
}): Record<string, string> {
  const { pipeline, job, run } = input;
  const env: Record<string, string> = {
    CI: 'true',
    BERTH: 'true',
    BERTH_RUN_ID: run.id,
    BERTH_JOB: job.name,
    BERTH_PIPELINE: pipeline.name,
    BERTH_WORKSPACE: '/workspace',
    BERTH_DOCKER_MODE: job.docker.mode,
  };
  if (run.sha) env.BERTH_COMMIT_SHA = run.sha;
  if (run.sha) env.BERTH_COMMIT_SHORT_SHA = run.sha.slice(0, 8);
  if (run.branch) env.BERTH_BRANCH = run.branch;
  if (input.registry) env.BERTH_REGISTRY = input.registry;
  Object.assign(env, matrixEnvironment(job.matrix));
  return { ...env, ...pipeline.variables, ...pipeline.env, ...job.env, ...input.secrets };
}

/** A matrix expansion's values as `BERTH_MATRIX_<KEY>` variables (`node-version` → `NODE_VERSION`). */
export function matrixEnvironment(
  matrix: Readonly<Record<string, string>> | undefined,
): Record<string, string> {
  return Object.fromEntries(
    Object.entries(matrix ?? {}).map(([k, v]) => [`BERTH_MATRIX_${k.toUpperCase().replace(/-/g, '_')}`, v]),
  );
}

/** Values shorter than this are not masked (masking `1` or `on` would wreck every log line). */
export const MIN_SECRET_LENGTH = 4;

/**
 * Replaces every occurrence of each secret value in `line` with `***`, longest values first (so a
 * secret containing another is masked whole). Values shorter than MIN_SECRET_LENGTH are skipped.
 * Each multi-line value is also masked line by line. Base64 forms are NOT masked (documented).
 */
export function maskSecrets(line: string, values: readonly string[]): string {
  const parts = new Set<string>();
  for (const v of values) {
    if (v.length >= MIN_SECRET_LENGTH) parts.add(v);
    if (v.includes('\n'))
      for (const l of v.split(/\r?\n/)) if (l.trim().length >= MIN_SECRET_LENGTH) parts.add(l);
  }
  let out = line;
  for (const v of [...parts].sort((a, b) => b.length - a.length)) out = out.split(v).join('***');
  return out;
}

/** The commit SHA and branch of the git repository holding `dir`; undefined outside a repo. */
export function gitInfo(dir: string): GitInfo | undefined {
  const git = (args: string[]): string | undefined => {
    try {
      return execFileSync('git', args, {
        cwd: dir,
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }).trim();
    } catch {
      return undefined;
    }
  };
  const sha = git(['rev-parse', '--verify', 'HEAD']);
  if (!sha) return undefined;
  const branch = git(['symbolic-ref', '--short', '-q', 'HEAD']);
  return { sha, branch: branch || undefined };
}

/**
 * The values of the pipeline's `secrets`: from `environment` (default process.env), or from their
 * `file` (relative to the pipeline file; one trailing newline dropped). A missing secret is a
 * BERTH_CONFIG error naming every missing one.
 */
export function resolveSecrets(
  pipeline: Pipeline,
  environment: NodeJS.ProcessEnv = process.env,
): Record<string, string> {
  const out: Record<string, string> = {};
  const missing: string[] = [];
  for (const s of pipeline.secrets) {
    if (s.file !== undefined) {
      const path = resolve(dirname(pipeline.file), s.file);
      try {
        out[s.name] = readFileSync(path, 'utf8').replace(/\r?\n$/, '');
      } catch {
        missing.push(`${s.name} (file ${path} cannot be read)`);
      }
    } else if (environment[s.name] !== undefined) out[s.name] = environment[s.name] ?? '';
    else missing.push(`${s.name} (not in the environment)`);
  }
  if (missing.length > 0) {
    throw new BerthError('BERTH_CONFIG', `${pipeline.file}: missing secrets: ${missing.join(', ')}`, {
      hint: 'export each secret in the environment of berth, or create its file',
    });
  }
  return out;
}
