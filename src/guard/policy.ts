/**
 * The guard's rules: pure functions over a canonical request body plus facts the proxy resolved
 * upstream. Each refusal names its rule; a policy file may allow named rules for trusted tenants.
 */
import { posix } from 'node:path';
import type { Decision, PathMap, Policy, RuleName, TenantLimits } from './contracts.js';
import { LABEL_PREFIX, LABEL_TENANT } from '../common/index.js';
import { RESERVED_NETWORK, registryOf } from './ownership.js';
import { BodyError, canonicalUlimits, isRecord } from './canonical.js';

export const DEFAULT_SAFE_SYSCTLS: readonly string[] = [
  'net.ipv4.ip_unprivileged_port_start',
  'net.ipv4.ping_group_range',
  'net.ipv4.ip_local_port_range',
  'net.ipv4.tcp_syncookies',
  'net.ipv4.tcp_keepalive_time',
  'net.ipv4.tcp_keepalive_intvl',
  'net.ipv4.tcp_keepalive_probes',
  'net.ipv4.tcp_fin_timeout',
  'net.core.somaxconn',
];

export function defaultPolicy(): Policy {
  return { allow: new Set(), safeSysctls: new Set(DEFAULT_SAFE_SYSCTLS), limits: {} };
}

export class Refusal extends Error {
  constructor(
    readonly rule: RuleName,
    readonly why: string,
    readonly status: 400 | 403 | 404 | 409 = 403,
  ) {
    super(`berth: ${rule}: ${why}`);
  }
  decision(): Extract<Decision, { allow: false }> {
    return { allow: false, status: this.status, rule: this.rule, message: this.message };
  }
}

/** Resolves container/network/volume references; throws a 404 Refusal for what the tenant cannot see. */
export interface Resolver {
  container(ref: string): string; // full ID of an owned container
  network(ref: string): string; // full ID of an owned network
  /** Whether a named volume exists owned by the tenant (true), does not exist (false); throws if not owned. */
  volume(name: string): boolean;
  /**
   * What to forward for a bind source (a path the tenant cannot change: see pin.ts), or why it is
   * refused. `create`: the source came from `Binds` (dockerd makes it if missing), not `Mounts`.
   */
  bind(source: string, create: boolean): { forward: string } | { refused: string };
}

function check(policy: Policy, rule: RuleName, refused: boolean, why: string): void {
  if (refused && !policy.allow.has(rule)) throw new Refusal(rule, why);
}

/** The path to forward for a bind source (the resolver's answer), or the binds rule's refusal. */
function bindSource(r: Resolver, policy: Policy, src: string, create: boolean): string {
  const bound = r.bind(src, create);
  if ('refused' in bound) {
    check(policy, 'binds', true, bound.refused);
    return src; // the policy allows binds: forwarded as written
  }
  return bound.forward;
}

const str = (v: unknown): string => (typeof v === 'string' ? v : '');
const list = (v: unknown): string[] =>
  Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
const obj = (v: unknown): Record<string, unknown> => (isRecord(v) ? v : {});

/**
 * berth's own labels (`io.berth.*`) are read by host-side code (dind sidecars, reapers, runs): a
 * tenant may not set one, except with the value its guard sets anyway. The tenant label itself
 * is handled where it can appear (overridden, or emptied on images).
 */
export function checkLabels(what: string, labels: unknown, own: Readonly<Record<string, string>>): void {
  for (const [k, v] of Object.entries(obj(labels))) {
    if (!k.startsWith(LABEL_PREFIX) || k === LABEL_TENANT || own[k] === v) continue;
    throw new Refusal(
      'ownership',
      `${what}: the label ${k} is berth's own; labels under ${LABEL_PREFIX} are set by berth only`,
    );
  }
}

/**
 * Names berth's own host-side objects use (dind sidecars, their cache volumes and cache locks): a
 * tenant's container or volume of such a name would be taken for berth's.
 */
export function checkReservedName(kind: 'container' | 'volume', name: string | null): void {
  if (name !== null && /^\/?berth-dind/i.test(name))
    throw new Refusal(
      'ownership',
      `${kind} names starting with berth-dind are reserved for berth's nested daemons (${name})`,
    );
  if (kind === 'volume' && name !== null && name.toLowerCase().startsWith('berth-tag-'))
    throw new Refusal('ownership', `volume names starting with berth-tag- are reserved for berth (${name})`);
}

/** The image repositories berth builds on the host and runs itself (`berth images build-local`). */
export function checkReservedRepository(repository: string): void {
  if (/^berth-local\//i.test(repository))
    throw new Refusal(
      'image-tag',
      `${repository}: repositories under berth-local/ are berth's own (built on the host by berth images build-local)`,
    );
}

/**
 * `changes` of a commit or an import: dockerd joins them with newlines and reads them as a
 * Dockerfile, after which the guard's own last change (`LABEL io.berth.tenant=""`) must still be a
 * line of its own. A change that continues onto the next line (a trailing escape character), sets
 * the escape character (a `#` parser directive), holds a line break, or names berth's labels is
 * refused.
 */
export function checkChanges(changes: readonly string[]): void {
  for (const c of changes) {
    const why = /[\r\n]/.test(c)
      ? 'holds a line break'
      : /^\s*#/.test(c)
        ? 'is a comment or parser directive'
        : /[\\`]\s*$/.test(c)
          ? 'ends with an escape character (it would continue onto the next change)'
          : c
                .replace(/[\\"'`]/g, '')
                .toLowerCase()
                .includes(LABEL_PREFIX)
            ? `names a label under ${LABEL_PREFIX}, which berth sets only`
            : /^\s*label\b/i.test(c) && c.includes('$')
              ? 'is a LABEL with a variable, which berth cannot read'
              : undefined;
    if (why !== undefined) throw new Refusal('ownership', `the change ${JSON.stringify(c)} ${why}`);
  }
}

