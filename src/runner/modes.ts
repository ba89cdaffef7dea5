/**
 * The guard and dind docker modes, plugged into the runner's provider table.
 */
import { chmodSync } from 'node:fs';
import { join } from 'node:path';
import { SOCKET_DIR_IN_CONTAINER, startDind } from '../dind/index.js';
import { createGuard } from '../guard/index.js';
import { registerDockerAccess } from './access.js';

/** Where the job's private host folder (with the guard socket) is mounted in the job container. */
export const GUARD_MOUNT = '/var/run/berth';

registerDockerAccess('guard', async (ctx) => {
  const persistent = ctx.spec.tenant !== undefined;
  const tenant = ctx.spec.tenant ?? `run/${ctx.runId}/${ctx.job}`;
  chmodSync(ctx.jobDir, 0o755);
  const guard = await createGuard({
    tenant,
    listen: join(ctx.jobDir, 'docker.sock'),
    upstream: ctx.client.dockerHost,
    maps: [{ jobPath: '/workspace', hostPath: ctx.workspace }],
    keep: ctx.spec.keep,
    // A persistent tenant's objects must outlive the run: they carry no run/owner labels, so
    // neither cleanup at the end nor the reaper removes them.
    labels: persistent ? ctx.extraLabels : ctx.labels,
  });
  ctx.log(`docker: guard, tenant ${tenant}${ctx.spec.keep ? ' (kept after the job)' : ''}`);
  return {
    binds: [`${ctx.jobDir}:${GUARD_MOUNT}`],
    env: { DOCKER_HOST: `unix://${GUARD_MOUNT}/docker.sock`, BERTH_TENANT: tenant },
    close: () => guard.close({ cleanup: !ctx.spec.keep }),
  };
});

/** Where the dind socket folder is mounted in the job container (the dind subsystem's contract). */
export const DIND_MOUNT = SOCKET_DIR_IN_CONTAINER;

registerDockerAccess('dind', async (ctx) => {
  const socketDir = join(ctx.jobDir, 'dind');
  const dind = await startDind({
    name: `${ctx.runId}-${ctx.job}`.replace(/[^a-zA-Z0-9_.-]/g, '-'),
    labels: ctx.labels,
    network: ctx.network,
    socketDir,
    cache: ctx.spec.cache,
    client: ctx.client,
    log: (line) => ctx.log(line),
  });
  ctx.log(`docker: dind (${dind.privilegeMode}, ${dind.storageDriver})`);
  return {
    binds: [`${socketDir}:${DIND_MOUNT}`],
    env: { DOCKER_HOST: dind.jobDockerHost },
    close: () => dind.close(),
  };
});
