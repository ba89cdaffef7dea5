/**
 * The guard and dind docker modes, plugged into the runner's provider table.
 */
import { chmodSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { BlockList, createServer, connect, isIPv4 } from 'node:net';
import type { Socket } from 'node:net';
import { BerthError, LOCAL_IMAGE_PREFIX } from '../common/index.js';
import { DockerClient, images, readAll } from '../engine/index.js';
import { join } from 'node:path';
import { SOCKET_DIR_IN_CONTAINER, startDind } from '../dind/index.js';
import { startGuardThread } from '../guard/index.js';
import { registerDockerAccess, registryEnv } from './access.js';

/** Where the job's private host folder (with the guard socket) is mounted in the job container. */
export const GUARD_MOUNT = '/var/run/berth';

registerDockerAccess('guard', async (ctx) => {
  const persistent = ctx.spec.tenant !== undefined;
  const tenant = ctx.spec.tenant ?? `run/${ctx.runId}/${ctx.job}`;
  chmodSync(ctx.jobDir, 0o755);
  // In a worker thread of its own: its heap stays small whatever the host process holds (the
  // server's would slow uploads through it; see docs/guard.md, "Performance notes").
  const guard = await startGuardThread({
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
    env: { DOCKER_HOST: `unix://${GUARD_MOUNT}/docker.sock`, BERTH_TENANT: tenant, ...registryEnv(ctx) },
    close: () => guard.close({ cleanup: !ctx.spec.keep }),
  };
});

/** Where the dind socket folder is mounted in the job container (the dind subsystem's contract). */
export const DIND_MOUNT = SOCKET_DIR_IN_CONTAINER;

registerDockerAccess('dind', async (ctx) => {
  const socketDir = join(ctx.jobDir, 'dind');
  const closers: (() => Promise<void>)[] = [];
  const closeAll = async () => {
    for (const c of closers.reverse()) await c().catch(() => undefined);
  };
  try {
    // A registry on the host's loopback is not reachable from the nested daemon's network
    // namespace: forward it from the job network's gateway (an address of this host).
    let registry = ctx.registry;
    if (registry !== undefined && isLoopback(registry)) {
      const fwd = await forwardRegistry(ctx.client, ctx.network, registry);
      closers.push(fwd.close);
      ctx.log(`registry ${registry} reachable from the nested daemon as ${fwd.address}`);
      registry = fwd.address;
    }
    const dind = await startDind({
      name: dindName(ctx.runId, ctx.job),
      labels: ctx.labels,
      network: ctx.network,
      socketDir,
      cache: ctx.spec.cache,
      insecureRegistries: registry === undefined ? undefined : [registry],
      client: ctx.client,
      log: (line) => ctx.log(line),
    });
    closers.push(() => dind.close());
    ctx.log(`docker: dind (${dind.privilegeMode}, ${dind.storageDriver})`);
    await preloadLocalImages(ctx.client, dind.dockerHost, (line) => ctx.log(line));
    return {
      binds: [`${socketDir}:${DIND_MOUNT}`],
      env: {
        DOCKER_HOST: dind.jobDockerHost,
        ...(registry === undefined ? {} : { BERTH_REGISTRY: registry }),
      },
      close: closeAll,
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
});

/**
 * The job's nested daemon's name: `<run>-<job>`, within dind's 128 characters (a long job name is
 * cut and given a hash of the whole, so two long names stay apart).
 */
export function dindName(runId: string, job: string): string {
  const name = `${runId}-${job}`.replace(/[^a-zA-Z0-9_.-]/g, '-');
  if (name.length <= 128) return name;
  const hash = createHash('sha256').update(job).digest('hex').slice(0, 12);
  return `${name.slice(0, 128 - 13)}-${hash}`;
}

function isLoopback(hostPort: string): boolean {
  const host = hostPort.replace(/:\d+$/, '');
  return host === 'localhost' || host.startsWith('127.') || host === '[::1]';
}

/** Listens on the network's gateway address (random port) and forwards to `target` (host:port). */
async function forwardRegistry(
  client: DockerClient,
  network: string,
  target: string,
): Promise<{ address: string; close: () => Promise<void> }> {
  const info = await client.json<{ IPAM?: { Config?: { Gateway?: string; Subnet?: string }[] | null } }>(
    'GET',
    `/networks/${encodeURIComponent(network)}`,
  );
  const config = info.IPAM?.Config?.find((c) => c.Gateway && c.Subnet);
  const gateway = config?.Gateway;
  const subnet = /^([0-9.]+)\/(\d+)$/.exec(config?.Subnet ?? '');
  if (!gateway || !subnet)
    throw new BerthError('RUN_FAILED', `network ${network} has no IPv4 gateway to forward the registry on`);
  // The gateway is an address of this host: every container on every network reaches it. Only the
  // job's own network may use the forwarder (red-team pass 26: a guard tenant's container read
  // the host's loopback registry through it).
  const allowed = new BlockList();
  allowed.addSubnet(subnet[1] ?? '', Number(subnet[2]), 'ipv4');
  const fromJob = (addr: string | undefined) => {
    const a = (addr ?? '').replace(/^::ffff:/, '');
    return isIPv4(a) && allowed.check(a, 'ipv4');
  };
  const m = /^(.*):(\d+)$/.exec(target);
  const [host, port] = m ? [m[1] ?? '127.0.0.1', Number(m[2])] : [target, 80];
  const sockets = new Set<Socket>();
  const server = createServer((down) => {
    if (!fromJob(down.remoteAddress)) {
      down.destroy();
      return;
    }
    const up = connect(port, host.replace(/^localhost$/, '127.0.0.1'));
    for (const s of [down, up]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        down.destroy();
        up.destroy();
      });
    }
    down.pipe(up).pipe(down);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, gateway, () => resolve());
  });
  const addr = server.address();
  const listenPort = typeof addr === 'object' && addr ? addr.port : 0;
  return {
    address: `${gateway}:${listenPort}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/**
 * Copies this host's `berth-local/*` images (except the dind image itself) into a fresh nested
 * daemon: there is no registry to pull them from, and Dockerfiles build FROM them.
 */
async function preloadLocalImages(
  host: DockerClient,
  nestedHost: string,
  log: (line: string) => void,
): Promise<void> {
  const local = (await images(host).list({ reference: `${LOCAL_IMAGE_PREFIX}*` }))
    .flatMap((i) => i.RepoTags ?? [])
    .filter((t) => t.startsWith(LOCAL_IMAGE_PREFIX) && !t.startsWith(`${LOCAL_IMAGE_PREFIX}dind`));
  if (local.length === 0) return;
  using nested = new DockerClient({ env: { DOCKER_HOST: nestedHost } });
  const tar = await host.request({ path: '/images/get', query: { names: local } });
  const res = await nested.request({
    method: 'POST',
    path: '/images/load',
    query: { quiet: true },
    body: tar,
    headers: { 'Content-Type': 'application/x-tar' },
  });
  await readAll(res);
  log(`preloaded into the nested daemon: ${local.join(', ')}`);
}