/**
 * dockerd keeps every health probe's command, as an exec, until its container goes: a probe
 * command is a few words in real use.
 */
export const MAX_HEALTH_TEST_BYTES = 4096;

function checkHealthTest(test: unknown, policy: Policy): void {
  const bytes = Array.isArray(test)
    ? test.reduce<number>((n, a) => n + Buffer.byteLength(String(a)) + 1, 0)
    : 0;
  check(
    policy,
    'resources',
    bytes > MAX_HEALTH_TEST_BYTES,
    `the health check command is ${bytes} bytes (over ${MAX_HEALTH_TEST_BYTES}); dockerd keeps every probe's command`,
  );
}

/** Container logs: what berth sets where the tenant sets nothing, and the largest it passes. */
export const DEFAULT_LOG_MAX_SIZE = '10m';
const MAX_LOG_BYTES = 100 * 1024 * 1024;

/** A log max-size as dockerd reads it (`10m`, `1g`, `500k`, bytes); NaN when unreadable. */
export function logBytes(size: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)\s*([kmg]?)b?$/i.exec(size.trim());
  if (!m) return Number.NaN;
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m[2] ?? '').toLowerCase()] ?? Number.NaN;
  return Number(m[1]) * unit;
}

/** The shortest health check interval, timeout and start period berth passes (dockerd takes 1 ms). */
export const MIN_HEALTH_INTERVAL_NS = 1_000_000_000;

/** The map whose job path holds `source` (the longest wins), and the path below it. Pure. */
export function mapFor(source: string, maps: readonly PathMap[]): { map: PathMap; rest: string } | undefined {
  const clean = posix.normalize(source);
  let best: { map: PathMap; jp: string } | undefined;
  for (const m of maps) {
    const jp = posix.normalize(m.jobPath).replace(/\/+$/, '') || '/';
    if (isInside(clean, jp) && (!best || jp.length > best.jp.length)) best = { map: m, jp };
  }
  if (!best) return undefined;
  return { map: best.map, rest: clean.slice(best.jp.length).replace(/^\/+/, '') };
}

/** Translates a job path into the host path through the maps (longest prefix wins). Pure. */
export function translateJobPath(source: string, maps: readonly PathMap[]): string | undefined {
  const found = mapFor(source, maps);
  if (!found) return undefined;
  const { map, rest } = found;
  return rest === '' ? posix.normalize(map.hostPath) : posix.join(map.hostPath, rest);
}

/** Whether `path` is `root` or inside it. */
export function isInside(path: string, root: string): boolean {
  const r = root.replace(/\/+$/, '') || '/';
  return path === r || path.startsWith(r === '/' ? '/' : `${r}/`);
}

const NS_FIELDS = ['PidMode', 'IpcMode', 'UTSMode', 'UsernsMode', 'CgroupnsMode'] as const;
const NS_ALLOWED: Record<(typeof NS_FIELDS)[number], readonly string[]> = {
  PidMode: [''],
  IpcMode: ['', 'private', 'shareable', 'none'],
  UTSMode: [''],
  UsernsMode: [''],
  CgroupnsMode: ['', 'private'],
};
const SAFE_SECURITY_OPTS = /^no-new-privileges([:=]true)?$/;
const SAFE_LOG_DRIVERS = new Set(['', 'json-file', 'local']);

export interface CreateContext {
  labels: Readonly<Record<string, string>>;
  network: string;
  policy: Policy;
  containerCount: number;
  /** The health check of the image the container is made from (dockerd merges it in). */
  imageHealthcheck?: unknown;
}

