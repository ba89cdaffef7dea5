import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isBerthError } from '../common/index.js';
import {
  classifyFailure,
  daemonJson,
  fallbackCaps,
  lastLines,
  startScript,
  storageCandidates,
  validateOptions,
} from './config.js';

test('option validation names the option and what to change', () => {
  assert.doesNotThrow(() =>
    validateOptions({
      name: 'job-1.a',
      cache: 'k_1',
      mtu: 1450,
      tcp: { port: 2375, tls: false },
      registryMirrors: ['http://mirror:5000'],
      insecureRegistries: ['reg.local:5000', '10.0.0.0/8'],
    }),
  );
  const cases: [Parameters<typeof validateOptions>[0], RegExp][] = [
    [{ name: '-bad' }, /dind name "-bad" is not valid/],
    [{ name: 'a/b' }, /not valid/],
    [{ name: 'ok', cache: 'x y' }, /cache key "x y"/],
    [{ name: 'ok', mtu: 100 }, /--mtu 100 .* 576 to 65535/],
    [{ name: 'ok', tcp: { port: 70000, tls: true } }, /--tcp 70000/],
    [{ name: 'ok', tcp: { port: 2375, tls: true }, socketDir: '/tmp/x' }, /exclude each other/],
    [{ name: 'ok', registryMirrors: ['mirror:5000'] }, /http:\/\/ or https:\/\//],
    [{ name: 'ok', registryMirrors: ['not a url'] }, /is not a URL/],
    [{ name: 'ok', insecureRegistries: ['http://reg'] }, /without a scheme/],
    [{ name: 'ok', readyTimeoutMs: 0 }, /ready timeout/],
  ];
  for (const [o, re] of cases)
    assert.throws(
      () => validateOptions(o),
      (e: unknown) => isBerthError(e, 'BERTH_USAGE') && re.test(e.message),
      JSON.stringify(o),
    );
});

test('daemon.json: socket, data root, driver, cgroup parent; optional mtu, mirrors, tcp with TLS', () => {
  const min = daemonJson({ storageDriver: 'overlay2', cgroupParent: '/berth-dind-a' });
  assert.deepEqual(min.hosts, ['unix:///var/run/berth-dind/docker.sock']);
  assert.equal(min['data-root'], '/var/lib/docker');
  assert.equal(min['storage-driver'], 'overlay2');
  assert.equal(min['cgroup-parent'], '/berth-dind-a');
  assert.equal(min.group, '0');
  assert.equal(daemonJson({ storageDriver: 'vfs', cgroupParent: '/p', socketGroup: 1001 }).group, '1001');
  for (const k of ['mtu', 'registry-mirrors', 'insecure-registries', 'tls', 'tlsverify'])
    assert.equal(k in min, false, k);
  const full = daemonJson({
    storageDriver: 'vfs',
    cgroupParent: '/p',
    mtu: 1400,
    registryMirrors: ['http://m:5000'],
    insecureRegistries: ['r:5000'],
    tcp: { port: 2376, tls: true },
  });
  assert.deepEqual(full.hosts, ['unix:///var/run/berth-dind/docker.sock', 'tcp://0.0.0.0:2376']);
  assert.equal(full.mtu, 1400);
  assert.deepEqual(full['registry-mirrors'], ['http://m:5000']);
  assert.deepEqual(full['insecure-registries'], ['r:5000']);
  assert.equal(full.tlsverify, true);
  assert.match(String(full.tlscacert), /ca\.pem$/);
  const plain = daemonJson({ storageDriver: 'vfs', cgroupParent: '/p', tcp: { port: 2375, tls: false } });
  assert.equal(plain.tls, false, 'explicit, to skip the plain-TCP start delay');
});

test('start script inherits the interface MTU only when none is set, and cleans its cgroups', () => {
  const inherit = startScript({ mtuFromInterface: true, cgroupParent: '/berth-dind-x' });
  assert.match(inherit, /\/sys\/class\/net\/\$i\/mtu/);
  assert.match(inherit, /dockerd --config-file \/etc\/berth-dind\/daemon.json \$EXTRA &/);
  assert.match(inherit, /\/sys\/fs\/cgroup\/\*\/berth-dind-x/);
  const fixed = startScript({ mtuFromInterface: false, cgroupParent: '/p' });
  assert.doesNotMatch(fixed, /class\/net/);
});

test('storage drivers: the asked one only, else overlay2 → fuse-overlayfs → vfs', () => {
  assert.deepEqual(storageCandidates(undefined), ['overlay2', 'fuse-overlayfs', 'vfs']);
  assert.deepEqual(storageCandidates('vfs'), ['vfs']);
});

test('failure causes are classified from real dockerd log lines', () => {
  const cases: [string, string][] = [
    ['failed to start daemon: error initializing graphdriver: driver not supported', 'storage'],
    [
      'level=error msg="\'overlay\' is not supported over overlayfs, a mount_program is required" storage-driver=overlay2',
      'storage',
    ],
    [
      'failed to start daemon: Error initializing network controller: error obtaining controller instance: failed to create NAT chain DOCKER: iptables failed: iptables -t nat -N DOCKER: iptables v1.8.9 (nf_tables): Could not fetch rule set generation id',
      'iptables',
    ],
    ["failed to start daemon: Devices cgroup isn't mounted", 'cgroups'],
    ['mount: /sys/fs/cgroup: permission denied', 'cgroups'],
    ['failed to load listeners: listen tcp 0.0.0.0:2375: bind: address already in use', 'address'],
    ['open /var/run/docker.pid: operation not permitted', 'privileges'],
    [
      'failed to create API server: Could not load X509 key pair (cert: "", key: ""): open : no such file or directory',
      'tls',
    ],
    ['something else', 'unknown'],
  ];
  for (const [line, cause] of cases) assert.equal(classifyFailure(line).cause, cause, line);
  assert.match(classifyFailure('driver not supported').hint, /vfs/);
});

test("a healthy daemon's log is no storage failure (its info lines name the driver)", () => {
  const healthy = [
    'time="2026-11-24T15:40:01Z" level=info msg="[graphdriver] using prior storage driver: overlay2"',
    'time="2026-11-24T15:40:01Z" level=warning msg="Your kernel does not support cgroup blkio weight"',
    'time="2026-11-24T15:40:02Z" level=info msg="Docker daemon" commit=1 graphdriver(s)=overlay2 version=20.10.24',
    'time="2026-11-24T15:40:02Z" level=info msg="Daemon has completed initialization"',
    'time="2026-11-24T15:40:02Z" level=info msg="API listen on /var/run/berth-dind/docker.sock"',
  ].join('\n');
  assert.equal(classifyFailure(healthy).cause, 'unknown');
  // An error line among them still counts.
  assert.equal(
    classifyFailure(
      `${healthy}\ntime="x" level=error msg="failed to mount overlay: invalid argument" storage-driver=overlay2`,
    ).cause,
    'storage',
  );
});

test('fallback caps: ALL minus what the bounding set lacks', () => {
  const all = ['CHOWN', 'SYS_ADMIN', 'SYS_RESOURCE', 'NET_ADMIN'];
  assert.deepEqual(fallbackCaps(['CHOWN', 'SYS_ADMIN', 'NET_ADMIN'], all), {
    capAdd: ['ALL'],
    capDrop: ['SYS_RESOURCE'],
  });
  assert.deepEqual(fallbackCaps(all, all), { capAdd: ['ALL'], capDrop: [] });
  assert.deepEqual(fallbackCaps(undefined, all), { capAdd: ['ALL'], capDrop: [] });
});

test('lastLines keeps the last non-empty lines', () => {
  assert.deepEqual(lastLines('a\n\nb\nc\n\n', 2), ['b', 'c']);
});
