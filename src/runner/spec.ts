/**
 * The runner's view of a pipeline (`RunSpec`), mapped from `src/pipeline`'s `Pipeline`, which owns
 * parsing and validation (every problem at once, with file, line, column and what to change).
 */
import { readFileSync, realpathSync } from 'node:fs';
import { basename, dirname, resolve, sep } from 'node:path';
import { BerthError } from '../common/index.js';
import {
  DEFAULT_IMAGE,
  loadPipeline,
  maskSecrets as maskLine,
  matrixEnvironment,
  parsePipeline,
} from '../pipeline/index.js';
import type { Pipeline } from '../pipeline/index.js';

export { DEFAULT_IMAGE };
export const DOCKER_MODES = ['guard', 'dind', 'host', 'none'] as const;
export type DockerMode = (typeof DOCKER_MODES)[number];
export const WHEN_VALUES = ['on_success', 'on_failure', 'always'] as const;
export type When = (typeof WHEN_VALUES)[number];

export interface DockerSpec {
  mode: DockerMode;
  /** A persistent tenant whose objects outlive the job (guard mode). */
  tenant?: string;
  /** Keep the tenant's objects when the job ends. */
  keep: boolean;
  /** dind: the layer cache kept between runs. */
  cache?: string;
}

export interface ServiceSpec {
  name: string;
  image: string;
  command?: string[];
  env: Record<string, string>;
  /** A shell command run inside the service until it exits 0. */
  ready?: string;
  /** How long to wait for `ready`, in ms. */
  readyTimeoutMs: number;
  /** Pause between `ready` attempts, in ms. */
  readyIntervalMs: number;
}

export interface StepSpec {
  name: string;
  run: string;
  env: Record<string, string>;
}

export interface JobSpec {
  name: string;
  image: string;
  needs: string[];
  when: When;
  timeoutMs?: number;
  docker: DockerSpec;
  env: Record<string, string>;
  /** Where steps run (default /workspace). */
  workdir: string;
  services: ServiceSpec[];
  steps: StepSpec[];
  /** Paths (relative to /workspace or absolute) copied out of the job container at the end. */
  artifacts: string[];
}

export interface RunSpec {
  name: string;
  file: string;
  /** The workspace: the folder holding the pipeline file. */
  workspace: string;
  env: Record<string, string>;
  /** Defaults that `--var K=V` overrides (the pipeline's `env` and job `env` win over both). */
  variables: Record<string, string>;
  /** Names of environment variables whose values are secrets (masked in every log). */
  secrets: string[];
  /** Secrets read from files: name → value. */
  secretFiles: Record<string, string>;
  jobs: JobSpec[];
}

/** Reads and validates a pipeline file. Throws PIPELINE_NOT_FOUND / PIPELINE_INVALID. */
export function loadRunSpec(file: string, opts: FromPipelineOptions = {}): RunSpec {
  const path = resolve(file);
  return fromPipeline(loadPipeline(path), path, opts);
}

export interface FromPipelineOptions {
  /**
   * Why secrets from files may not be read, when they may not: a server run's pipeline comes from
   * whoever pushed, and a path it names could be anything on the server (`/etc/shadow`, the
   * server's own store). The message says what to do instead.
   */
  refuseSecretFiles?: string;
}

/** Parses pipeline text; `file` is used for messages and as the workspace anchor. */
export function parseRunSpec(text: string, file: string): RunSpec {
  return fromPipeline(parsePipeline(text, file), file);
}

/** The runner's view of a parsed pipeline. Secrets from files are read here (relative to the file). */
export function fromPipeline(p: Pipeline, file = p.file, opts: FromPipelineOptions = {}): RunSpec {
  const workspace = dirname(resolve(file));
  const secretFiles: Record<string, string> = {};
  for (const s of p.secrets) {
    if (s.file === undefined) continue;
    if (opts.refuseSecretFiles !== undefined)
      throw new BerthError(
        'PIPELINE_INVALID',
        `${file}: secret ${s.name}: not read from ${s.file}: ${opts.refuseSecretFiles}`,
      );
    let path: string;
    try {
      path = realpathSync(resolve(workspace, s.file));
    } catch (cause) {
      throw new BerthError('PIPELINE_INVALID', `${file}: secret ${s.name}: cannot read ${s.file}`, { cause });
    }
    // Only inside the workspace, links resolved (red-team pass 23: a pipeline named /etc/shadow,
    // and the job got it): whoever wrote the pipeline may not read the runner's machine.
    const root = realpathSync(workspace);
    if (!path.startsWith(`${root}${sep}`))
      throw new BerthError(
        'PIPELINE_INVALID',
        `${file}: secret ${s.name}: ${s.file} is outside the workspace ${root}; a secret file is read only from inside it (an untracked file), or pass the secret in the environment`,
      );
    try {
      secretFiles[s.name] = readFileSync(path, 'utf8').replace(/\r?\n$/, '');
    } catch (cause) {
      throw new BerthError('PIPELINE_INVALID', `${file}: secret ${s.name}: cannot read ${s.file}`, { cause });
    }
  }
  return {
    name: basename(workspace),
    file,
    workspace,
    env: { ...p.env },
    variables: { ...p.variables },
    secrets: p.secrets.filter((s) => s.file === undefined).map((s) => s.name),
    secretFiles,
    jobs: p.jobs.map((j) => ({
      name: j.name,
      image: j.image,
      needs: [...j.needs],
      when: j.when,
      timeoutMs: j.timeoutMs,
      docker: {
        mode: j.docker.mode,
        tenant: j.docker.tenant,
        keep: j.docker.keep ?? false,
        cache: j.docker.cache,
      },
      // A matrix expansion's values come first: the job's own env may set the same names.
      env: { ...matrixEnvironment(j.matrix), ...j.env },
      workdir: j.workdir,
      services: j.services.map((s) => ({
        name: s.name,
        image: s.image,
        command: s.command,
        env: { ...s.env },
        ready: s.ready?.command,
        readyTimeoutMs: s.ready?.timeoutMs ?? 60_000,
        readyIntervalMs: s.ready?.intervalMs ?? 500,
      })),
      steps: j.steps.map((st) => ({ name: st.name, run: st.run, env: {} })),
      artifacts: [...j.artifacts],
    })),
  };
}

/** Masks every secret value in text (multi-line text is masked line by line). */
export function maskSecrets(text: string, secrets: readonly string[]): string {
  return text
    .split('\n')
    .map((l) => maskLine(l, secrets))
    .join('\n');
}

/** "90s", "10m", "1h", "1500ms" or a number of seconds → ms (for CLI options such as --grace). */
export function parseDuration(raw: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(raw);
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = m[2] ?? 's';
  const factor = unit === 'ms' ? 1 : unit === 's' ? 1000 : unit === 'm' ? 60_000 : 3_600_000;
  return Math.round(n * factor);
}