/** Applies every container rule to a canonical create body; returns the body to forward. */
export function checkContainerCreate(
  body: Record<string, unknown>,
  ctx: CreateContext,
  r: Resolver,
): Record<string, unknown> {
  const p = ctx.policy;
  const hc = { ...obj(body.HostConfig) };
  const out: Record<string, unknown> = { ...body, HostConfig: hc };

  check(p, 'privileged', hc.Privileged === true, 'privileged containers are not allowed');
  check(
    p,
    'capabilities',
    list(hc.CapAdd).length > 0,
    `added capabilities are not allowed (${list(hc.CapAdd).join(', ')})`,
  );
  check(p, 'devices', Array.isArray(hc.Devices) && hc.Devices.length > 0, 'host devices are not allowed');
  check(p, 'devices', list(hc.DeviceCgroupRules).length > 0, 'device cgroup rules are not allowed');
  check(
    p,
    'devices',
    Array.isArray(hc.DeviceRequests) && hc.DeviceRequests.length > 0,
    'device requests are not allowed',
  );
  for (const f of NS_FIELDS) {
    const v = str(hc[f]);
    if (f !== 'UTSMode' && f !== 'UsernsMode' && v.startsWith('container:')) {
      hc[f] = `container:${r.container(v.slice('container:'.length))}`;
      continue;
    }
    check(
      p,
      'namespaces',
      !NS_ALLOWED[f].includes(v),
      `${f}=${v} shares a namespace with the host or another container`,
    );
  }
  // Unset, dockerd gives the host's cgroup namespace on cgroup v1 hosts (and to API < 1.41 clients):
  // ask for a private one unless the tenant may share namespaces.
  if (str(hc.CgroupnsMode) === '' && !p.allow.has('namespaces')) hc.CgroupnsMode = 'private';
  for (const opt of list(hc.SecurityOpt)) {
    check(
      p,
      'security-opt',
      !SAFE_SECURITY_OPTS.test(opt),
      `security option ${JSON.stringify(opt)} is not allowed`,
    );
  }
  check(p, 'masked-paths', hc.MaskedPaths !== undefined, 'overriding masked paths is not allowed');
  check(p, 'masked-paths', hc.ReadonlyPaths !== undefined, 'overriding read-only paths is not allowed');
  check(
    p,
    'cgroup-parent',
    str(hc.CgroupParent) !== '' || str(hc.Cgroup) !== '',
    'choosing the cgroup parent is not allowed',
  );
  check(
    p,
    'runtime',
    str(hc.Runtime) !== '' && str(hc.Runtime) !== 'runc',
    `runtime ${str(hc.Runtime)} is not allowed`,
  );
  const logType = str(obj(hc.LogConfig).Type);
  check(p, 'log-driver', !SAFE_LOG_DRIVERS.has(logType), `log driver ${logType} is not allowed`);
  check(p, 'volume-driver', str(hc.VolumeDriver) !== '', 'volume drivers are not allowed');
  for (const key of Object.keys(obj(hc.Sysctls))) {
    check(p, 'sysctls', !p.safeSysctls.has(key), `sysctl ${key} is not on the safe list`);
  }
  // Other containers: resolved to owned full IDs, or refused as absent.
  if (Array.isArray(hc.VolumesFrom)) {
    hc.VolumesFrom = list(hc.VolumesFrom).map((v) => {
      const [ref = '', mode] = v.split(':');
      const id = r.container(ref);
      return mode ? `${id}:${mode}` : id;
    });
  }
  if (Array.isArray(hc.Links)) {
    hc.Links = list(hc.Links).map((l) => {
      const [ref = '', alias] = l.split(':');
      const id = r.container(ref);
      return `${id}:${alias ?? ref.replace(/^\//, '')}`;
    });
  }
  // Networks: none stays none; default/bridge/empty → the tenant network; others must be owned.
  const mode = str(hc.NetworkMode);
  const endpoints = obj(obj(out.NetworkingConfig).EndpointsConfig);
  const newEndpoints: Record<string, unknown> = {};
  if (mode === 'host') check(p, 'namespaces', true, 'the host network namespace is not allowed');
  if (mode === '' || mode === 'default' || mode === 'bridge') {
    hc.NetworkMode = ctx.network;
  } else if (mode.startsWith('container:')) {
    hc.NetworkMode = `container:${r.container(mode.slice('container:'.length))}`;
  } else if (mode !== 'none' && mode !== 'host') {
    hc.NetworkMode = r.network(mode);
  }
  for (const [name, ep] of Object.entries(endpoints)) {
    const epObj = { ...obj(ep) };
    if (Array.isArray(epObj.Links))
      epObj.Links = list(epObj.Links).map(
        (l) => `${r.container(l.split(':')[0] ?? '')}:${l.split(':')[1] ?? l}`,
      );
    const key =
      name === mode
        ? str(hc.NetworkMode)
        : name === 'bridge' || name === 'default'
          ? ctx.network
          : r.network(name);
    newEndpoints[key] = epObj;
  }
  if (Object.keys(endpoints).length) out.NetworkingConfig = { EndpointsConfig: newEndpoints };
  // Binds: host paths only inside a mapped job path, after translation and resolution.
  if (Array.isArray(hc.Binds)) {
    hc.Binds = list(hc.Binds).map((b) => {
      const parts = b.split(':');
      const src = parts[0] ?? '';
      if (parts.length < 2) return b; // anonymous volume
      if (!src.startsWith('/')) {
        checkReservedName('volume', src);
        r.volume(src);
        return b;
      }
      return [bindSource(r, p, src, true), ...parts.slice(1)].join(':');
    });
  }
  if (Array.isArray(hc.Mounts)) {
    hc.Mounts = (hc.Mounts as Record<string, unknown>[]).map((m) => {
      const type = str(m.Type);
      const src = str(m.Source);
      if (type === 'bind') {
        return { ...m, Source: bindSource(r, p, src, false) };
      }
      if (type === 'volume') {
        const driver = obj(obj(m.VolumeOptions).DriverConfig);
        check(
          p,
          'volume-driver',
          str(driver.Name) !== '' || Object.keys(obj(driver.Options)).length > 0,
          'volume driver options are not allowed',
        );
        if (src !== '') {
          checkReservedName('volume', src);
          r.volume(src);
        }
        // dockerd puts these labels on a volume it creates for the mount: never another owner's.
        const vo = obj(m.VolumeOptions);
        checkLabels('volume mount', vo.Labels, ctx.labels);
        if (Object.hasOwn(obj(vo.Labels), LABEL_TENANT)) {
          const { [LABEL_TENANT]: _forged, ...labels } = obj(vo.Labels);
          return { ...m, VolumeOptions: { ...vo, Labels: labels } };
        }
        return m;
      }
      if (type === 'tmpfs') return m;
      check(p, 'binds', true, `mount type ${JSON.stringify(type)} is not allowed`);
      return m;
    });
  }
  // A published port is a listener on the host: on its loopback (where the host's and other
  // tenants' clients expect their own services, registries included) or on every address, served
  // by a docker-proxy process outside the tenant's cgroups.
  const published = Object.keys(obj(hc.PortBindings));
  check(
    p,
    'ports',
    published.length > 0 || hc.PublishAllPorts === true,
    `publishing container ports on the host is not allowed (${published.length > 0 ? published.join(', ') : 'all exposed ports'}); reach the container by its name on the tenant's network`,
  );
  checkHealthcheck(body.Healthcheck, ctx.imageHealthcheck, p);
  checkLabels('container', body.Labels, ctx.labels);
  checkResources(hc, p);
  // Logs go to the engine's disk: json-file (or local) with a size cap, unless the tenant set one
  // (another driver is a trusted tenant's, under its own options).
  const log = { ...obj(hc.LogConfig) };
  if (str(log.Type) === '') log.Type = 'json-file';
  if (str(log.Type) === 'json-file' || str(log.Type) === 'local') {
    const logOpts: Record<string, unknown> = { ...obj(log.Config) };
    const size = str(logOpts['max-size']);
    if (size === '') logOpts['max-size'] = DEFAULT_LOG_MAX_SIZE;
    else
      check(
        p,
        'resources',
        !(logBytes(size) <= MAX_LOG_BYTES),
        `log max-size ${size} is over 100m (or unreadable)`,
      );
    const files = str(logOpts['max-file']);
    if (files === '') logOpts['max-file'] = '3';
    else check(p, 'resources', !/^[1-9]$/.test(files), `log max-file ${files} is over 9`);
    hc.LogConfig = { ...log, Config: logOpts };
  }
  applyLimits(hc, p.limits, ctx.containerCount, p.allow.has('limits'));
  out.Labels = { ...obj(body.Labels), ...ctx.labels };
  return out;
}

