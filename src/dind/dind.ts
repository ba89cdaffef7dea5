/**
 * Nested Docker daemons in sidecar containers: privilege detection with fallback, a unix socket in
 * a host directory (or TCP in a shared network namespace), readiness on real API calls, storage
 * driver fallback, cache volumes locked to one daemon at a time, and cleanup by label.
 */
import { mkdtempSync, rmSync, mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import tar from 'tar-stream';
import {
  BerthError,
  errorMessage,
  isBerthError,
  LABEL_DIND,
  LABEL_DIND_CACHE,
  LABEL_JOB,
  LABEL_OWNER_HOST,
  LABEL_OWNER_PID,
  LABEL_ROLE,
  LABEL_RUN,
  LABEL_TENANT,
  ownerGone,
  sleep,
  tenantOf,
} from '../common/index.js';
import {
  DockerClient,
  containers,
  images,
  isConflict,
  isNotFound,
  parseEndpoint,
  readLogs,
  system,
  volumes,
} from '../engine/index.js';
import type { ContainerSummary } from '../engine/index.js';
import { CAPABILITIES, DIND_IMAGE, fallbackHostConfig, probePrivileges } from '../doctor/index.js';
import {
  CONFIG_DIR_IN_CONTAINER,
  SOCKET_DIR_IN_CONTAINER,
  SOCKET_NAME,
  classifyFailure,
  daemonJson,
  fallbackCaps,
  lastLines,
  names,
  startScript,
  storageCandidates,
  validateOptions,
} from './config.js';
import type { FailureCause } from './config.js';
import {
  isOwnCacheLock,
  isOwnCacheVolume,
  isOwnSidecar,
  ownSidecarName,
  ownSocketDir,
  socketDirBase,
} from './ownership.js';

/** Label on the sidecar: the host socket dir berth created for it (removed on down). */
const LABEL_SOCKET_DIR = 'io.berth.dind.socket-dir';
/** Label on the sidecar: "1" when berth created the socket dir itself. */
const LABEL_SOCKET_OWNED = 'io.berth.dind.socket-dir-owned';
/** Label on the sidecar: the cache lock it holds. */
const LABEL_CACHE_LOCK = 'io.berth.dind.cache-lock';

/**
 * The upstream docker image. Never picked on its own: on a shared engine any guard tenant can
 * create the tag `docker:dind`, and the sidecar runs privileged. Name it with `image` to use it.
 */
export const UPSTREAM_DIND_IMAGE = 'docker:dind';

export interface DindOptions {
  name: string;
  /** Image with dockerd; default berth-local/dind (docker:dind only when named here). */
  image?: string;
  /** Keep /var/lib/docker in the named volume berth-dind-cache-<key> across runs. */
  cache?: string;
  /** The group (numeric ID) that may open the daemon's socket; default: this process's group. */
  socketGroup?: number;
  /** What to do when another daemon holds the cache: wait (bounded), use a fresh volume, or fail. Default wait. */
  cacheBusy?: 'wait' | 'ephemeral' | 'fail';
  /** How long `cacheBusy: 'wait'` waits; default 10 minutes. */
  cacheWaitMs?: number;
  /** Prune the cache (build cache, unused images) when it exceeds this many bytes. */
  cacheMaxBytes?: number;
  /** Host directory that holds docker.sock; default a fresh dir under $XDG_RUNTIME_DIR or /tmp. */
  socketDir?: string;
  /** Also listen on TCP (for jobs sharing the sidecar's network namespace). */
  tcp?: { port: number; tls: boolean };
  registryMirrors?: string[];
  insecureRegistries?: string[];
  /** Default: the MTU of the sidecar's own interface. */
  mtu?: number;
  /** Default: overlay2, else fuse-overlayfs, else vfs. */
  storageDriver?: string;
  labels?: Record<string, string>;
  /** Network of the sidecar (default: the engine's default bridge). */
  network?: string;
  readyTimeoutMs?: number;
  log?: (line: string) => void;
  client?: DockerClient;
}

export interface DindHandle {
  /** For the host side, e.g. unix:///tmp/x/docker.sock. */
  dockerHost: string;
  /** What a job container that mounts socketDir at /var/run/berth-dind sees (or tcp://localhost:PORT). */
  jobDockerHost: string;
  socketDir?: string;
  /** With --tcp and TLS: the host dir with ca.pem, cert.pem, key.pem for clients (DOCKER_CERT_PATH). */
  certDir?: string;
  containerId: string;
  name: string;
  storageDriver: string;
  privilegeMode: 'privileged' | 'fallback-caps' | 'sysbox';
  /** The cache volume in use (absent when none, or when the busy cache made us run ephemeral). */
  cacheVolume?: string;
  close(opts?: { purge?: boolean }): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

export interface DindSummary {
  name: string;
  containerId: string;
  state: string;
  image: string;
  cache?: string;
  socketDir?: string;
}

/** Labels minus those that tie an object to one run (for the cache volume, which outlives runs). */
function outliving(labels: Record<string, string> | undefined): Record<string, string> {
  const per = new Set([LABEL_RUN, LABEL_JOB, LABEL_OWNER_PID, LABEL_OWNER_HOST, LABEL_TENANT]);
  return Object.fromEntries(Object.entries(labels ?? {}).filter(([k]) => !per.has(k)));
}

let announcedFallback = false;
const UNKNOWN_CAP = /unknown capability:?\s*"?(?:CAP_)?([A-Z_]+)/i;

/** Creates a container; where the engine does not know a capability in CapDrop, leaves it out and retries. */
async function createTolerant(
  client: DockerClient,
  body: Parameters<ReturnType<typeof containers>['create']>[0],
  name: string,
): Promise<string> {
  for (let i = 0; ; i++) {
    try {
      return (await containers(client).create(body, name)).Id;
    } catch (err) {
      const m = UNKNOWN_CAP.exec(errorMessage(err));
      const drop = body.HostConfig?.CapDrop as string[] | undefined;
      if (!m || !drop || i > 40) throw err;
      const unknown = (m[1] ?? '').toUpperCase();
      const next = drop.filter((c) => c.toUpperCase().replace(/^CAP_/, '') !== unknown);
      if (next.length === drop.length) throw err;
      body = { ...body, HostConfig: { ...body.HostConfig, CapDrop: next } };
    }
  }
}

/** Picks the privileges for the sidecar: sysbox if present, else --privileged, else the fallback. */
async function privilegeConfig(
  client: DockerClient,
  log: (l: string) => void,
): Promise<{ mode: DindHandle['privilegeMode']; hostConfig: Record<string, unknown> }> {
  const info = await system(client).info();
  const v2 = info.CgroupVersion === '2';
  const runtimes: unknown = info.Runtimes;
  if (typeof runtimes === 'object' && runtimes !== null && 'sysbox-runc' in runtimes)
    return { mode: 'sysbox', hostConfig: { Runtime: 'sysbox-runc' } };
  const report = await probePrivileges(client);
  if (report.privileged.ok)
    return {
      mode: 'privileged',
      hostConfig: { Privileged: true, ...(v2 ? { CgroupnsMode: 'private' } : {}) },
    };
  // An engine older than the kernel does not know some capabilities the bounding set lacks (400
  // "unknown capability"); "ALL" never grants those, so the create below simply leaves them out.
  if (!report.fallback.ok && !UNKNOWN_CAP.test(report.fallback.detail))
    throw new BerthError(
      'DIND_START_FAILED',
      `this host allows neither --privileged (${report.privileged.detail}) nor the fallback (${report.fallback.detail})`,
      { hint: 'run `berth doctor`; use the guard docker mode instead, or install sysbox' },
    );
  const { capDrop } = fallbackCaps(report.hostBounding, CAPABILITIES);
  const hc = fallbackHostConfig(
    report.privileged.missingCapabilities.length ? report.privileged.missingCapabilities : capDrop,
  );
  if (v2) {
    delete hc.Binds;
    hc.CgroupnsMode = 'private';
  }
  if (!announcedFallback) {
    announcedFallback = true;
    log(
      `dind: --privileged is refused here (${report.privileged.detail}); using all host capabilities${
        (hc.CapDrop as string[]).length ? ` except ${(hc.CapDrop as string[]).join(', ')}` : ''
      } with unconfined seccomp/apparmor/systempaths and the cgroup mount`,
    );
  }
  return { mode: 'fallback-caps', hostConfig: hc };
}

/**
 * The sidecar's image: the one asked for, else berth-local/dind — never a well-known name found on
 * the engine by chance (a guard tenant can create any tag nobody holds, e.g. docker:dind). An
 * image that names a guard tenant in its labels is refused: the sidecar runs privileged.
 */
async function pickImage(client: DockerClient, asked: string | undefined): Promise<string> {
  const image = asked || DIND_IMAGE;
  const found = await images(client).find(image);
  if (!found)
    throw new BerthError('DIND_START_FAILED', `the dind image ${image} is not on the engine`, {
      hint: asked
        ? `pull or build it first (\`berth images build-local\` builds ${DIND_IMAGE})`
        : `run \`berth images build-local\` (no registry needed), or pull ${UPSTREAM_DIND_IMAGE} and pass --image ${UPSTREAM_DIND_IMAGE}`,
    });
  const tenant = tenantOf(found.Config?.Labels);
  if (tenant !== undefined)
    throw new BerthError(
      'DIND_START_FAILED',
      `the dind image ${image} carries ${LABEL_TENANT}=${tenant}: it was made by a guard tenant, not by berth or the operator, and the sidecar runs privileged`,
      {
        hint: `rebuild ${DIND_IMAGE} with \`berth images build-local\` or name a trusted image with --image`,
        details: { image, tenant },
      },
    );
  return image;
}

/** The error for an object found under a berth dind name that berth did not make. */
function notBerths(
  what: string,
  objectName: string,
  labels: Record<string, string> | null | undefined,
  hint: string,
): BerthError {
  const tenant = tenantOf(labels);
  return new BerthError(
    'DIND_START_FAILED',
    `the ${what} ${objectName} already exists and was not made by berth${
      tenant !== undefined ? ` (it belongs to the guard tenant "${tenant}")` : ''
    }; refusing to use it`,
    { hint, details: { object: objectName, ...(tenant !== undefined ? { tenant } : {}) } },
  );
}

/** Takes the one-daemon-per-cache lock: a container named after the key (creation is atomic on the engine). */
async function acquireCacheLock(
  client: DockerClient,
  key: string,
  owner: string,
  image: string,
  labels: Record<string, string>,
  busy: 'wait' | 'ephemeral' | 'fail',
  waitMs: number,
  log: (l: string) => void,
): Promise<boolean> {
  const lockName = names.cacheLock(key);
  const until = Date.now() + waitMs;
  let said = false;
  for (;;) {
    try {
      await containers(client).create(
        {
          Image: image,
          Entrypoint: ['true'],
          Cmd: [],
          Labels: {
            ...labels,
            [LABEL_ROLE]: 'dind-cache-lock',
            [LABEL_DIND]: owner,
            [LABEL_DIND_CACHE]: key,
          },
          HostConfig: { NetworkMode: 'none' },
        },
        lockName,
      );
      return true;
    } catch (err) {
      if (!isConflict(err)) throw err;
    }
    // Held. A lock whose owner sidecar is gone (a killed runner) is stale.
    const lock = await containers(client).find(lockName);
    if (lock && !isOwnCacheLock(lock.Config.Labels, key))
      throw notBerths(
        'cache lock container',
        lockName,
        lock.Config.Labels,
        `remove it if it is not needed (it is not a berth cache lock), or use another cache key`,
      );
    if (lock) {
      const holder = lock.Config.Labels?.[LABEL_DIND] ?? '';
      const age = Date.now() - Date.parse((lock as unknown as { Created: string }).Created);
      // Only berth's own sidecar keeps a lock alive (a tenant can name a container berth-dind-*).
      const sidecar = holder ? await containers(client).find(names.sidecar(holder)) : undefined;
      const own = sidecar !== undefined && isOwnSidecar(sidecar.Config.Labels, holder);
      // The daemon of a run whose runner was killed keeps the lock until someone reaps the run
      // (red-team pass 26: a waiter sat out its whole wait): it is stopped and the lock taken. A
      // daemon of `berth dind up` (no run) outlives the command that started it on purpose.
      const orphaned =
        own && sidecar.Config.Labels?.[LABEL_RUN] !== undefined && ownerGone(sidecar.Config.Labels);
      if (orphaned || (!own && age > 30_000)) {
        if (orphaned) {
          log(
            `dind: the daemon ${holder} holding the cache "${key}" belongs to a run whose runner is gone; stopping it`,
          );
          await stopDind(client, holder, { log, id: sidecar.Id });
        } else log(`dind: removing the stale cache lock of ${holder || 'an unknown daemon'} on "${key}"`);
        await containers(client)
          .remove(lock.Id, { force: true })
          .catch((err: unknown) => {
            if (!isNotFound(err)) throw err;
          });
        continue;
      }
      if (busy === 'fail')
        throw new BerthError(
          'DIND_CACHE_BUSY',
          `the dind cache "${key}" is in use by the daemon "${holder}"`,
          {
            hint: 'wait for it, use another --cache key, or choose --cache-busy wait|ephemeral',
            details: { cache: key, holder },
          },
        );
      if (busy === 'ephemeral') {
        log(`dind: cache "${key}" is in use by "${holder}"; running on a fresh ephemeral volume`);
        return false;
      }
      if (!said) {
        log(
          `dind: cache "${key}" is in use by "${holder}"; waiting for it (up to ${Math.round(waitMs / 1000)} s)`,
        );
        said = true;
      }
    }
    if (Date.now() > until)
      throw new BerthError(
        'DIND_CACHE_BUSY',
        `waited ${Math.round(waitMs / 1000)} s for the dind cache "${key}"`,
        {
          hint: 'use another --cache key or --cache-busy ephemeral; a daemon left by a killed run goes with `berth reap`',
          details: { cache: key },
        },
      );
    await sleep(500);
  }
}

async function releaseCacheLock(client: DockerClient, key: string, owner: string): Promise<void> {
  const lockName = names.cacheLock(key);
  const lock = await containers(client).find(lockName);
  if (lock && isOwnCacheLock(lock.Config.Labels, key) && lock.Config.Labels?.[LABEL_DIND] === owner)
    await containers(client).remove(lock.Id, { force: true });
}

function tarOf(files: Record<string, string | Buffer>): Promise<Buffer> {
  const pack = tar.pack();
  for (const [name, content] of Object.entries(files))
    pack.entry({ name, mode: name.endsWith('key.pem') ? 0o600 : 0o644 }, content);
  pack.finalize();
  const chunks: Buffer[] = [];
  return new Promise((resolve, reject) => {
    pack.on('data', (b: unknown) => {
      chunks.push(b as Buffer);
    });
    pack.on('end', () => resolve(Buffer.concat(chunks)));
    pack.on('error', reject);
  });
}

/** Generates a CA, a server and a client certificate with openssl (host tool). */
function generateCerts(dir: string): { server: Record<string, Buffer>; client: Record<string, Buffer> } {
  const ossl = (args: string[]) => {
    const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
    if (r.error || r.status !== 0)
      throw new BerthError(
        'DIND_START_FAILED',
        `openssl ${args[0]} failed: ${r.error?.message ?? r.stderr}`,
        {
          hint: 'TLS for --tcp needs the openssl command on this host; or use --tls=false',
        },
      );
  };
  ossl([
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    'ca-key.pem',
    '-out',
    'ca.pem',
    '-days',
    '30',
    '-subj',
    '/CN=berth-dind-ca',
  ]);
  writeFileSync(
    join(dir, 'server.ext'),
    'subjectAltName=DNS:localhost,DNS:docker,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n',
  );
  writeFileSync(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  for (const who of ['server', 'client']) {
    ossl([
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      `${who}-key.pem`,
      '-out',
      `${who}.csr`,
      '-subj',
      `/CN=${who === 'server' ? 'localhost' : 'berth-client'}`,
    ]);
    ossl([
      'x509',
      '-req',
      '-in',
      `${who}.csr`,
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca-key.pem',
      '-CAcreateserial',
      '-out',
      `${who}-cert.pem`,
      '-days',
      '30',
      '-extfile',
      `${who}.ext`,
    ]);
  }
  const f = (n: string) => readFileSync(join(dir, n));
  return {
    server: {
      'certs/ca.pem': f('ca.pem'),
      'certs/server-cert.pem': f('server-cert.pem'),
      'certs/server-key.pem': f('server-key.pem'),
    },
    client: { 'ca.pem': f('ca.pem'), 'cert.pem': f('client-cert.pem'), 'key.pem': f('client-key.pem') },
  };
}

/** Starts a nested dockerd in a sidecar and answers once `/_ping` and `/info` answer through its socket. */
export async function startDind(opts: DindOptions): Promise<DindHandle> {
  validateOptions(opts);
  const client = opts.client ?? new DockerClient();
  const log = opts.log ?? (() => undefined);
  const name = opts.name;
  const sidecarName = names.sidecar(name);
  const readyTimeoutMs = opts.readyTimeoutMs ?? 60_000;
  const existing = await containers(client).find(sidecarName);
  if (existing && !isOwnSidecar(existing.Config.Labels, name))
    throw notBerths(
      'container',
      sidecarName,
      existing.Config.Labels,
      'pick another --name (berth never stops or reuses a container it did not make)',
    );
  if (existing)
    throw new BerthError('DIND_START_FAILED', `a dind daemon named "${name}" already exists`, {
      hint: `stop it with \`berth dind down ${name}\` or pick another --name`,
    });
  const image = await pickImage(client, opts.image);
  const priv = await privilegeConfig(client, log);

  const baseLabels: Record<string, string> = { ...opts.labels, [LABEL_DIND]: name, [LABEL_ROLE]: 'dind' };
  let cacheVolume: string | undefined;
  let lockKey: string | undefined;
  if (opts.cache) {
    const got = await acquireCacheLock(
      client,
      opts.cache,
      name,
      image,
      opts.labels ?? {},
      opts.cacheBusy ?? 'wait',
      opts.cacheWaitMs ?? 600_000,
      log,
    );
    if (got) {
      lockKey = opts.cache;
      const volName = names.cacheVolume(opts.cache);
      try {
        // The engine answers a create of an existing name with the existing volume, whoever made
        // it: a volume of that name a guard tenant made first must not become this privileged
        // daemon's /var/lib/docker.
        const vol = await volumes(client).create({
          Name: volName,
          // The cache outlives the run: no run/job/owner labels, so the reaper keeps it.
          Labels: { ...outliving(opts.labels), [LABEL_ROLE]: 'dind-cache', [LABEL_DIND_CACHE]: opts.cache },
        });
        if (!isOwnCacheVolume(vol.Labels, opts.cache))
          throw notBerths(
            'cache volume',
            volName,
            vol.Labels,
            `berth did not make it (it lacks ${LABEL_ROLE}=dind-cache and ${LABEL_DIND_CACHE}=${opts.cache}, or names a tenant): inspect and remove it, or use another cache key`,
          );
      } catch (err) {
        await releaseCacheLock(client, opts.cache, name).catch(() => undefined);
        throw err;
      }
      cacheVolume = volName;
    }
  }

  const ownsSocketDir = opts.socketDir === undefined;
  const socketDir = opts.socketDir ?? mkdtempSync(join(socketDirBase(), 'berth-dind-'));
  if (!ownsSocketDir) mkdirSync(socketDir, { recursive: true });
  const sockPath = join(socketDir, SOCKET_NAME);
  let certDir: string | undefined;
  let serverCerts: Record<string, Buffer> = {};
  const cleanupPartial = async (id?: string) => {
    if (id)
      await containers(client)
        .remove(id, { force: true, volumes: true })
        .catch(() => undefined);
    if (lockKey) await releaseCacheLock(client, lockKey, name).catch(() => undefined);
    if (ownsSocketDir) rmSync(socketDir, { recursive: true, force: true });
  };

  try {
    if (opts.tcp?.tls) {
      certDir = join(socketDir, 'certs');
      mkdirSync(certDir, { recursive: true });
      const work = mkdtempSync(join(tmpdir(), 'berth-dind-ca-'));
      try {
        const certs = generateCerts(work);
        serverCerts = certs.server;
        for (const [f, b] of Object.entries(certs.client))
          writeFileSync(join(certDir, f), b, { mode: 0o600 });
      } finally {
        rmSync(work, { recursive: true, force: true });
      }
    }
    const dataMount = cacheVolume
      ? { Type: 'volume', Source: cacheVolume, Target: '/var/lib/docker' }
      : {
          Type: 'volume',
          Target: '/var/lib/docker',
          VolumeOptions: { Labels: { ...baseLabels, [LABEL_ROLE]: 'dind-data' } },
        };
    const candidates = storageCandidates(opts.storageDriver);
    let lastErr: BerthError | undefined;
    for (const [i, driver] of candidates.entries()) {
      const cfg = daemonJson({
        storageDriver: driver,
        registryMirrors: opts.registryMirrors,
        insecureRegistries: opts.insecureRegistries,
        mtu: opts.mtu,
        tcp: opts.tcp,
        cgroupParent: names.cgroupParent(name),
        socketGroup: opts.socketGroup ?? process.getgid?.() ?? 0,
      });
      const hostConfig: Record<string, unknown> = { ...priv.hostConfig };
      hostConfig.Binds = [
        ...((hostConfig.Binds as string[] | undefined) ?? []),
        `${socketDir}:${SOCKET_DIR_IN_CONTAINER}`,
      ];
      hostConfig.Mounts = [dataMount];
      hostConfig.NetworkMode = opts.network ?? 'default';
      hostConfig.Init = false;
      const labels: Record<string, string> = {
        ...baseLabels,
        [LABEL_SOCKET_DIR]: socketDir,
        [LABEL_SOCKET_OWNED]: ownsSocketDir ? '1' : '0',
        ...(opts.cache ? { [LABEL_DIND_CACHE]: opts.cache } : {}),
        ...(lockKey ? { [LABEL_CACHE_LOCK]: lockKey } : {}),
      };
      let id: string;
      try {
        id = await createTolerant(
          client,
          {
            Image: image,
            Entrypoint: [
              'sh',
              '-c',
              startScript({
                mtuFromInterface: opts.mtu === undefined,
                cgroupParent: names.cgroupParent(name),
              }),
              'berth-dind',
            ],
            Cmd: [],
            Env: ['DOCKER_TLS_CERTDIR='],
            Labels: labels,
            Hostname: name.slice(0, 63),
            StopSignal: 'SIGTERM',
            HostConfig: hostConfig,
          },
          sidecarName,
        );
      } catch (err) {
        if (isConflict(err))
          throw new BerthError('DIND_START_FAILED', `a dind daemon named "${name}" already exists`, {
            hint: `stop it with \`berth dind down ${name}\` or pick another --name`,
          });
        throw err;
      }
      try {
        await containers(client).putArchive(
          id,
          '/',
          await tarOf({
            [`${CONFIG_DIR_IN_CONTAINER.slice(1)}/daemon.json`]: `${JSON.stringify(cfg, null, 2)}\n`,
            ...Object.fromEntries(
              Object.entries(serverCerts).map(([k, v]) => [`${CONFIG_DIR_IN_CONTAINER.slice(1)}/${k}`, v]),
            ),
          }),
        );
        await containers(client).start(id);
        const storageDriver = await waitReady(client, id, sockPath, readyTimeoutMs);
        log(`dind: "${name}" ready (${storageDriver}, ${priv.mode}) at unix://${sockPath}`);
        const tcpHost = opts.tcp ? `tcp://localhost:${opts.tcp.port}` : undefined;
        const handle: DindHandle = {
          dockerHost: `unix://${sockPath}`,
          jobDockerHost: tcpHost ?? `unix://${SOCKET_DIR_IN_CONTAINER}/${SOCKET_NAME}`,
          socketDir,
          ...(certDir ? { certDir } : {}),
          containerId: id,
          name,
          storageDriver,
          privilegeMode: priv.mode,
          ...(cacheVolume ? { cacheVolume } : {}),
          close: async (o = {}) => {
            if (opts.cacheMaxBytes !== undefined && cacheVolume)
              await pruneIfOver(`unix://${sockPath}`, opts.cacheMaxBytes, log).catch((e: unknown) =>
                log(`dind: cache prune failed: ${errorMessage(e)}`),
              );
            await stopDind(client, name, { purge: o.purge, log });
          },
          [Symbol.asyncDispose]: () => handle.close(),
        };
        return handle;
      } catch (err) {
        const retry =
          isBerthError(err, 'DIND_START_FAILED') &&
          err.details?.cause === 'storage' &&
          i < candidates.length - 1;
        await containers(client)
          .remove(id, { force: true, volumes: true })
          .catch(() => undefined);
        if (!retry) throw err;
        lastErr = err;
        log(`dind: storage driver ${driver} does not work here; trying ${candidates[i + 1]}`);
      }
    }
    throw lastErr ?? new BerthError('DIND_START_FAILED', 'no storage driver worked');
  } catch (err) {
    await cleanupPartial();
    throw err;
  }
}

/** Polls `/_ping` then `/info` on the nested daemon; on exit or timeout fails with its last log lines and the likely cause. */
async function waitReady(
  client: DockerClient,
  id: string,
  sockPath: string,
  timeoutMs: number,
): Promise<string> {
  const until = Date.now() + timeoutMs;
  let lastProblem = '';
  for (;;) {
    if (existsSync(sockPath)) {
      const nested = new DockerClient({ endpoint: parseEndpoint({ DOCKER_HOST: `unix://${sockPath}` }) });
      try {
        await nested.ping();
        const info = await system(nested).info();
        return info.Driver;
      } catch (err) {
        lastProblem = errorMessage(err);
      } finally {
        nested.close();
      }
    }
    const c = await containers(client).inspect(id);
    if (!c.State.Running) return fail(`the nested dockerd exited (code ${c.State.ExitCode})`);
    // A socket this user may not open stays so: no other driver or wait changes that.
    if (/EACCES|EPERM/.test(lastProblem))
      return fail(`cannot open the nested dockerd's socket ${sockPath} (${lastProblem})`, {
        cause: 'socket-permission',
        hint: 'the socket belongs to root and the group berth was started with: start berth as a user of that group, or as root',
      });
    // Still running, not answering: a slow start, not a failed one (its log says nothing is wrong).
    if (Date.now() > until)
      return fail(
        `the nested dockerd did not answer within ${Math.round(timeoutMs / 1000)} s${lastProblem ? ` (${lastProblem})` : ''}`,
        {
          cause: 'timeout',
          hint: 'the daemon is still starting: give it longer (--timeout), or see its log above for what it waits on',
        },
      );
    await sleep(50);
  }
  async function fail(what: string, known?: { cause: FailureCause; hint: string }): Promise<never> {
    const logs = await readLogs(client, id).catch(() => ({ stdout: '', stderr: '' }));
    const text = `${logs.stdout}\n${logs.stderr}`;
    const lines = lastLines(text, 12);
    const { cause, hint } = known ?? classifyFailure(lines.join('\n'));
    throw new BerthError(
      'DIND_START_FAILED',
      `${what}; likely cause: ${cause}\n${lines.map((l) => `  | ${l}`).join('\n')}`,
      {
        hint,
        details: { cause, log: lines },
      },
    );
  }
}

async function pruneIfOver(host: string, maxBytes: number, log: (l: string) => void): Promise<void> {
  const nested = new DockerClient({ endpoint: parseEndpoint({ DOCKER_HOST: host }) });
  try {
    const df = await nested.json<{ LayersSize?: number; BuildCache?: { Size: number }[] | null }>(
      'GET',
      '/system/df',
    );
    const used = (df.LayersSize ?? 0) + (df.BuildCache ?? []).reduce((a, b) => a + b.Size, 0);
    if (used <= maxBytes) return;
    log(`dind: cache uses ${used} bytes, over the cap of ${maxBytes}: pruning`);
    await nested.json('POST', '/build/prune', { query: { all: true } });
    await nested.json('POST', '/images/prune', {
      query: { filters: JSON.stringify({ dangling: ['false'] }) },
    });
  } finally {
    nested.close();
  }
}

/** Stops a dind daemon by name: its containers die with it; its anonymous volumes go; the cache volume stays unless purge. */
export async function stopDind(
  client: DockerClient,
  name: string,
  opts: {
    purge?: boolean | undefined;
    log?: ((line: string) => void) | undefined;
    /** Only when the sidecar is this container (a reaper that judged one it listed). */
    id?: string | undefined;
  } = {},
): Promise<{ removed: boolean; purged?: string }> {
  const found = await containers(client).find(names.sidecar(name));
  // A container under the sidecar's name that berth did not make (a guard tenant can name one
  // berth-dind-*) is not a daemon: it is neither stopped nor trusted for the paths in its labels.
  const c =
    found && isOwnSidecar(found.Config.Labels, name) && (opts.id === undefined || found.Id === opts.id)
      ? found
      : undefined;
  const labels = c?.Config.Labels ?? {};
  if (c) {
    if (c.State.Running)
      await containers(client)
        .stop(c.Id, 20)
        .catch(() => undefined);
    await containers(client).remove(c.Id, { force: true, volumes: true });
    const lock = labels[LABEL_CACHE_LOCK];
    if (lock) await releaseCacheLock(client, lock, name);
    const dir = labels[LABEL_SOCKET_DIR];
    if (dir) {
      if (labels[LABEL_SOCKET_OWNED] === '1') {
        // Removed recursively only when it is a dir startDind makes itself, whatever the label says.
        const own = ownSocketDir(dir);
        if (own !== undefined) rmSync(own, { recursive: true, force: true });
        else if (existsSync(dir))
          opts.log?.(
            `dind: left ${dir} in place: it is not a socket dir berth made (berth-dind-* in ${socketDirBase()})`,
          );
      } else {
        rmSync(join(dir, SOCKET_NAME), { force: true });
        rmSync(join(dir, 'certs'), { recursive: true, force: true });
      }
    }
  }
  if (!c)
    throw new BerthError(
      'DIND_NOT_FOUND',
      found && isOwnSidecar(found.Config.Labels, name)
        ? `the dind daemon "${name}" is no longer the container ${opts.id?.slice(0, 12) ?? ''}`
        : found
          ? `no dind daemon named "${name}": the container ${names.sidecar(name)} was not made by berth${
              tenantOf(found.Config.Labels) !== undefined
                ? ` (it belongs to the guard tenant "${tenantOf(found.Config.Labels)}")`
                : ''
            }`
          : `no dind daemon named "${name}"`,
      {
        hint: 'see `berth dind ls`; a kept cache is removed with `berth dind purge KEY`',
      },
    );
  let purged: string | undefined;
  const key = labels[LABEL_DIND_CACHE];
  if (opts.purge && key && (await purgeCache(client, key))) purged = names.cacheVolume(key);
  return { removed: true, ...(purged ? { purged } : {}) };
}

/**
 * Removes a cache volume (must not be in use). A volume of that name that berth did not make
 * (a guard tenant's) is refused with DIND_NOT_FOUND, never removed.
 */
export async function purgeCache(client: DockerClient, key: string): Promise<boolean> {
  const name = names.cacheVolume(key);
  const vol = await volumes(client)
    .inspect(name)
    .catch((err: unknown) => {
      if (isNotFound(err)) return undefined;
      throw err;
    });
  if (!vol) return false;
  if (!isOwnCacheVolume(vol.Labels, key)) {
    const tenant = tenantOf(vol.Labels);
    throw new BerthError(
      'DIND_NOT_FOUND',
      `the volume ${name} is not a dind cache berth made${tenant !== undefined ? ` (it belongs to the guard tenant "${tenant}")` : ''}; not removing it`,
      { details: { volume: name, ...(tenant !== undefined ? { tenant } : {}) } },
    );
  }
  try {
    return await volumes(client).remove(name);
  } catch (err) {
    if (!isConflict(err)) throw err;
    // In use: by the daemon that holds the cache's lock (red-team pass 26: the engine's bare 409
    // came out, with the exit code of an unreachable engine).
    const holder = await containers(client)
      .inspect(names.cacheLock(key))
      .then((c) => c.Config.Labels?.[LABEL_DIND] ?? undefined)
      .catch(() => undefined);
    throw new BerthError(
      'DIND_CACHE_BUSY',
      `the dind cache "${key}" is in use${holder ? ` by the nested daemon "${holder}"` : ''}; not removing it`,
      {
        hint: holder
          ? `stop it first: berth dind down ${holder}`
          : 'stop the nested daemon that uses it first (berth dind ls)',
        details: { volume: name, ...(holder ? { holder } : {}) },
      },
    );
  }
}

/**
 * The dind daemons on the engine: containers that are themselves berth's sidecars (named
 * `berth-dind-<io.berth.dind>`, io.berth.role=dind, no tenant: see ownSidecarName). A container
 * that merely carries those labels (a guard tenant's, or a tenant's build step container, which
 * has its Dockerfile's labels and no tenant label) is not a daemon.
 */
export async function listDind(client: DockerClient): Promise<DindSummary[]> {
  const list: ContainerSummary[] = await containers(client).list({
    all: true,
    filters: { label: [`${LABEL_ROLE}=dind`] },
  });
  return list.flatMap((c) => {
    const name = ownSidecarName(c);
    if (name === undefined) return [];
    const l = c.Labels ?? {};
    return [
      {
        name,
        containerId: c.Id,
        state: c.State,
        image: c.Image,
        ...(l[LABEL_DIND_CACHE] ? { cache: l[LABEL_DIND_CACHE] } : {}),
        ...(l[LABEL_SOCKET_DIR] ? { socketDir: l[LABEL_SOCKET_DIR] } : {}),
      },
    ];
  });
}
