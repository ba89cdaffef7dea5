/**
 * Pure parts of dind: option validation, the nested daemon's daemon.json and start script,
 * storage-driver fallback order, failure-cause classification from dockerd log lines, and the
 * fallback capability set. No engine calls here.
 */
import { BerthError } from '../common/index.js';

/** Where the nested dockerd listens inside the sidecar (the socket dir is bind-mounted here). */
export const SOCKET_DIR_IN_CONTAINER = '/var/run/berth-dind';
export const SOCKET_NAME = 'docker.sock';
/** Where berth uploads the daemon config and start script into the sidecar. */
export const CONFIG_DIR_IN_CONTAINER = '/etc/berth-dind';
/** Storage drivers that work nested, in order of preference. */
export const STORAGE_DRIVERS = ['overlay2', 'fuse-overlayfs', 'vfs'] as const;

export interface DaemonConfigInput {
  storageDriver: string;
  registryMirrors?: string[];
  insecureRegistries?: string[];
  mtu?: number;
  tcp?: { port: number; tls: boolean };
  cgroupParent: string;
  /**
   * The group (numeric ID) of the daemon's socket: the starting user's, so a user who reaches the
   * host's engine through its group (not as root) can use the nested daemon too (red-team pass 26:
   * with `root`, such a user never could). Default 0.
   */
  socketGroup?: number;
}

const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$/;

/** Validates a dind/cache name: it becomes part of container and volume names. */
export function validateName(kind: 'name' | 'cache key', value: string): string {
  if (!NAME_RE.test(value))
    throw new BerthError(
      'BERTH_USAGE',
      `dind ${kind} "${value}" is not valid: use 1-128 letters, digits, "_", "." or "-", starting with a letter or digit`,
    );
  return value;
}