/** Resource limits a tenant may raise without hurting the host or its neighbours. */
export const SAFE_ULIMITS: ReadonlySet<string> = new Set([
  'nofile',
  'nproc',
  'core',
  'stack',
  'fsize',
  'cpu',
  'data',
  'as',
  'locks',
  'sigpending',
  'msgqueue',
]);

/** dockerd's default CPU weight (cpu.shares); a tenant may lower it, not raise it. */
export const MAX_CPU_SHARES = 1024;
/** The kernel's default block I/O weight. */
export const MAX_BLKIO_WEIGHT = 500;

/**
 * Under a memory cap, memory plus swap (`MemorySwap`, -1 for unlimited) may be at most twice the
 * cap, which is what dockerd sets when it is not given: no swap beyond the cap.
 */
function swapUnderCap(r: Record<string, unknown>, max: number | undefined): void {
  const v = r.MemorySwap;
  if (max === undefined || typeof v !== 'number' || v === 0) return;
  if (v < 0 || v > 2 * max)
    throw new Refusal(
      'limits',
      `MemorySwap ${v} is over the tenant's limit ${2 * max} (memory and swap together: twice the memory limit)`,
    );
}

/**
 * Settings that take from the host rather than limit the container: exemption from the OOM killer
 * (a negative OomScoreAdj, OomKillDisable) makes the kernel kill host processes first; realtime
 * CPU time and rtprio/rttime/nice/memlock ulimits let a container starve the host or pin memory.
 * Shared by create (HostConfig) and update (Resources).
 */
export function checkResources(r: Record<string, unknown>, policy: Policy): void {
  const oom = typeof r.OomScoreAdj === 'number' ? r.OomScoreAdj : 0;
  check(policy, 'resources', oom < 0, `OomScoreAdj ${oom} would shield the container from the OOM killer`);
  check(policy, 'resources', r.OomKillDisable === true, 'disabling the OOM killer is not allowed');
  for (const f of ['CpuRealtimePeriod', 'CpuRealtimeRuntime'] as const) {
    const v = r[f];
    check(policy, 'resources', typeof v === 'number' && v !== 0, `${f} (realtime CPU time) is not allowed`);
  }
  // Each names a host device by its path, which dockerd stats as root when the container starts:
  // its answer tells whether any host path exists.
  for (const f of [
    'BlkioWeightDevice',
    'BlkioDeviceReadBps',
    'BlkioDeviceWriteBps',
    'BlkioDeviceReadIOps',
    'BlkioDeviceWriteIOps',
  ] as const) {
    const v = r[f];
    check(
      policy,
      'devices',
      Array.isArray(v) && v.length > 0,
      `${f} (limits on host devices) is not allowed`,
    );
  }
  // Weights against other cgroups: above the default, the container takes CPU time or disk I/O
  // from other tenants' containers that stay within their own limits.
  for (const [f, max] of [
    ['CpuShares', MAX_CPU_SHARES],
    ['BlkioWeight', MAX_BLKIO_WEIGHT],
  ] as const) {
    const v = r[f];
    check(
      policy,
      'limits',
      typeof v === 'number' && v > max,
      `${f} ${String(v)} is over ${max}, the default weight: it would take from other tenants' containers`,
    );
  }
  for (const u of Array.isArray(r.Ulimits) ? r.Ulimits : []) {
    const name = str(obj(u).Name);
    check(
      policy,
      'resources',
      !SAFE_ULIMITS.has(name),
      `ulimit ${name} is not allowed (allowed: ${[...SAFE_ULIMITS].join(', ')})`,
    );
  }
}

