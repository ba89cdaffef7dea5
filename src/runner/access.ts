/**
 * How a job gets Docker: one provider per mode. A provider prepares what the job container needs
 * (bind mounts, environment) before it is created, and tears it down after the job.
 *
 * - `none`: nothing.
 * - `host`: the engine's own socket, bind-mounted (with a loud warning: the job can do anything).
 * - `guard`: a berth guard for the job, listening on a socket in a per-job host folder that is
 *   bind-mounted into the job at /var/run/berth; the workspace path is translated.
 * - `dind`: a nested daemon in a sidecar, its socket folder mounted at /var/run/berth-dind.
 *
 * guard and dind come from other subsystems; they are plugged in with `registerDockerAccess` (see
 * docs/runner.md) so the runner does not depend on them being present.
 */
import { existsSync } from 'node:fs';
import { BerthError } from '../common/index.js';
import type { DockerClient } from '../engine/index.js';
import type { DockerMode, DockerSpec } from './spec.js';

export interface DockerAccessContext {
  client: DockerClient;
  runId: string;
  job: string;
  spec: DockerSpec;
  /** The workspace folder on the host (mounted at /workspace in the job). */
  workspace: string;
  /** A private host folder for this job (sockets, state); removed after the job. */
  jobDir: string;
  /** The job's network (services and the job container are on it). */
  network: string;
  /** Labels to put on everything created for the job (run, job, owner, test session…). */
  labels: Record<string, string>;
  /** An image registry as the host engine reaches it (host:port), if the run has one. */
  registry?: string;
  /** Only the caller's extra labels (no run/owner): for objects that must outlive the run. */
  extraLabels: Record<string, string>;
  warn(message: string): void;
  log(line: string): void;
}

export interface DockerAccess {
  /** Extra `HostConfig.Binds` for the job container. */
  binds: string[];
  /** Extra environment (`DOCKER_HOST`…) for the job container and its steps. */
  env: Record<string, string>;
  /** Tears down what the provider started; `keep` keeps a persistent tenant's objects. */
  close(): Promise<void>;
}

export type DockerAccessProvider = (ctx: DockerAccessContext) => Promise<DockerAccess>;

const providers = new Map<DockerMode, DockerAccessProvider>();

/** Plugs in (or replaces) the provider for a mode. */
export { registryEnv };

export function registerDockerAccess(mode: DockerMode, provider: DockerAccessProvider): void {
  providers.set(mode, provider);
}

/** Whether a provider for `mode` is available. */
export function hasDockerAccess(mode: DockerMode): boolean {
  return providers.has(mode);
}

export function dockerAccess(mode: DockerMode): DockerAccessProvider {
  const p = providers.get(mode);
  if (!p) {
    throw new BerthError('RUN_FAILED', `docker mode "${mode}" is not available in this build of berth`, {
      hint: `run with --docker host or --docker none, or set docker: on the job`,
    });
  }
  return p;
}

const registryEnv = (ctx: DockerAccessContext): Record<string, string> =>
  ctx.registry === undefined ? {} : { BERTH_REGISTRY: ctx.registry };

registerDockerAccess('none', () => Promise.resolve({ binds: [], env: {}, close: () => Promise.resolve() }));

registerDockerAccess('host', (ctx) => {
  ctx.warn(
    `job "${ctx.job}" gets the host's Docker socket (docker: host): it can start privileged containers, ` +
      'read any file on the host and see every other job; nothing it creates is cleaned up. Use guard or dind.',
  );
  const ep = ctx.client.endpoint;
  if (ep.url.startsWith('unix://')) {
    const path = ep.url.slice('unix://'.length);
    if (!existsSync(path))
      throw new BerthError('RUN_FAILED', `engine socket ${path} does not exist on this host`);
    return Promise.resolve({
      binds: [`${path}:/var/run/docker.sock`],
      env: { DOCKER_HOST: 'unix:///var/run/docker.sock', ...registryEnv(ctx) },
      close: () => Promise.resolve(),
    });
  }
  return Promise.resolve({
    binds: [],
    env: { DOCKER_HOST: ep.url, ...registryEnv(ctx) },
    close: () => Promise.resolve(),
  });
});
