// Unit tests that try to break the pure half of the guard: Go-style decoding, routing, every
// container/exec/network/volume/build rule, limits and policy files. No daemon.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BodyError, SCHEMAS, canonicalize, foldKey } from './canonical.js';
import { ROUTES, buildPath, matchRoute, normalizePath, splitTarget, splitVersion } from './routes.js';
import {
  Refusal,
  applyLimits,
  boolValue,
  checkBuild,
  checkChanges,
  checkContainerCreate,
  checkContainerUpdate,
  checkImageRegistry,
  checkRegistry,
  loginRegistry,
  searchRegistry,
  checkExecCreate,
  checkNetworkCreate,
  checkVolumeCreate,
  defaultPolicy,
  isInside,
  translateJobPath,
} from './policy.js';
import type { CreateContext, Resolver } from './policy.js';
import { policyFor } from './policy-file.js';
import { tenantNetworkName } from './ownership.js';
import type { Policy, RuleName } from './contracts.js';

const create = (body: string) => canonicalize(body, SCHEMAS['container.create'], 'Config');
const hcOf = (b: Record<string, unknown>) => b.HostConfig as Record<string, unknown>;
const OWN = 'a'.repeat(64);
const OWN_NET = 'b'.repeat(64);

const refusedWith =
  (rule: RuleName, status = 403) =>
  (e: unknown) =>
    e instanceof Refusal &&
    e.rule === rule &&
    e.status === status &&
    e.message.startsWith(`berth: ${rule}: `);