/**
 * A JSON-valued build parameter (`labels`): undefined when absent (or `null`, where `nullable`),
 * else the value, which must be of the `kind` asked for.
 */
function jsonParam(
  q: URLSearchParams,
  name: string,
  kind: 'object',
  nullable?: boolean,
): Record<string, unknown> | undefined;
function jsonParam(q: URLSearchParams, name: string, kind: 'object', nullable = false): unknown {
  const raw = q.get(name);
  if (!raw) return undefined;
  const bad = () => new Refusal('malformed', `${name} is not a JSON ${kind}`, 400);
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw bad();
  }
  if (parsed === null && nullable) return undefined;
  if (!isRecord(parsed)) throw bad();
  return parsed;
}

/**
 * A build's RUN containers get the build's resources: ulimits as for containers, memory and CPU
 * filled and capped from the tenant's limits as for containers (CPU as a CFS quota: the build API
 * has no nano CPUs). The build API has no pids limit, so a RUN step is not pids-limited.
 */
function checkBuildResources(q: URLSearchParams, out: URLSearchParams, policy: Policy): void {
  // The docker CLI sends `null` for none. Read as dockerd reads it, and forwarded as read.
  const text = q.get('ulimits');
  if (text) {
    let ulimits: unknown[] | undefined;
    try {
      ulimits = canonicalUlimits(text);
    } catch (e) {
      throw new Refusal('malformed', `ulimits: ${(e as Error).message}`, 400);
    }
    if (ulimits) {
      checkResources({ Ulimits: ulimits }, policy);
      out.set('ulimits', JSON.stringify(ulimits));
    } else out.delete('ulimits');
  }
  // Read as dockerd reads them (strconv.ParseInt, base 10, 64 bits; dockerd takes a value it
  // cannot parse as 0, which is no limit): `1e3`, `0x10` or `1.5` are refused, not read as numbers.
  const num = (name: string): number => {
    const v = q.get(name);
    if (v === null || v === '') return 0;
    const n = /^[+-]?\d{1,18}$/.test(v) ? Number(v) : NaN;
    if (!Number.isSafeInteger(n)) throw new Refusal('malformed', `${name}=${v} is not a whole number`, 400);
    return n;
  };
  const hc: Record<string, unknown> = { Memory: num('memory') };
  checkResources({ CpuShares: num('cpushares') }, policy);
  if (!policy.allow.has('limits')) swapUnderCap({ MemorySwap: num('memswap') }, policy.limits.maxMemoryBytes);
  const asked = num('cpuperiod');
  const period = asked > 0 ? asked : 100_000;
  const quota = num('cpuquota');
  hc.NanoCpus = quota > 0 ? Math.ceil((quota / period) * 1e9) : 0;
  applyLimits(
    hc,
    { ...policy.limits, defaultPidsLimit: undefined, maxPidsLimit: undefined },
    undefined,
    policy.allow.has('limits'),
  );
  if (typeof hc.Memory === 'number' && hc.Memory > 0) out.set('memory', String(hc.Memory));
  if (quota <= 0 && typeof hc.NanoCpus === 'number' && hc.NanoCpus > 0) {
    out.set('cpuperiod', String(period));
    out.set('cpuquota', String(Math.floor((hc.NanoCpus * period) / 1e9)));
  }
}

/**
 * Fills unset memory/CPU/pids from the tenant's defaults (else caps) and refuses values over the caps
 * or a container count at the limit; with `bypass` (the policy allows `limits`) only fills.
 */
export function applyLimits(
  hc: Record<string, unknown>,
  l: TenantLimits,
  containerCount?: number,
  bypass = false,
): void {
  if (
    !bypass &&
    containerCount !== undefined &&
    l.maxContainers !== undefined &&
    containerCount >= l.maxContainers
  ) {
    throw new Refusal(
      'limits',
      `the tenant already has ${containerCount} containers (limit ${l.maxContainers})`,
    );
  }
  // Unset (absent, 0, or for PidsLimit -1: "unlimited" to dockerd) takes the default, else the cap;
  // an explicit value over the cap is refused.
  const capped = (field: string, def: number | undefined, max: number | undefined, what: string) => {
    const v = typeof hc[field] === 'number' ? hc[field] : 0;
    if (v <= 0) {
      const fill = def ?? max;
      if (fill !== undefined) hc[field] = max !== undefined ? Math.min(fill, max) : fill;
    } else if (!bypass && max !== undefined && v > max) {
      throw new Refusal('limits', `${what} ${v} is over the tenant's limit ${max}`);
    }
  };
  if (!bypass) cpuQuotaUnderCap(hc, l);
  if (!bypass) swapUnderCap(hc, l.maxMemoryBytes);
  capped('Memory', l.defaultMemoryBytes, l.maxMemoryBytes, 'memory');
  capped('NanoCpus', l.defaultNanoCpus, l.maxNanoCpus, 'CPU (nano CPUs)');
  capped('PidsLimit', l.defaultPidsLimit, l.maxPidsLimit, 'pids limit');
}

