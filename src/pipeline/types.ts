/** The resolved pipeline: what `parsePipeline` returns after defaults and matrix expansion. */

export type DockerMode = 'guard' | 'dind' | 'host' | 'none';
export const DOCKER_MODES: readonly DockerMode[] = ['guard', 'dind', 'host', 'none'];

export type When = 'on_success' | 'always' | 'on_failure';
export const WHEN_VALUES: readonly When[] = ['on_success', 'always', 'on_failure'];

/** How the job reaches Docker. `cache` is dind only; `tenant`/`keep` are guard only. */
export interface DockerSpec {
  mode: DockerMode;
  /** dind: name of the layer cache volume kept between runs. */
  cache?: string;
  /** guard: a persistent tenant (e.g. `env/production`) shared by jobs naming it. */
  tenant?: string;
  /** guard: keep the tenant's objects after the job ends. */
  keep?: boolean;
}

/** A sidecar container reachable from the job by `name`. */
export interface ServiceSpec {
  name: string;
  image: string;
  env: Record<string, string>;
  command?: string[];
  ports?: number[];
  ready?: { command: string; timeoutMs: number; intervalMs: number };
}

/** One shell line of a job; `index` is 0-based; `name` defaults to the command's first line. */
export interface StepSpec {
  index: number;
  run: string;
  name: string;
}

export interface JobSpec {
  /** Container-safe name; matrix expansions are `base-value1-value2` (see docs/pipeline.md). */
  name: string;
  image: string;
  docker: DockerSpec;
  /** Names of resolved jobs (matrix needs already expanded). */
  needs: string[];
  steps: StepSpec[];
  /** Top-level services merged with the job's (job wins by name). */
  services: ServiceSpec[];
  /** The job's own env (pipeline env is separate; the runner merges them, docs/pipeline.md). */
  env: Record<string, string>;
  /** Default /workspace. */
  workdir: string;
  timeoutMs: number | undefined;
  artifacts: string[];
  when: When;
  /** For matrix expansions: this expansion's values. */
  matrix?: Record<string, string>;
  /** The job's name in the source file, before matrix expansion. */
  base?: string;
  position: { line: number; column: number };
}

export interface SecretSpec {
  /** Environment variable name the secret is exposed as. */
  name: string;
  /** Read the value from this file (relative to the pipeline file) instead of the environment. */
  file?: string;
}

export interface Pipeline {
  file: string;
  /** The top-level `name` (default: `pipeline`). */
  name: string;
  version: number;
  /** In file order (matrix expansions in matrix order). */
  jobs: JobSpec[];
  env: Record<string, string>;
  variables: Record<string, string>;
  secrets: SecretSpec[];
}

/** One thing wrong with a pipeline file. `message` says what is wrong and what to change. */
export interface Problem {
  file: string;
  line: number;
  column: number;
  /** Dotted path, e.g. `jobs.build.steps[2]`. */
  path: string;
  message: string;
}

export const DEFAULT_IMAGE = 'berth-local/tools';
export const DEFAULT_WORKDIR = '/workspace';