/** Owned: container `mine`, network `mynet`, volume `myvol`; `/workspace` maps to `/srv/ws`. */
const resolver: Resolver = {
  container: (ref) => {
    // Like the proxy: a leading slash (Docker's container name form) is ignored.
    if (ref.replace(/^\//, '') === 'mine' || ref === OWN) return OWN;
    throw new Refusal('ownership', `No such container: ${ref}`, 404);
  },
  network: (ref) => {
    if (ref === 'mynet' || ref === OWN_NET) return OWN_NET;
    throw new Refusal('ownership', `network ${ref} not found`, 404);
  },
  volume: (name) => {
    if (name === 'myvol') return true;
    if (name === 'fresh') return false;
    throw new Refusal('ownership', `get ${name}: no such volume`, 404);
  },
  bind: (src) => {
    const host = translateJobPath(src, [{ jobPath: '/workspace', hostPath: '/srv/ws' }]);
    return host === undefined
      ? { refused: `bind source ${src} is not inside a mapped job path` }
      : { forward: host };
  },
};
const ctx = (policy: Policy = defaultPolicy(), containerCount = 0): CreateContext => ({
  labels: { 'io.berth.tenant': 't' },
  network: 'berth-t',
  policy,
  containerCount,
});
const run = (body: string, c = ctx()) => checkContainerCreate(create(body), c, resolver);
const policyWith = (over: Partial<Policy>): Policy => ({ ...defaultPolicy(), ...over });

// ------------------------------------------------------------------ Go-style decoding

test('Go folding: only ſ (U+017F) and K (U+212A) fold onto ASCII letters; ı and İ do not', () => {
  assert.deepEqual(hcOf(create('{"HostConfig":{"Capadd":["X"],"ſecurityOpt":["a"]}}')), {
    CapAdd: ['X'],
    SecurityOpt: ['a'],
  });
  assert.deepEqual(hcOf(create('{"HostConfig":{"\u212aernelMemory":5}}')), { KernelMemory: 5 });
  // Dotless ı (U+0131) and dotted İ (U+0130) have no simple fold onto i in Go: unknown keys, dropped.
  assert.deepEqual(hcOf(create('{"HostConfig":{"Prıvileged":true,"PrİVILEGED":true}}')), {});
  assert.equal(foldKey('PRİVILEGED') === foldKey('Privileged'), false);
  // Fullwidth letters do not fold either.
  assert.deepEqual(hcOf(create('{"HostConfig":{"Ｐrivileged":true}}')), {});
});

test('Go decoding: the last of case-variant duplicates wins at every depth, escapes are keys', () => {
  const b = create(
    '{"hostconfig":{"privileged":true},"HostConfig":{"Privileged":false},"HOSTCONFIG":{"PRIVILEGED":true}}',
  );
  assert.deepEqual(b, { HostConfig: { Privileged: true } });
  assert.deepEqual(create('{"HostConfig":{"Privileged":true,"\\u0070rivileged":false}}'), {
    HostConfig: { Privileged: false },
  });
  // Nested: LogConfig.Type with case variants.
  assert.deepEqual(hcOf(create('{"HostConfig":{"LogConfig":{"type":"json-file","TYPE":"syslog"}}}')), {
    LogConfig: { Type: 'syslog' },
  });
  // Map keys are exact (Go maps): both label keys survive, and the last exact duplicate wins.
  assert.deepEqual(create('{"Labels":{"a":"1","A":"2","a":"3"}}').Labels, { a: '3', A: '2' });
});

test('Go decoding: a repeated object merges into the earlier one, as Go decodes into the existing struct', () => {
  // Two HostConfig objects: Go keeps Privileged from the first, so the guard must see it too.
  const b = create('{"HostConfig":{"Privileged":true},"hostconfig":{"CapAdd":null,"Memory":5}}');
  assert.deepEqual(b, { HostConfig: { Privileged: true, Memory: 5 } });
  assert.throws(() => checkContainerCreate(b, ctx(), resolver), refusedWith('privileged'));
  assert.throws(
    () => run('{"HostConfig":{"Binds":["/:/host"]},"HostConfig":{"Binds":null,"Init":true}}'),
    refusedWith('binds'),
  );
  // Nested objects merge too; a later value of the same field still wins.
  assert.deepEqual(
    hcOf(create('{"HostConfig":{"LogConfig":{"Type":"syslog"}},"HostConfig":{"LogConfig":{"Config":{}}}}')),
    {
      LogConfig: { Type: 'syslog', Config: {} },
    },
  );
  assert.deepEqual(create('{"HostConfig":{"Privileged":true},"HostConfig":{"Privileged":false}}'), {
    HostConfig: { Privileged: false },
  });
  // Maps keep earlier entries (Go reuses the map); arrays are replaced.
  assert.deepEqual(
    hcOf(
      create(
        '{"HostConfig":{"Sysctls":{"kernel.x":"1"}},"HostConfig":{"Sysctls":{"net.core.somaxconn":"1"}}}',
      ),
    ).Sysctls,
    {
      'kernel.x': '1',
      'net.core.somaxconn': '1',
    },
  );
  assert.deepEqual(hcOf(create('{"HostConfig":{"CapAdd":["A"]},"HostConfig":{"CapAdd":["B"]}}')).CapAdd, [
    'B',
  ]);
  assert.deepEqual(create('{"Labels":{"a":"1"},"labels":{"b":"2"}}').Labels, { a: '1', b: '2' });
});

test('Go decoding: HostConfig fields at the top level are not forwarded (dockerd reads them there)', () => {
  const b = create('{"Image":"x","Privileged":true,"Binds":["/:/host"],"CapAdd":["ALL"],"Devices":[{}]}');
  assert.deepEqual(b, { Image: 'x' });
  assert.equal(JSON.stringify(b).includes('Privileged'), false);
});

test('Go decoding: StrSlice fields accept a single string, as dockerd does', () => {
  const b = create('{"Cmd":"echo hi","Entrypoint":"sh","HostConfig":{"CapAdd":"SYS_ADMIN","CapDrop":"ALL"}}');
  assert.deepEqual(b.Cmd, ['echo hi']);
  assert.deepEqual(b.Entrypoint, ['sh']);
  assert.deepEqual(hcOf(b).CapAdd, ['SYS_ADMIN']);
  assert.throws(() => checkContainerCreate(b, ctx(), resolver), refusedWith('capabilities'));
  assert.throws(() => create('{"Cmd":[1]}'), /cannot unmarshal number into Go struct field Config\.Cmd\[0\]/);
  assert.throws(() => create('{"Cmd":true}'), BodyError);
  // exec Cmd is a plain []string in dockerd.
  assert.throws(() => canonicalize('{"Cmd":"sh"}', SCHEMAS['exec.create'], 'ExecConfig'), BodyError);
});

test('Go decoding: type mismatches and malformed JSON are body errors, empty and null bodies are {}', () => {
  for (const bad of [
    '{"HostConfig":{"Privileged":1}}',
    '{"HostConfig":{"Binds":"/:/host"}}',
    '{"HostConfig":{"Memory":"1g"}}',
    '{"HostConfig":[]}',
    '{"Labels":{"a":1}}',
    '{"HostConfig":{"Privileged":true}',
    '{"a":1,}',
    '{"a":"\u0001"}',
    '{"a":"\\x"}',
    '['.repeat(100) + ']'.repeat(100),
  ]) {
    assert.throws(() => create(bad), BodyError, bad);
  }
  assert.deepEqual(create(''), {});
  assert.deepEqual(create('  null '), {});
  assert.deepEqual(create('{"HostConfig":null}'), {});
});

test('Go decoding: endpoint NetworkID/EndpointID are never forwarded (dockerd would prefer NetworkID)', () => {
  const b = create(
    `{"NetworkingConfig":{"EndpointsConfig":{"mynet":{"NetworkID":"${'c'.repeat(64)}","networkid":"x","EndpointID":"y","Aliases":["a"]}}}}`,
  );
  assert.deepEqual(b.NetworkingConfig, { EndpointsConfig: { mynet: { Aliases: ['a'] } } });
  const c = canonicalize(
    `{"Container":"mine","EndpointConfig":{"NetworkID":"${'c'.repeat(64)}"}}`,
    SCHEMAS['network.connect'],
    'NetworkConnect',
  );
  assert.deepEqual(c, { Container: 'mine', EndpointConfig: {} });
});

// ------------------------------------------------------------------ routing

test('routing: dot segments, //, %2F and %2e are resolved before matching; unknown is undefined', () => {
  assert.equal(normalizePath('//v1.41//containers//json'), '/v1.41/containers/json');
  assert.equal(normalizePath('/v1.41/containers/x/%2e%2e/%2E%2E/plugins'), '/v1.41/plugins');
  assert.equal(normalizePath('/../../_ping'), '/_ping');
  assert.throws(() => normalizePath('/containers/%zz/json'));
  assert.throws(() => normalizePath('/containers/a%00b/json'));
  for (const [method, path] of [
    ['POST', '/v1.41/containers/abc/..%2F..%2Fswarm/init'],
    ['GET', '/v1.41/plugins'],
    ['POST', '/v1.41/plugins/pull'],
    ['GET', '/v1.41/secrets'],
    ['GET', '/v1.41/configs'],
    ['GET', '/v1.41/nodes'],
    ['GET', '/v1.41/tasks'],
    ['POST', '/v1.41/services/create'],
    ['POST', '/session'],
    ['POST', '/grpc'],
    ['GET', '/libpod/containers/json'],
    ['POST', '/containers/abc/copy'],
    ['GET', '/containers/abc/attach/ws'],
    ['PUT', '/containers/create'],
    ['GET', '/containers/'],
    ['DELETE', '/images/'],
  ] as const) {
    assert.equal(matchRoute(method, normalizePath(path)), undefined, `${method} ${path}`);
  }
});

test('routing: clean paths pass as they are; anything else takes the full clean-up', () => {
  for (const path of ['/_ping', '/v1.41/containers/abc/json', '/images/a.b/c:1.0/json', '/x/y.']) {
    assert.equal(normalizePath(path), path);
  }
  assert.equal(normalizePath('/containers/.hidden/json'), '/containers/.hidden/json');
  assert.equal(normalizePath('/containers/json/'), '/containers/json');
  assert.equal(normalizePath('/containers/./json'), '/containers/json');
  assert.equal(normalizePath('/containers/x/..'), '/containers');
  assert.equal(normalizePath('containers/json'), '/containers/json');
  assert.equal(normalizePath('/'), '/');
  assert.throws(() => normalizePath('/containers/a\0b/json'), /NUL/);
});

test('routing: every route is found for its own path, by it or by an earlier route of that path', () => {
  for (const [i, route] of ROUTES.entries()) {
    const params: Record<string, string> = {};
    for (const m of route.pattern.matchAll(/\{(\w+)(\*?)\}/g)) params[m[1] ?? ''] = m[2] ? 'a/b' : 'x1';
    for (const version of [undefined, '1.41']) {
      const path = buildPath(route, params, version);
      const found = matchRoute(route.method, path);
      assert.ok(found, `${route.method} ${path}`);
      assert.ok(ROUTES.indexOf(found.route) <= i, `${route.method} ${path} matched a later route`);
      assert.equal(buildPath(found.route, found.params, found.apiVersion), path);
    }
  }
});

test('request targets: // is a path, not a host; absolute-form yields its path; others are refused', () => {
  assert.deepEqual(splitTarget('//v1.41//containers/./create?name=x'), {
    path: '//v1.41//containers/./create',
    search: 'name=x',
  });
  assert.equal(
    matchRoute('POST', normalizePath(splitTarget('//v1.41//build')?.path ?? ''))?.route.id,
    'image.build',
  );
  assert.deepEqual(splitTarget('http://docker/v1.41/_ping'), { path: '/v1.41/_ping', search: '' });
  assert.deepEqual(splitTarget('/containers/json?a=1?b'), { path: '/containers/json', search: 'a=1?b' });
  assert.equal(splitTarget('*'), undefined);
  assert.equal(splitTarget('docker:2375'), undefined);
});

test('routing: /_ping HEAD and GET, versions split, image names keep their slashes, paths rebuilt', () => {
  assert.equal(matchRoute('HEAD', '/_ping')?.route.id, 'system.ping');
  assert.equal(matchRoute('GET', '/v1.41/_ping')?.apiVersion, '1.41');
  assert.deepEqual(splitVersion('/v1.41'), { apiVersion: '1.41', rest: '/' });
  assert.deepEqual(splitVersion('/version'), { apiVersion: undefined, rest: '/version' });
  const d = matchRoute('DELETE', '/images/localhost:5000/a/b:1');
  assert.equal(d?.route.id, 'image.delete');
  assert.equal(d?.params.name, 'localhost:5000/a/b:1');
  const t = matchRoute('POST', normalizePath('/v1.40/images/a%2Fb/tag'));
  assert.equal(t?.params.name, 'a/b');
  assert.ok(t);
  assert.equal(buildPath(t.route, t.params, t.apiVersion), '/v1.40/images/a/b/tag');
  // A resolved ID replaces whatever the client wrote; special characters are re-encoded.
  const i = matchRoute('GET', '/containers/my name/json');
  assert.ok(i);
  assert.equal(buildPath(i.route, { id: 'x/../y?z' }, undefined), '/containers/x%2F..%2Fy%3Fz/json');
});

// ------------------------------------------------------------------ container rules

test('create: falsy defaults as the docker CLI sends them pass', () => {
  const out = run(
    JSON.stringify({
      Image: 'busybox',
      Cmd: null,
      Labels: {},
      HostConfig: {
        Privileged: false,
        CapAdd: null,
        CapDrop: null,
        Devices: [],
        DeviceCgroupRules: null,
        DeviceRequests: null,
        SecurityOpt: null,
        MaskedPaths: null,
        ReadonlyPaths: null,
        CgroupParent: '',
        Runtime: '',
        LogConfig: { Type: '', Config: {} },
        VolumeDriver: '',
        Sysctls: {},
        PidMode: '',
        IpcMode: '',
        UTSMode: '',
        UsernsMode: '',
        CgroupnsMode: '',
        NetworkMode: 'default',
        Binds: null,
        Mounts: null,
        Links: null,
        VolumesFrom: null,
      },
      NetworkingConfig: { EndpointsConfig: {} },
    }),
  );
  assert.equal(hcOf(out).NetworkMode, 'berth-t');
  assert.deepEqual(out.Labels, { 'io.berth.tenant': 't' });
});

test('create: every escape shape is refused with its rule', () => {
  const cases: [string, RuleName, number?][] = [
    ['{"Privileged":true}', 'privileged'],
    ['{"PRIVILEGED":false,"privileged":true}', 'privileged'],
    ['{"CapAdd":["ALL"]}', 'capabilities'],
    ['{"CapAdd":"SYS_ADMIN"}', 'capabilities'],
    [
      '{"Devices":[{"PathOnHost":"/dev/sda","PathInContainer":"/dev/sda","CgroupPermissions":"rwm"}]}',
      'devices',
    ],
    ['{"DeviceCgroupRules":["a *:* rwm"]}', 'devices'],
    ['{"DeviceRequests":[{"Driver":"nvidia","Count":-1}]}', 'devices'],
    ['{"NetworkMode":"host"}', 'namespaces'],
    ['{"PidMode":"host"}', 'namespaces'],
    ['{"IpcMode":"host"}', 'namespaces'],
    ['{"UTSMode":"host"}', 'namespaces'],
    ['{"UsernsMode":"host"}', 'namespaces'],
    ['{"CgroupnsMode":"host"}', 'namespaces'],
    ['{"UTSMode":"container:mine"}', 'namespaces'],
    ['{"SecurityOpt":["seccomp=unconfined"]}', 'security-opt'],
    ['{"SecurityOpt":["seccomp:unconfined"]}', 'security-opt'],
    ['{"SecurityOpt":["apparmor:unconfined"]}', 'security-opt'],
    ['{"SecurityOpt":["label:disable"]}', 'security-opt'],
    ['{"SecurityOpt":["systempaths=unconfined"]}', 'security-opt'],
    ['{"SecurityOpt":["seccomp={\\"defaultAction\\":\\"SCMP_ACT_ALLOW\\"}"]}', 'security-opt'],
    ['{"SecurityOpt":["no-new-privileges","label=type:spc_t"]}', 'security-opt'],
    ['{"MaskedPaths":[]}', 'masked-paths'],
    ['{"ReadonlyPaths":["/proc/x"]}', 'masked-paths'],
    ['{"CgroupParent":"/"}', 'cgroup-parent'],
    ['{"Cgroup":"container:mine"}', 'cgroup-parent'],
    ['{"Runtime":"io.containerd.runc.v2"}', 'runtime'],
    ['{"LogConfig":{"Type":"journald"}}', 'log-driver'],
    ['{"VolumeDriver":"local"}', 'volume-driver'],
    ['{"Sysctls":{"kernel.core_pattern":"|/x"}}', 'sysctls'],
    ['{"Sysctls":{"net.ipv4.ip_forward":"1"}}', 'sysctls'],
    ['{"Binds":["/:/host"]}', 'binds'],
    ['{"Binds":["/var/run/docker.sock:/s"]}', 'binds'],
    ['{"Binds":["/workspace/../etc:/e"]}', 'binds'],
    ['{"Binds":["/workspacex:/w"]}', 'binds'],
    ['{"Mounts":[{"Type":"bind","Source":"/","Target":"/h"}]}', 'binds'],
    ['{"Mounts":[{"Type":"BIND","Source":"/","Target":"/h"}]}', 'binds'],
    ['{"Mounts":[{"Type":"npipe","Source":"x","Target":"/y"}]}', 'binds'],
    [
      '{"Mounts":[{"Type":"volume","Target":"/v","VolumeOptions":{"DriverConfig":{"Name":"local","Options":{"type":"none","o":"bind","device":"/"}}}}]}',
      'volume-driver',
    ],
    ['{"VolumesFrom":["other"]}', 'ownership', 404],
    ['{"Links":["other:db"]}', 'ownership', 404],
    ['{"PidMode":"container:other"}', 'ownership', 404],
    ['{"NetworkMode":"container:other"}', 'ownership', 404],
    ['{"NetworkMode":"othernet"}', 'ownership', 404],
    ['{"Binds":["othervol:/v"]}', 'ownership', 404],
    ['{"Mounts":[{"Type":"volume","Source":"othervol","Target":"/v"}]}', 'ownership', 404],
  ];
  for (const [hc, rule, status] of cases) {
    assert.throws(() => run(`{"Image":"x","HostConfig":${hc}}`), refusedWith(rule, status), hc);
  }
  for (const body of [
    '{"NetworkingConfig":{"EndpointsConfig":{"othernet":{}}}}',
    '{"NetworkingConfig":{"EndpointsConfig":{"host":{}}}}',
    '{"NetworkingConfig":{"EndpointsConfig":{"mynet":{"Links":["other:db"]}}}}',
  ]) {
    assert.throws(() => run(body), refusedWith('ownership', 404), body);
  }
});

test('create: each rule can be loosened by name for a trusted tenant, and only that rule', () => {
  const p = policyWith({ allow: new Set<RuleName>(['privileged', 'binds']) });
  const out = run('{"HostConfig":{"Privileged":true,"Binds":["/etc:/e:ro"]}}', ctx(p));
  assert.equal(hcOf(out).Privileged, true);
  assert.deepEqual(hcOf(out).Binds, ['/etc:/e:ro']);
  assert.throws(
    () => run('{"HostConfig":{"Privileged":true,"CapAdd":["X"]}}', ctx(p)),
    refusedWith('capabilities'),
  );
  const s = policyWith({ safeSysctls: new Set(['net.ipv4.tcp_tw_reuse']) });
  assert.deepEqual(hcOf(run('{"HostConfig":{"Sysctls":{"net.ipv4.tcp_tw_reuse":"1"}}}', ctx(s))).Sysctls, {
    'net.ipv4.tcp_tw_reuse': '1',
  });
});

test('create: references are rewritten to full IDs, binds translated, networks defaulted, labels forced', () => {
  const out = run(
    JSON.stringify({
      Labels: { 'io.berth.tenant': 'other', keep: 'me' },
      HostConfig: {
        Binds: ['/workspace:/w', '/workspace/a/../b:/b:ro', 'myvol:/v', 'fresh:/f', '/anon'],
        Mounts: [
          { Type: 'bind', Source: '/workspace/src', Target: '/src' },
          { Type: 'volume', Source: 'myvol', Target: '/m' },
          { Type: 'volume', Target: '/anon2' },
          { Type: 'tmpfs', Target: '/tmp' },
        ],
        VolumesFrom: ['mine:ro', 'mine'],
        Links: ['mine:db', '/mine'],
        PidMode: 'container:mine',
        IpcMode: 'container:mine',
        NetworkMode: 'mynet',
      },
      NetworkingConfig: { EndpointsConfig: { mynet: { Aliases: ['x'] } } },
    }),
  );
  const hc = hcOf(out);
  assert.deepEqual(out.Labels, { 'io.berth.tenant': 't', keep: 'me' });
  assert.deepEqual(hc.Binds, ['/srv/ws:/w', '/srv/ws/b:/b:ro', 'myvol:/v', 'fresh:/f', '/anon']);
  assert.deepEqual(
    (hc.Mounts as { Source?: string }[]).map((m) => m.Source),
    ['/srv/ws/src', 'myvol', undefined, undefined],
  );
  assert.deepEqual(hc.VolumesFrom, [`${OWN}:ro`, OWN]);
  assert.deepEqual(hc.Links, [`${OWN}:db`, `${OWN}:mine`]);
  assert.equal(hc.PidMode, `container:${OWN}`);
  assert.equal(hc.IpcMode, `container:${OWN}`);
  assert.equal(hc.NetworkMode, OWN_NET);
  assert.deepEqual(out.NetworkingConfig, { EndpointsConfig: { [OWN_NET]: { Aliases: ['x'] } } });
  // none stays none; bridge becomes the tenant network.
  assert.equal(hcOf(run('{"HostConfig":{"NetworkMode":"none"}}')).NetworkMode, 'none');
  assert.equal(hcOf(run('{"HostConfig":{"NetworkMode":"bridge"}}')).NetworkMode, 'berth-t');
  assert.equal(hcOf(run('{}')).NetworkMode, 'berth-t');
  // dockerd's default cgroup namespace on cgroup v1 is the host's: a private one is asked for.
  assert.equal(hcOf(run('{}')).CgroupnsMode, 'private');
  assert.equal(hcOf(run('{"HostConfig":{"CgroupnsMode":"private"}}')).CgroupnsMode, 'private');
  const ns = policyWith({ allow: new Set<RuleName>(['namespaces']) });
  assert.equal(hcOf(run('{}', ctx(ns))).CgroupnsMode, undefined);
});

test('bind translation: longest map wins, prefixes are whole segments, .. cannot climb out', () => {
  const maps = [
    { jobPath: '/w', hostPath: '/h/w' },
    { jobPath: '/w/deep/', hostPath: '/other' },
  ];
  assert.equal(translateJobPath('/w', maps), '/h/w');
  assert.equal(translateJobPath('/w/x', maps), '/h/w/x');
  assert.equal(translateJobPath('/w/deep/x', maps), '/other/x');
  assert.equal(translateJobPath('/wx', maps), undefined);
  assert.equal(translateJobPath('/w/../etc', maps), undefined);
  assert.equal(translateJobPath('/w/deep/../../etc/x', maps), undefined);
  assert.equal(translateJobPath('relative', maps), undefined);
  assert.equal(isInside('/h/w/x', '/h/w'), true);
  assert.equal(isInside('/h/wx', '/h/w'), false);
  assert.equal(isInside('/anything', '/'), true);
});

test('limits: unset values take the default or the cap; explicit values over the cap are refused', () => {
  const limits = { maxMemoryBytes: 1000, defaultNanoCpus: 5, maxNanoCpus: 10, maxPidsLimit: 100 };
  const hc: Record<string, unknown> = {};
  applyLimits(hc, limits);
  assert.deepEqual(hc, { Memory: 1000, NanoCpus: 5, PidsLimit: 100 });
  // -1 and 0 mean "unlimited" pids to dockerd: they get the cap.
  const unlimited: Record<string, unknown> = { PidsLimit: -1, Memory: 0 };
  applyLimits(unlimited, limits);
  assert.deepEqual(unlimited, { Memory: 1000, NanoCpus: 5, PidsLimit: 100 });
  const within: Record<string, unknown> = { Memory: 500, NanoCpus: 10, PidsLimit: 1 };
  applyLimits(within, limits);
  assert.deepEqual(within, { Memory: 500, NanoCpus: 10, PidsLimit: 1 });
  for (const over of [{ Memory: 1001 }, { NanoCpus: 11 }, { PidsLimit: 101 }]) {
    assert.throws(() => applyLimits({ ...over }, limits), refusedWith('limits'), JSON.stringify(over));
  }
  assert.throws(() => applyLimits({}, { maxContainers: 2 }, 2), refusedWith('limits'));
  applyLimits({}, { maxContainers: 2 }, 1);
  // Through create: a plain `docker run` under a pids cap gets the cap, not a refusal.
  const p = policyWith({ limits: { maxPidsLimit: 64 } });
  assert.equal(hcOf(run('{"HostConfig":{"PidsLimit":null}}', ctx(p))).PidsLimit, 64);
  assert.throws(() => run('{"HostConfig":{"PidsLimit":65}}', ctx(p)), refusedWith('limits'));
  // `allow: [limits]` lifts the caps (defaults still fill unset values).
  const trusted = policyWith({
    allow: new Set<RuleName>(['limits']),
    limits: { maxPidsLimit: 64, maxContainers: 1 },
  });
  assert.equal(hcOf(run('{"HostConfig":{"PidsLimit":65}}', ctx(trusted, 5))).PidsLimit, 65);
  assert.equal(hcOf(run('{}', ctx(trusted, 5))).PidsLimit, 64);
  assert.deepEqual(checkContainerUpdate({ PidsLimit: -1 }, trusted), { PidsLimit: -1 });
});

test('update: devices, cgroup parent and raising limits (including an unlimited pids limit) are refused', () => {
  const p = policyWith({ limits: { maxMemoryBytes: 1000, maxPidsLimit: 100 } });
  const upd = (s: string) => checkContainerUpdate(canonicalize(s, SCHEMAS['container.update'], 'Update'), p);
  assert.throws(() => upd('{"Memory":2000}'), refusedWith('limits'));
  assert.throws(() => upd('{"PidsLimit":-1}'), refusedWith('limits'));
  assert.throws(() => upd('{"pidslimit":0}'), refusedWith('limits'));
  assert.throws(() => upd('{"CgroupParent":"x"}'), refusedWith('cgroup-parent'));
  assert.throws(() => upd('{"Devices":[{}]}'), refusedWith('devices'));
  assert.deepEqual(upd('{"Memory":0,"PidsLimit":null,"RestartPolicy":{"Name":"no"}}'), {
    Memory: 0,
    RestartPolicy: { Name: 'no' },
  });
  // Unknown keys (HostConfig fields that update does not take) are not forwarded.
  assert.deepEqual(upd('{"Privileged":true,"Binds":["/:/h"]}'), {});
});

test('exec: privileged refused in any spelling; plain exec passes', () => {
  const ex = (s: string) =>
    checkExecCreate(canonicalize(s, SCHEMAS['exec.create'], 'ExecConfig'), defaultPolicy());
  assert.throws(() => ex('{"Cmd":["sh"],"privileged":true}'), refusedWith('privileged'));
  assert.throws(() => ex('{"Privileged":false,"PRIVILEGED":true}'), refusedWith('privileged'));
  assert.throws(() => ex('{"Privileged":false,"Privileged":true}'), refusedWith('privileged'));
  ex('{"Cmd":["sh"],"Privileged":false,"Tty":true}');
});

test('networks and volumes: drivers and options are refused, labels are forced', () => {
  const labels = { 'io.berth.tenant': 't' };
  const net = (s: string) =>
    checkNetworkCreate(canonicalize(s, SCHEMAS['network.create'], 'NetworkCreate'), labels, defaultPolicy());
  assert.deepEqual(net('{"Name":"n","Labels":{"io.berth.tenant":"x"}}').Labels, labels);
  for (const bad of [
    '{"Name":"n","Driver":"macvlan"}',
    '{"Name":"n","Driver":"host"}',
    '{"Name":"n","Options":{"com.docker.network.bridge.name":"docker0"}}',
    '{"Name":"n","ConfigFrom":{"Network":"x"}}',
    '{"Name":"n","ConfigOnly":true}',
  ]) {
    assert.throws(() => net(bad), refusedWith('network-driver'), bad);
  }
  net('{"Name":"n","Driver":"bridge","Options":{"com.docker.network.driver.mtu":"1400"}}');
  const vol = (s: string) =>
    checkVolumeCreate(canonicalize(s, SCHEMAS['volume.create'], 'VolumeCreate'), labels, defaultPolicy());
  assert.deepEqual(vol('{"Name":"vol","Labels":{"io.berth.tenant":"x"}}').Labels, labels);
  vol('{"Name":"vol","DriverOpts":{"size":"1G"}}');
  assert.throws(
    () => vol('{"Name":"vol","DriverOpts":{"type":"none","o":"bind","device":"/"}}'),
    refusedWith('volume-options'),
  );
  assert.throws(() => vol('{"Name":"vol","DriverOpts":{"Device":"/"}}'), refusedWith('volume-options'));
  assert.throws(() => vol('{"Name":"vol","Driver":"sshfs"}'), refusedWith('volume-driver'));
  // Names the local driver would refuse are malformed here (a path must not reach a lookup).
  for (const bad of ['../x', 'v', '-x', 'a/b', 'x y'])
    assert.throws(() => vol(JSON.stringify({ Name: bad })), BodyError, bad);
  vol('{"Name":"my_vol-1.data"}');
  // An unnamed volume gets its name from the engine.
  vol('{}');
});

test('build: network mode, cgroup parent, remote, isolation and BuildKit are refused; labels forced', () => {
  const b = (qs: string) => checkBuild(new URLSearchParams(qs), { 'io.berth.tenant': 't' }, defaultPolicy());
  for (const bad of [
    'networkmode=host',
    'networkmode=container:abc',
    'networkmode=othertenantnet',
    'networkmode=HOST',
    'cgroupparent=/',
    'remote=http://x/ctx.tar',
    'remote=context',
    'isolation=hyperv',
    'version=2',
  ]) {
    assert.throws(() => b(bad), refusedWith('build-options'), bad);
  }
  // Go's FormValue reads the first value: the checked value is the one dockerd reads.
  assert.throws(() => b('networkmode=host&networkmode=default'), refusedWith('build-options'));
  for (const ok of ['', 'networkmode=default', 'networkmode=bridge', 'networkmode=none', 'version=1&t=a'])
    b(ok);
  for (const bad of ['labels=notjson', 'labels=%22x%22', 'labels=%5B%5D', 'labels=null'])
    assert.throws(() => b(bad), refusedWith('malformed', 400), bad);
  const labelsOf = (q: URLSearchParams) => q.getAll('labels').map((l) => JSON.parse(l) as unknown);
  // Built images name no owner (containers would inherit the label, see ownership.ts): a tenant
  // label the client asks for is emptied, whatever its spelling in JSON; Go reads the first value.
  assert.deepEqual(
    labelsOf(b('labels=%7B%22a%22%3A%221%22%7D&labels=%7B%22io.berth.tenant%22%3A%22x%22%7D')),
    [{ a: '1' }],
  );
  assert.deepEqual(labelsOf(b('labels=%7B%22io.berth.tenan%5Cu0074%22%3A%22x%22%7D')), [
    { 'io.berth.tenant': '' },
  ]);
  // The tenant label is not added: each build label is a LABEL step of dockerd's own.
  assert.deepEqual(labelsOf(b('')), []);
  const withRun = checkBuild(
    new URLSearchParams('labels=%7B%22a%22%3A%221%22%7D'),
    { 'io.berth.tenant': 't', 'io.berth.run': 'r1' },
    defaultPolicy(),
  );
  assert.deepEqual(labelsOf(withRun), [{ a: '1', 'io.berth.run': 'r1' }]);
  assert.equal(boolValue('0'), false);
  assert.equal(boolValue(' False '), false);
  assert.equal(boolValue('1'), true);
  assert.equal(boolValue(null), false);
});

test('policy file: JSON or YAML, defaults merged under the first matching tenant glob, every problem reported', () => {
  const json = JSON.stringify({
    defaults: { limits: { maxContainers: 5 }, sysctls: ['net.ipv4.tcp_tw_reuse'] },
    tenants: { 'ci-*': { allow: ['sysctls'], limits: { maxContainers: 9 } }, '*': { allow: ['binds'] } },
  });
  const ci = policyFor(json, 'p.json', 'ci-7');
  assert.deepEqual([...ci.allow], ['sysctls']);
  assert.equal(ci.limits.maxContainers, 9);
  assert.ok(ci.safeSysctls.has('net.ipv4.tcp_tw_reuse'));
  assert.ok(ci.safeSysctls.has('net.ipv4.ping_group_range'));
  assert.deepEqual([...policyFor(json, 'p.json', 'other').allow], ['binds']);
  // Globs are anchored and dots are literal.
  assert.equal(policyFor('tenants:\n  "a.b": { allow: [binds] }\n', 'p', 'axb').allow.size, 0);
  assert.equal(policyFor('tenants:\n  "ci": { allow: [binds] }\n', 'p', 'ci-2').allow.size, 0);
  assert.equal(policyFor('', 'p', 'x').allow.size, 0);
  assert.throws(
    () =>
      policyFor(
        'tenants:\n  x:\n    allow: [privileged, everything]\n    limits: { maxMemoryBytes: -1, maxContainers: 1.5 }\n    sysctls: [1]\n',
        'p.yml',
        'x',
      ),
    (e: unknown) => {
      const m = (e as Error).message;
      return (
        /4 problem/.test(m) &&
        m.includes('tenants.x.allow[1]') &&
        m.includes('tenants.x.limits.maxMemoryBytes') &&
        m.includes('tenants.x.limits.maxContainers') &&
        m.includes('tenants.x.sysctls')
      );
    },
  );
  assert.throws(() => policyFor('tenants: [a]', 'p.yml', 'x'), /tenants: expected a mapping/);
  assert.throws(() => policyFor('- a\n', 'p.yml', 'x'), /\(root\)/);
  assert.throws(() => policyFor('a: [', 'p.yml', 'x'), /p\.yml/);
});

test('registries: a policy list restricts what pulls, pushes, logins and searches name; none means any', () => {
  const open = defaultPolicy();
  const only: Policy = { ...open, registries: new Set(['127.0.0.1:5000', 'docker.io']) };
  const refusedBy = (f: () => void) => {
    try {
      f();
    } catch (e) {
      return e instanceof Refusal ? e.rule : 'not a refusal';
    }
    return undefined;
  };
  checkImageRegistry(open, 'pull of', '10.0.0.1:1/x');
  checkRegistry(open, 'login', undefined);
  for (const ok of [
    'busybox',
    'library/busybox:1',
    'docker.io/a/b',
    'index.docker.io/a/b',
    '127.0.0.1:5000/a:1',
  ])
    assert.equal(
      refusedBy(() => checkImageRegistry(only, 'pull of', ok)),
      undefined,
      ok,
    );
  // Names whose first part reads as a host (a dot, a colon, localhost, an upper-case letter).
  for (const bad of ['127.0.0.1:5001/a', 'localhost:5000/a', 'LOCALHOST:5000/a', 'Host/a', 'a.b/c@sha256:00'])
    assert.equal(
      refusedBy(() => checkImageRegistry(only, 'pull of', bad)),
      'registries',
      bad,
    );
  assert.equal(searchRegistry('busybox'), 'docker.io');
  assert.equal(searchRegistry('someone/app'), 'docker.io');
  assert.equal(searchRegistry('127.0.0.1:5001/app'), '127.0.0.1:5001');
  assert.equal(searchRegistry('localhost/app'), 'localhost');
  assert.equal(loginRegistry(''), 'docker.io');
  assert.equal(loginRegistry('https://index.docker.io/v1/'), 'docker.io');
  assert.equal(loginRegistry('http://127.0.0.1:5000'), '127.0.0.1:5000');
  assert.equal(loginRegistry('Registry.Example:443/v2/'), 'registry.example:443');
  assert.equal(loginRegistry('[::1]:5000'), '[::1]:5000');
  for (const odd of ['https://u@h:1/', 'https://h?x', 'h /', 'ftp://h', 'https://h#f', 'h\\x'])
    assert.equal(loginRegistry(odd), undefined, odd);
  assert.equal(
    refusedBy(() => checkRegistry(only, 'login', undefined)),
    'registries',
  );
  assert.match(
    (() => {
      try {
        checkRegistry({ ...open, registries: new Set() }, 'search', 'docker.io');
      } catch (e) {
        return (e as Error).message;
      }
      return '';
    })(),
    /^berth: registries: search: registry docker\.io is not one this tenant may use \(allowed: none\)$/,
  );
  // The policy file: hosts folded to lower case, Docker Hub's alias read, a tenant's list replaces the default.
  const text =
    'defaults:\n  registries: [Index.Docker.io, "127.0.0.1:5000"]\ntenants:\n  "ci-*": { registries: [] }\n';
  assert.deepEqual([...(policyFor(text, 'p', 'x').registries ?? [])], ['docker.io', '127.0.0.1:5000']);
  assert.equal(policyFor(text, 'p', 'ci-1').registries?.size, 0);
  assert.equal(policyFor('', 'p', 'x').registries, undefined);
  assert.throws(
    () => policyFor('defaults:\n  registries: ["https://h/", "h/x", 5, ok.example]\n', 'p.yml', 'x'),
    (e: unknown) => {
      const m = (e as Error).message;
      return (
        /3 problem/.test(m) && m.includes('defaults.registries[0]') && m.includes('defaults.registries[2]')
      );
    },
  );
  assert.throws(
    () => policyFor('defaults:\n  registries: h\n', 'p.yml', 'x'),
    /defaults\.registries: expected a list/,
  );
});

test('commit and import changes: one line each, no escape at the end, no directive, no berth labels', () => {
  checkChanges(['ENV A=1', 'LABEL a=b', 'CMD ["sh", "-c", "echo \\\\ x"]', 'WORKDIR /w']);
  for (const bad of [
    ['ENV Z=\\'],
    ['ENV Z=\\  '],
    ['ENV Z=`'],
    ['# escape=`'],
    ['  #x'],
    ['ENV A=1\nLABEL b=2'],
    ['LABEL Io.Berth.Role=x'],
    ['LABEL io\\.berth\\.role=dind'],
    ['LABEL "io.berth.x"=1'],
    ['LABEL $K=1'],
  ])
    assert.throws(
      () => checkChanges(bad),
      (e: unknown) => e instanceof Refusal && e.rule === 'ownership',
      JSON.stringify(bad),
    );
});

test('build resources: ulimits as for containers, memory and CPU filled and capped, RUN on the tenant network', () => {
  const limited: Policy = {
    ...defaultPolicy(),
    limits: {
      defaultMemoryBytes: 512 * 2 ** 20,
      maxMemoryBytes: 2 ** 30,
      defaultNanoCpus: 1e9,
      maxNanoCpus: 2e9,
    },
  };
  const b = (qs: string, p: Policy = limited) => checkBuild(new URLSearchParams(qs), {}, p, 'berth-t');
  assert.throws(
    () => b('ulimits=[{"Name":"rtprio","Soft":99,"Hard":99}]'),
    /berth: resources: ulimit rtprio/,
  );
  assert.throws(() => b('ulimits=nope'), /berth: malformed: ulimits/);
  // Read as Go reads it, keys without case and the last one winning (red-team pass 22), and
  // forwarded as read: never the client's text.
  assert.throws(
    () => b(`ulimits=${encodeURIComponent('[{"Name":"nofile","NAME":"rtprio","Soft":99,"Hard":99}]')}`),
    /berth: resources: ulimit rtprio/,
  );
  assert.equal(
    b(`ulimits=${encodeURIComponent('[{"name":"nofile","soft":1024,"HARD":1024}]')}`).get('ulimits'),
    '[{"Name":"nofile","Soft":1024,"Hard":1024}]',
  );
  assert.equal(b('ulimits=null').get('ulimits'), null);
  assert.throws(() => b(`ulimits=${encodeURIComponent('[] , "U": []')}`), /berth: malformed: ulimits/);
  assert.equal(
    b('ulimits=[{"Name":"nofile","Soft":1024,"Hard":1024}]').get('ulimits'),
    '[{"Name":"nofile","Soft":1024,"Hard":1024}]',
  );
  const filled = b('');
  assert.equal(filled.get('memory'), String(512 * 2 ** 20));
  assert.equal(filled.get('cpuperiod'), '100000');
  assert.equal(filled.get('cpuquota'), '100000');
  assert.equal(b('memory=1048576').get('memory'), '1048576');
  assert.throws(() => b(`memory=${2 ** 31}`), /berth: limits: memory/);
  assert.throws(() => b('cpuperiod=100000&cpuquota=300000'), /berth: limits: CPU/);
  assert.equal(b('cpuperiod=100000&cpuquota=50000').get('cpuquota'), '50000');
  assert.throws(() => b('memory=lots'), /berth: malformed: memory=lots/);
  // A policy that allows `limits` only fills.
  assert.equal(
    b(`memory=${2 ** 31}`, { ...limited, allow: new Set(['limits']) }).get('memory'),
    String(2 ** 31),
  );
  // The network: default, bridge and empty become the tenant's; none stays none.
  for (const n of ['', 'default', 'bridge'])
    assert.equal(b(`networkmode=${n}`).get('networkmode'), 'berth-t');
  assert.equal(b('').get('networkmode'), 'berth-t');
  assert.equal(b('networkmode=none').get('networkmode'), 'none');
});

test('tenant networks: slugs that coincide get different names, and their shape is reserved', () => {
  assert.notEqual(tenantNetworkName('a/b'), tenantNetworkName('a-b'));
  assert.match(tenantNetworkName('job-42'), /^berth-job-42-[0-9a-f]{8}$/);
  assert.throws(
    () => checkNetworkCreate({ Name: tenantNetworkName('victim') }, {}, defaultPolicy()),
    /berth: ownership: network names like berth-victim-/,
  );
  // Compose's own names are not the reserved shape.
  assert.equal(
    checkNetworkCreate({ Name: 'berth-demo_default' }, {}, defaultPolicy()).Name,
    'berth-demo_default',
  );
});

test('network names of hex digits alone are refused at any length; names with another letter pass', () => {
  for (const n of ['a', 'f029', '50e51', 'abcdef012345', 'a'.repeat(64)])
    assert.throws(
      () => checkNetworkCreate({ Name: n }, {}, defaultPolicy()),
      /berth: ownership: the network name .* reads as a network ID/,
      n,
    );
  for (const n of ['app', 'f029-net', 'cafe_default', 'G00D'])
    assert.equal(checkNetworkCreate({ Name: n }, {}, defaultPolicy()).Name, n);
});

test('weights above the defaults and swap beyond twice the memory cap are refused (rule limits)', () => {
  const p = defaultPolicy();
  const capped: Policy = { ...p, limits: { maxMemoryBytes: 1 << 27 } };
  const refusedAs = (rule: RuleName) => (e: unknown) => e instanceof Refusal && e.rule === rule;
  assert.throws(() => checkContainerUpdate({ CpuShares: 2048 }, p), refusedAs('limits'));
  assert.throws(() => checkContainerUpdate({ BlkioWeight: 501 }, p), refusedAs('limits'));
  assert.doesNotThrow(() => checkContainerUpdate({ CpuShares: 512, BlkioWeight: 100 }, p));
  // A policy that allows `limits` (a trusted tenant) may set them.
  assert.doesNotThrow(() => checkContainerUpdate({ CpuShares: 2048 }, { ...p, allow: new Set(['limits']) }));
  // Swap: unlimited or over twice the cap is refused where there is a memory cap, and only there.
  assert.throws(() => checkContainerUpdate({ MemorySwap: -1 }, capped), refusedAs('limits'));
  assert.throws(() => checkContainerUpdate({ MemorySwap: (1 << 28) + 1 }, capped), refusedAs('limits'));
  assert.doesNotThrow(() => checkContainerUpdate({ MemorySwap: 1 << 28 }, capped));
  assert.doesNotThrow(() => checkContainerUpdate({ MemorySwap: -1 }, p));
  const hc = { MemorySwap: -1 };
  assert.throws(() => applyLimits(hc, capped.limits), refusedAs('limits'));
  assert.doesNotThrow(() => applyLimits({ MemorySwap: -1 }, capped.limits, undefined, true));
  const q = (s: string) => new URLSearchParams(s);
  assert.throws(() => checkBuild(q('cpushares=4096'), {}, p, 'n'), refusedAs('limits'));
  assert.throws(() => checkBuild(q('memswap=-1'), {}, capped, 'n'), refusedAs('limits'));
  assert.doesNotThrow(() => checkBuild(q('memswap=-1&cpushares=0'), {}, p, 'n'));
});