/**
 * Under a CPU cap, a CFS quota or period of the tenant's own would replace the quota dockerd derives
 * from NanoCpus (`CpuQuota: -1` is no limit at all): refused, the cap is set as NanoCpus only.
 */
function cpuQuotaUnderCap(r: Record<string, unknown>, l: TenantLimits): void {
  if (l.maxNanoCpus === undefined) return;
  for (const f of ['CpuQuota', 'CpuPeriod'] as const) {
    const v = r[f];
    if (typeof v === 'number' && v !== 0)
      throw new Refusal(
        'limits',
        `${f} ${v} would replace the tenant's CPU limit; set CPUs with NanoCpus (docker --cpus) instead`,
      );
  }
}

/** Rules for `docker update` (its body is Resources + RestartPolicy). */
export function checkContainerUpdate(body: Record<string, unknown>, policy: Policy): Record<string, unknown> {
  check(policy, 'cgroup-parent', str(body.CgroupParent) !== '', 'choosing the cgroup parent is not allowed');
  check(
    policy,
    'devices',
    Array.isArray(body.Devices) && body.Devices.length > 0,
    'host devices are not allowed',
  );
  check(policy, 'devices', list(body.DeviceCgroupRules).length > 0, 'device cgroup rules are not allowed');
  check(
    policy,
    'devices',
    Array.isArray(body.DeviceRequests) && body.DeviceRequests.length > 0,
    'device requests are not allowed',
  );
  checkResources(body, policy);
  const out = { ...body };
  const l = policy.allow.has('limits') ? {} : policy.limits;
  cpuQuotaUnderCap(out, l);
  swapUnderCap(out, l.maxMemoryBytes);
  for (const [f, max] of [
    ['Memory', l.maxMemoryBytes],
    ['NanoCpus', l.maxNanoCpus],
    ['PidsLimit', l.maxPidsLimit],
  ] as const) {
    const v = out[f];
    if (max !== undefined && typeof v === 'number' && v > max)
      throw new Refusal('limits', `${f} ${v} is over the tenant's limit ${max}`);
    // For update, Memory/NanoCpus 0 mean "unchanged", but PidsLimit 0 or -1 means "unlimited".
    if (max !== undefined && f === 'PidsLimit' && typeof v === 'number' && v <= 0)
      throw new Refusal('limits', `an unlimited pids limit is over the tenant's limit ${max}`);
  }
  return out;
}

/**
 * `docker top` runs the host's `ps` with the tenant's arguments and keeps the rows whose column
 * titled PID is one of the container's processes. A format option (`-o`, `O`) can title another
 * column PID (`-orss=PID` as the first word gets past dockerd's own check) and so return host
 * processes, their command lines and (`e`) environments. Only plain option letters are passed.
 */
export function checkTopArgs(query: URLSearchParams, policy: Policy): URLSearchParams {
  const args = query.get('ps_args');
  const out = new URLSearchParams();
  if (args === null || args === '') return out;
  check(
    policy,
    'namespaces',
    !/^(-?[A-NP-Za-np-z]{1,12})( -?[A-NP-Za-np-z]{1,12}){0,3}$/.test(args),
    `ps_args "${args}": only option letters (no format options, o or O) are passed to the host's ps`,
  );
  out.set('ps_args', args);
  return out;
}

/**
 * The registry a search term names, as dockerd splits it: the part before the first `/` when it
 * looks like a host (has a `.` or a `:`, or is `localhost`), else Docker Hub.
 */
export function searchRegistry(term: string): string {
  const slash = term.indexOf('/');
  const first = slash < 0 ? '' : term.slice(0, slash);
  if (slash < 0 || (!/[.:]/.test(first) && first !== 'localhost')) return 'docker.io';
  return first === 'index.docker.io' ? 'docker.io' : first;
}

/**
 * The registry host a login names (`serveraddress`), as dockerd reads it: a scheme is optional,
 * the host ends at the first `/`; empty is Docker Hub. Undefined for anything dockerd could read
 * differently (user info, a query, spaces): refused where registries are restricted.
 */