/** Validates the numeric and URL options; throws BERTH_USAGE naming the option and what to change. */
export function validateOptions(o: {
  name: string;
  cache?: string | undefined;
  mtu?: number | undefined;
  tcp?: { port: number; tls: boolean } | undefined;
  socketDir?: string | undefined;
  registryMirrors?: string[] | undefined;
  insecureRegistries?: string[] | undefined;
  storageDriver?: string | undefined;
  readyTimeoutMs?: number | undefined;
}): void {
  validateName('name', o.name);
  if (o.cache !== undefined) validateName('cache key', o.cache);
  if (o.mtu !== undefined && (!Number.isInteger(o.mtu) || o.mtu < 576 || o.mtu > 65535))
    throw new BerthError('BERTH_USAGE', `--mtu ${o.mtu} is not valid: use an integer from 576 to 65535`);
  if (o.tcp !== undefined) {
    if (!Number.isInteger(o.tcp.port) || o.tcp.port < 1 || o.tcp.port > 65535)
      throw new BerthError('BERTH_USAGE', `--tcp ${o.tcp.port} is not valid: use a port from 1 to 65535`);
    if (o.socketDir !== undefined)
      throw new BerthError('BERTH_USAGE', '--socket-dir and --tcp exclude each other: pick one');
  }
  for (const m of o.registryMirrors ?? []) {
    let u: URL;
    try {
      u = new URL(m);
    } catch {
      throw new BerthError(
        'BERTH_USAGE',
        `--registry-mirror "${m}" is not a URL: use e.g. http://mirror:5000`,
      );
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:')
      throw new BerthError('BERTH_USAGE', `--registry-mirror "${m}" must be http:// or https://`);
  }
  for (const h of o.insecureRegistries ?? [])
    if (!/^[a-zA-Z0-9.-]+(:\d+)?(\/\d+)?$/.test(h))
      throw new BerthError(
        'BERTH_USAGE',
        `--insecure-registry "${h}" is not valid: use host[:port] or a CIDR, without a scheme`,
      );
  if (o.storageDriver !== undefined && !/^[a-z0-9-]+$/.test(o.storageDriver))
    throw new BerthError('BERTH_USAGE', `--storage-driver "${o.storageDriver}" is not a driver name`);
  if (o.readyTimeoutMs !== undefined && !(o.readyTimeoutMs > 0))
    throw new BerthError(
      'BERTH_USAGE',
      `ready timeout ${o.readyTimeoutMs} ms is not valid: use a positive number`,
    );
}

/** The nested daemon's daemon.json. MTU is left to the start script when not set (it inherits eth0's). */
export function daemonJson(i: DaemonConfigInput): Record<string, unknown> {
  const hosts = [`unix://${SOCKET_DIR_IN_CONTAINER}/${SOCKET_NAME}`];
  const cfg: Record<string, unknown> = {
    hosts,
    group: String(i.socketGroup ?? 0),
    'data-root': '/var/lib/docker',
    'exec-root': '/var/run/docker',
    pidfile: '/var/run/docker.pid',
    'storage-driver': i.storageDriver,
    'cgroup-parent': i.cgroupParent,
    'log-driver': 'json-file',
    'log-opts': { 'max-size': '10m', 'max-file': '2' },
  };
  if (i.tcp) {
    hosts.push(`tcp://0.0.0.0:${i.tcp.port}`);
    // Explicit tls=false: dockerd otherwise delays its start by ~15 s to warn about plain TCP.
    if (!i.tcp.tls) cfg.tls = false;
    else {
      Object.assign(cfg, {
        tls: true,
        tlsverify: true,
        tlscacert: `${CONFIG_DIR_IN_CONTAINER}/certs/ca.pem`,
        tlscert: `${CONFIG_DIR_IN_CONTAINER}/certs/server-cert.pem`,
        tlskey: `${CONFIG_DIR_IN_CONTAINER}/certs/server-key.pem`,
      });
    }
  }
  if (i.mtu !== undefined) cfg.mtu = i.mtu;
  if (i.registryMirrors?.length) cfg['registry-mirrors'] = [...i.registryMirrors];
  if (i.insecureRegistries?.length) cfg['insecure-registries'] = [...i.insecureRegistries];
  return cfg;
}

/**
 * The sidecar's start script (run by `sh`, passed at create time, so the image stays a plain
 * rootfs). It inherits the MTU of the sidecar's own interface when none is set, makes sure the
 * cgroup hierarchy is usable, and replaces itself with dockerd.
 */
export function startScript(opts: { mtuFromInterface: boolean; cgroupParent: string }): string {
  return [
    'set -e',
    `mkdir -p ${SOCKET_DIR_IN_CONTAINER} /var/lib/docker /var/run/docker`,
    // A stale socket or pidfile from an earlier run on the same cache volume/socket dir.
    `rm -f ${SOCKET_DIR_IN_CONTAINER}/${SOCKET_NAME} /var/run/docker.pid`,
    // cgroup v1 without a bind mount from the host: mount the hierarchies ourselves.
    'if [ ! -e /sys/fs/cgroup/cgroup.controllers ] && [ -z "$(ls -A /sys/fs/cgroup 2>/dev/null)" ]; then',
    '  mount -t tmpfs cgroup_root /sys/fs/cgroup 2>/dev/null || true',
    "  for c in $(awk 'NR>1 && $4==1 {print $1}' /proc/cgroups); do mkdir -p /sys/fs/cgroup/$c; mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c 2>/dev/null || true; done",
    'fi',
    'EXTRA=""',
    // On a user-defined (per-job) network the sidecar resolves through Docker's embedded DNS at
    // 127.0.0.11, which nested containers cannot reach: forward DNS sent to the sidecar's own
    // address to the embedded server's real ports, and hand that address to nested containers.
    'if grep -q "^nameserver 127.0.0.11" /etc/resolv.conf 2>/dev/null; then',
    "  IP=$(hostname -i 2>/dev/null | awk '{print $1}')",
    '  U=$(iptables -t nat -S DOCKER_OUTPUT 2>/dev/null | sed -n "s/.*-p udp .*--to-destination 127.0.0.11:\\([0-9]*\\).*/\\1/p")',
    '  T=$(iptables -t nat -S DOCKER_OUTPUT 2>/dev/null | sed -n "s/.*-p tcp .*--to-destination 127.0.0.11:\\([0-9]*\\).*/\\1/p")',
    '  if [ -n "$IP" ] && [ -n "$U" ] && [ -n "$T" ] && echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet 2>/dev/null \\',
    '    && iptables -t nat -I PREROUTING -d "$IP" -p udp --dport 53 -j DNAT --to-destination "127.0.0.11:$U" \\',
    '    && iptables -t nat -I PREROUTING -d "$IP" -p tcp --dport 53 -j DNAT --to-destination "127.0.0.11:$T"; then',
    '    EXTRA="--dns $IP"',
    '    echo "berth-dind: nested containers resolve through the job network DNS via $IP"',
    '  else',
    '    echo "berth-dind: warning: could not forward the job network DNS; nested containers use dockerd defaults"',
    '  fi',
    'fi',
    ...(opts.mtuFromInterface
      ? [
          'for i in eth0 $(ls /sys/class/net 2>/dev/null); do',
          '  if [ "$i" != lo ] && [ -r /sys/class/net/$i/mtu ]; then EXTRA="$EXTRA --mtu $(cat /sys/class/net/$i/mtu)"; break; fi',
          'done',
        ]
      : []),
    `echo "berth-dind: starting dockerd $EXTRA"`,
    `dockerd --config-file ${CONFIG_DIR_IN_CONTAINER}/daemon.json $EXTRA &`,
    'pid=$!',
    // On stop: dockerd stops its containers; then the (empty) cgroups it made on a shared hierarchy go.
    `cleanup() { for d in /sys/fs/cgroup/*${opts.cgroupParent}; do [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null; done; true; }`,
    "trap 'kill -TERM $pid 2>/dev/null; wait $pid; cleanup; exit 0' TERM INT",
    'set +e',
    'wait $pid',
    'rc=$?',
    'cleanup',
    'exit $rc',
  ].join('\n');
}

/** The storage drivers to try, in order: the one asked for only, or the nested-safe fallback chain. */
export function storageCandidates(asked: string | undefined): string[] {
  return asked ? [asked] : [...STORAGE_DRIVERS];
}

export type FailureCause =
  | 'storage'
  | 'iptables'
  | 'cgroups'
  | 'privileges'
  | 'address'
  | 'tls'
  | 'timeout'
  | 'socket-permission'
  | 'unknown';

/**
 * Classifies a failed nested dockerd from its last log lines; answers the cause and a hint. Only
 * lines that report a problem count: errors and fatal ones of dockerd's log, and lines of other
 * programs (the start script, a panic). A healthy daemon's info lines name its storage driver
 * (`graphdriver(s)=overlay2`), which once made every slow start a storage failure (red-team pass
 * 26).
 */
export function classifyFailure(log: string): { cause: FailureCause; hint: string } {
  const l = log
    .split('\n')
    .filter((line) => !/\blevel=/.test(line) || /\blevel=(error|fatal|panic)\b/.test(line))
    .join('\n')
    .toLowerCase();
  if (
    /graphdriver|storage.driver|driver not supported|overlay.*(not supported|invalid argument)|fuse-overlayfs|error initializing graphdriver|backing filesystem/.test(
      l,
    )
  )
    return {
      cause: 'storage',
      hint: 'the storage driver does not work here: /var/lib/docker must be on a volume (not overlay); try --storage-driver vfs',
    };
  if (/iptables|nf_tables|ip6tables|failed to create nat chain|xtables/.test(l))
    return {
      cause: 'iptables',
      hint: 'iptables failed in the sidecar: the host kernel may lack nf_tables (or iptables-legacy) support, or NET_ADMIN is missing',
    };
  if (/cgroup|devices\.allow|cpuset/.test(l))
    return {
      cause: 'cgroups',
      hint: 'the cgroup hierarchy is not usable in the sidecar: it needs /sys/fs/cgroup mounted read-write (cgroup v1) or a private cgroup namespace (v2)',
    };
  if (/operation not permitted|permission denied|mount.*denied/.test(l))
    return {
      cause: 'privileges',
      hint: 'the sidecar lacks privileges: see `berth doctor` for what this host allows',
    };
  if (/x509|key pair|certificate|tlsverify/.test(l))
    return {
      cause: 'tls',
      hint: 'the TLS material is missing or invalid: with --tcp use the generated certificates, or --tls=false on a private namespace',
    };
  if (/address already in use|bind:/.test(l))
    return {
      cause: 'address',
      hint: 'the socket or TCP port is taken: pick another --socket-dir or --tcp port',
    };
  return { cause: 'unknown', hint: 'see the daemon log lines above' };
}

/**
 * The fallback's capability set from the host's bounding set: add ALL and drop what the host does
 * not have (runc refuses caps beyond the bounding set with "unable to apply caps").
 */
export function fallbackCaps(
  bounding: readonly string[] | undefined,
  all: readonly string[],
): { capAdd: string[]; capDrop: string[] } {
  if (!bounding) return { capAdd: ['ALL'], capDrop: [] };
  const have = new Set(bounding);
  return { capAdd: ['ALL'], capDrop: all.filter((c) => !have.has(c)) };
}

/** Engine object names berth derives from a dind name / cache key. */
export const names = {
  sidecar: (name: string) => `berth-dind-${name}`,
  cacheVolume: (key: string) => `berth-dind-cache-${key}`,
  cacheLock: (key: string) => `berth-dind-cachelock-${key}`,
  cgroupParent: (name: string) => `/berth-dind-${name}`,
};

/** Answers the last `n` non-empty lines of a log. */
export function lastLines(log: string, n: number): string[] {
  return log
    .split('\n')
    .map((l) => l.trimEnd())
    .filter((l) => l.length > 0)
    .slice(-n);
}