export function loginRegistry(serverAddress: string): string | undefined {
  if (serverAddress === '') return 'docker.io';
  const m =
    /^(?:https?:\/\/)?([A-Za-z0-9.-]+(?::[0-9]+)?|\[[0-9A-Fa-f:.]+\](?::[0-9]+)?)(?:\/[^\s?#@\\]*)?$/.exec(
      serverAddress,
    );
  const host = m?.[1]?.toLowerCase();
  if (host === undefined) return undefined;
  return ['index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com'].includes(host)
    ? 'docker.io'
    : host;
}

/**
 * Where the policy restricts registries: the registry an operation makes dockerd contact must be
 * one of them. `what` says which operation, `registry` is the host it names (undefined when it
 * cannot be read: refused).
 */
export function checkRegistry(policy: Policy, what: string, registry: string | undefined): void {
  const allowed = policy.registries;
  if (allowed === undefined) return;
  const host = registry?.toLowerCase();
  if (host !== undefined && allowed.has(host)) return;
  const list = allowed.size > 0 ? [...allowed].join(', ') : 'none';
  throw new Refusal(
    'registries',
    `${what}: ${host === undefined ? 'the registry cannot be read' : `registry ${host} is not one this tenant may use`} (allowed: ${list})`,
  );
}

/** checkRegistry for an image reference (`registry:5000/app:1`, `app`, `app@sha256:…`). */
export function checkImageRegistry(policy: Policy, what: string, ref: string): void {
  if (policy.registries === undefined) return;
  checkRegistry(policy, `${what} ${ref}`, registryOf(ref));
}

export function checkExecCreate(body: Record<string, unknown>, policy: Policy): void {
  check(policy, 'privileged', body.Privileged === true, 'privileged exec is not allowed');
}

export function checkNetworkCreate(
  body: Record<string, unknown>,
  labels: Readonly<Record<string, string>>,
  policy: Policy,
): Record<string, unknown> {
  // A tenant network's name, taken first, would keep that tenant off its own network.
  if (RESERVED_NETWORK.test(str(body.Name)))
    throw new Refusal('ownership', `network names like ${str(body.Name)} are reserved for berth guards`);
  // dockerd finds a network by its name before an ID prefix: a name like another network's short
  // ID would take the references of everyone who uses that ID (as for containers). And the other
  // way round, of any length: a container not yet started keeps its networks by name and looks the
  // name up again at start; once the network of that name is gone, a name of hex digits finds the
  // network whose ID starts with it (red-team pass 25).
  if (/^[0-9a-f]{1,64}$/.test(str(body.Name)))
    throw new Refusal(
      'ownership',
      `the network name ${str(body.Name)} reads as a network ID; dockerd would answer to it for every client using that ID (choose a name with a letter outside a-f or a dash)`,
    );
  const driver = str(body.Driver);
  check(
    policy,
    'network-driver',
    driver !== '' && driver !== 'bridge',
    `network driver ${driver} is not allowed (bridge only)`,
  );
  for (const k of Object.keys(obj(body.Options))) {
    check(
      policy,
      'network-driver',
      k !== 'com.docker.network.driver.mtu',
      `network option ${k} is not allowed`,
    );
  }
  check(
    policy,
    'network-driver',
    body.ConfigFrom !== undefined || body.ConfigOnly === true,
    'config-only networks are not allowed',
  );
  check(policy, 'network-driver', body.Ingress === true, 'ingress networks are not allowed');
  check(
    policy,
    'network-driver',
    str(body.Scope) !== '' && str(body.Scope) !== 'local',
    `network scope ${str(body.Scope)} is not allowed (local only)`,
  );
  // A chosen subnet can shadow the host's own networks (its LAN, a VPN, the cloud metadata
  // range): routes to it would lead into the tenant's bridge. The daemon picks from its pools.
  const ipam = obj(body.IPAM);
  const ipamDriver = str(ipam.Driver);
  check(
    policy,
    'network-ipam',
    ipamDriver !== '' && ipamDriver !== 'default',
    `IPAM driver ${ipamDriver} is not allowed`,
  );
  check(
    policy,
    'network-ipam',
    (Array.isArray(ipam.Config) && ipam.Config.length > 0) || Object.keys(obj(ipam.Options)).length > 0,
    'choosing subnets, IP ranges or gateways is not allowed (the daemon assigns them)',
  );
  // Without the check, dockerd creates a second network of an existing name: the host's and other
  // tenants' references by that name then fail as ambiguous, and the answer's warning names the
  // other network's ID.
  checkLabels('network', body.Labels, labels);
  return { ...body, CheckDuplicate: true, Labels: { ...obj(body.Labels), ...labels } };
}

/**
 * A container name (create or rename) that reads as a container ID: dockerd looks a reference up
 * as a name before it tries it as an ID prefix, so a tenant container named like the short ID
 * `docker ps` shows for someone else's container would answer to everyone who uses that ID (the
 * host's `docker exec <id>` would run in the tenant's container). Twelve hex digits or more, the
 * length docker prints; shorter all-hex names (`db`, `cafe`) stay allowed, as a prefix that short
 * is ambiguous in plain Docker too.
 */
/**
 * Networks come from the engine's address pools, which every tenant and the host share (31
 * networks with dockerd's defaults): one tenant creating many keeps everyone else from creating
 * any. Unless the policy says otherwise, a tenant has at most this many.
 */
export const DEFAULT_MAX_NETWORKS = 8;

export function checkNetworkCount(count: number, policy: Policy): void {
  const max = policy.limits.maxNetworks ?? DEFAULT_MAX_NETWORKS;
  check(
    policy,
    'limits',
    count >= max,
    `the tenant already has ${count} networks (limit ${max}); networks come from address pools every tenant shares`,
  );
}

/**
 * The health check a container gets: its own fields where set, else its image's (as dockerd
 * merges them; an image can bring a 1 ms interval from its Dockerfile or a commit). dockerd runs
 * each probe as an exec outside the container's CPU share, and keeps its command until the
 * container goes.
 */
export function checkHealthcheck(own: unknown, image: unknown, policy: Policy): void {
  const c = obj(own);
  const i = obj(image);
  const test = Array.isArray(c.Test) && c.Test.length > 0 ? c.Test : i.Test;
  if (Array.isArray(test) && test[0] === 'NONE') return;
  checkHealthTest(test, policy);
  for (const f of ['Interval', 'Timeout', 'StartPeriod', 'StartInterval'] as const) {
    const mine = typeof c[f] === 'number' ? c[f] : 0;
    const ns = mine !== 0 ? mine : typeof i[f] === 'number' ? i[f] : 0;
    check(
      policy,
      'resources',
      ns !== 0 && ns < MIN_HEALTH_INTERVAL_NS,
      `health check ${f} ${ns} ns${mine === 0 ? ' (from the image)' : ''} is under 1 s`,
    );
  }
}

export function checkContainerName(name: string | null): void {
  checkReservedName('container', name);
  if (name !== null && /^\/?[0-9a-f]{12,64}$/.test(name))
    throw new Refusal(
      'ownership',
      `the container name ${name} reads as a container ID; dockerd would answer to it for every client using that ID (choose a name with a letter outside a-f or a dash)`,
    );
}

export function checkVolumeCreate(
  body: Record<string, unknown>,
  labels: Readonly<Record<string, string>>,
  policy: Policy,
): Record<string, unknown> {
  const driver = str(body.Driver);
  check(
    policy,
    'volume-driver',
    driver !== '' && driver !== 'local',
    `volume driver ${driver} is not allowed`,
  );
  for (const k of Object.keys(obj(body.DriverOpts))) {
    check(policy, 'volume-options', k !== 'size', `volume driver option ${k} is not allowed (only size)`);
  }
  checkReservedName('volume', str(body.Name));
  checkLabels('volume', body.Labels, labels);
  const out: Record<string, unknown> = { ...body, Labels: { ...obj(body.Labels), ...labels } };
  delete out.ClusterVolumeSpec;
  // After the rules, so a refused shape is named as such. dockerd's local driver takes these
  // names only (two characters at least); anything else is refused here with its
  // reason rather than looked up (a name like `../x` would be a path upstream).
  const name = str(body.Name);
  if (name !== '' && !/^[a-zA-Z0-9][a-zA-Z0-9_.-]+$/.test(name))
    throw new BodyError(
      `volume name ${JSON.stringify(name)} includes invalid characters: only [a-zA-Z0-9][a-zA-Z0-9_.-], two at least, are allowed`,
    );
  return out;
}

/** dockerd's boolean query parsing (httputils.BoolValue). */
export function boolValue(v: string | null): boolean {
  if (v === null) return false;
  return !['', '0', 'no', 'false', 'none'].includes(v.trim().toLowerCase());
}

/** Build query rules; returns the query to forward (labels added). */
export function checkBuild(
  q: URLSearchParams,
  labels: Readonly<Record<string, string>>,
  policy: Policy,
  tenantNetwork?: string,
): URLSearchParams {
  const out = new URLSearchParams(q);
  checkBuildResources(q, out, policy);
  // Go's FormValue reads the first value, as URLSearchParams.get does. Build containers may use the
  // default bridge or no network; a named network could be another tenant's (never resolved here).
  const net = q.get('networkmode') ?? '';
  check(
    policy,
    'build-options',
    !['', 'default', 'bridge', 'none'].includes(net),
    `build network mode ${net} is not allowed (default, bridge or none)`,
  );
  // RUN steps join the tenant's network rather than the shared default bridge (where the host's
  // containers and other tenants' builds are): they reach the tenant's own services and nobody else.
  if (tenantNetwork !== undefined && ['', 'default', 'bridge'].includes(net))
    out.set('networkmode', tenantNetwork);
  check(policy, 'build-options', (q.get('cgroupparent') ?? '') !== '', 'build cgroup parent is not allowed');
  check(policy, 'build-options', (q.get('remote') ?? '') !== '', 'builds from a remote URL are not allowed');
  const iso = q.get('isolation') ?? '';
  check(policy, 'build-options', iso !== '' && iso !== 'default', `build isolation ${iso} is not allowed`);
  check(
    policy,
    'build-options',
    (q.get('version') ?? '1') === '2',
    'BuildKit sessions are not supported (use DOCKER_BUILDKIT=0)',
  );
  const existing = jsonParam(q, 'labels', 'object') ?? {};
  checkLabels('build', existing, labels);
  // The guard's labels go on built images (the reaper finds them by run), but not the tenant label:
  // an image must name no owner (containers inherit its labels), and dockerd's legacy builder makes
  // each label of this parameter a LABEL step of its own, with a container created and removed
  // (~60 ms a build here). A tenant label the client asks for is emptied; one that comes from the
  // Dockerfile or the base image is caught after the build (see BuildRoutes.build).
  const merged: Record<string, unknown> = { ...existing };
  for (const [k, v] of Object.entries(labels)) if (k !== LABEL_TENANT) merged[k] = v;
  if (Object.hasOwn(existing, LABEL_TENANT)) merged[LABEL_TENANT] = ''; // names no owner
  out.delete('labels');
  if (Object.keys(merged).length > 0) out.set('labels', JSON.stringify(merged));
  return out;
}
