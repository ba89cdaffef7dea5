import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BodyError, SCHEMAS, canonicalize, foldKey } from './canonical.js';
import { JObject, parseOrdered } from './json.js';
import { buildPath, matchRoute, normalizePath } from './routes.js';
import {
  Refusal,
  checkBuild,
  checkContainerCreate,
  checkContainerName,
  defaultPolicy,
  translateJobPath,
} from './policy.js';
import type { Resolver } from './policy.js';
import { policyFor } from './policy-file.js';
import {
  ProgressReport,
  TenantState,
  imageLabelsFor,
  leadingContainerId,
  listedContainerIds,
  ambiguousRef,
  normalizeTag,
  repositoryOf,
  tenantSlug,
  createdNanos,
  hideForeignContainers,
} from './ownership.js';
import { labelMatches, parseFilters, untilSeconds } from './proxy.js';
import { LABEL_TENANT } from '../common/index.js';

const create = (body: string) => canonicalize(body, SCHEMAS['container.create'], 'Config');

test('the ordered parser keeps duplicate keys in order, as Go reads them', () => {
  const v = parseOrdered('{"a":1,"A":2,"a":3}');
  assert.ok(v instanceof JObject);
  assert.deepEqual(v.pairs, [
    ['a', 1],
    ['A', 2],
    ['a', 3],
  ]);
  assert.throws(() => parseOrdered('{"a":1,}'), /expected a key/);
  assert.throws(() => parseOrdered('{"a":1} x'), /after the value/);
});

test('keys match fields case-insensitively with Go folding; the last one wins; unknown keys are dropped', () => {
  assert.equal(foldKey('ſecurityOpt'), 'securityopt');
  assert.equal(foldKey('Lin\u212As'), 'links');
  const b = create('{"image":"x","HOSTCONFIG":{"privileged":false,"PRIVILEGED":true},"Smuggled":1}');
  assert.deepEqual(b, { Image: 'x', HostConfig: { Privileged: true } });
  const later = create('{"HostConfig":{"Privileged":true},"hostConfig":{"Privileged":false}}');
  assert.deepEqual(later, { HostConfig: { Privileged: false } });
  // null is a no-op in Go: the earlier value stays.
  assert.deepEqual(create('{"HostConfig":{"Privileged":true,"Privileged":null}}'), {
    HostConfig: { Privileged: true },
  });
  // Escaped keys are keys like any other.
  assert.deepEqual(create('{"HostConfig":{"\\u0050rivileged":true}}'), { HostConfig: { Privileged: true } });
});

test('wrong types are errors, as dockerd answers them', () => {
  assert.throws(() => create('{"HostConfig":{"Privileged":"true"}}'), BodyError);
  assert.throws(() => create('{"HostConfig":{"CapAdd":{"a":1}}}'), /cannot unmarshal object/);
  assert.throws(() => create('{"HostConfig":{"Memory":1.5}}'), /int64/);
  assert.throws(() => create('{"HostConfig":'), /invalid JSON/);
});

test('paths are decoded and cleaned before routing; the forwarded path is rebuilt', () => {
  assert.equal(normalizePath('/v1.41//containers/./abc/../x/json'), '/v1.41/containers/x/json');
  assert.equal(normalizePath('/v1.41/containers/%2e%2e/swarm%2Finit'), '/v1.41/swarm/init');
  assert.equal(matchRoute('POST', normalizePath('/v1.41/containers/%2e%2e/swarm%2Finit')), undefined);
  const m = matchRoute('get', '/v1.41/images/registry:5000/team/app:1/json');
  assert.equal(m?.route.id, 'image.inspect');
  assert.equal(m?.params.name, 'registry:5000/team/app:1');
  assert.equal(buildPath(m.route, m.params, m.apiVersion), '/v1.41/images/registry%3A5000/team/app%3A1/json');
  assert.equal(matchRoute('GET', '/containers/json')?.route.id, 'container.list');
  for (const p of ['/swarm/init', '/plugins', '/session', '/grpc', '/libpod/info', '/services'])
    assert.equal(matchRoute('POST', p), undefined, p);
});

const resolver = (owned: Record<string, string> = {}): Resolver => ({
  container: (ref) => {
    const id = owned[ref];
    if (!id) throw new Refusal('ownership', `No such container: ${ref}`, 404);
    return id;
  },
  network: (ref) => {
    throw new Refusal('ownership', `network ${ref} not found`, 404);
  },
  volume: () => true,
  bind: (src) => {
    const host = translateJobPath(src, [{ jobPath: '/workspace', hostPath: '/srv/ws' }]);
    return host === undefined
      ? { refused: `bind source ${src} is not inside a mapped job path` }
      : { forward: host };
  },
});
const ctx = {
  labels: { 'io.berth.tenant': 't' },
  network: 'berth-t',
  policy: defaultPolicy(),
  containerCount: 0,
};

test('create: labels forced, default network replaced, binds translated, references resolved', () => {
  const out = checkContainerCreate(
    {
      Image: 'x',
      Labels: { 'io.berth.tenant': 'forged', app: 'a' },
      HostConfig: { Binds: ['/workspace/src:/src:ro'], VolumesFrom: ['db:ro'] },
    },
    ctx,
    resolver({ db: 'f'.repeat(64) }),
  );
  assert.deepEqual(out.Labels, { 'io.berth.tenant': 't', app: 'a' });
  const hc = out.HostConfig as Record<string, unknown>;
  assert.equal(hc.NetworkMode, 'berth-t');
  assert.deepEqual(hc.Binds, ['/srv/ws/src:/src:ro']);
  assert.deepEqual(hc.VolumesFrom, [`${'f'.repeat(64)}:ro`]);
});

test('create: every escape is refused with its rule', () => {
  const cases: [Record<string, unknown>, string][] = [
    [{ Privileged: true }, 'privileged'],
    [{ CapAdd: ['NET_ADMIN'] }, 'capabilities'],
    [{ DeviceCgroupRules: ['c 1:3 mr'] }, 'devices'],
    [{ UsernsMode: 'host' }, 'namespaces'],
    [{ IpcMode: 'host' }, 'namespaces'],
    [{ SecurityOpt: ['label=disable'] }, 'security-opt'],
    [{ SecurityOpt: ['apparmor=unconfined'] }, 'security-opt'],
    [{ ReadonlyPaths: [] }, 'masked-paths'],
    [{ Runtime: 'sysbox-runc' }, 'runtime'],
    [{ LogConfig: { Type: 'syslog' } }, 'log-driver'],
    [{ VolumeDriver: 'x' }, 'volume-driver'],
    [{ Binds: ['/etc:/etc'] }, 'binds'],
    [{ Mounts: [{ Type: 'npipe', Source: 'x', Target: 'y' }] }, 'binds'],
  ];
  for (const [hc, rule] of cases) {
    assert.throws(
      () => checkContainerCreate({ Image: 'x', HostConfig: hc }, ctx, resolver()),
      (e: unknown) => e instanceof Refusal && e.rule === rule,
      JSON.stringify(hc),
    );
  }
  assert.throws(
    () => checkContainerCreate({ Image: 'x', HostConfig: { Links: ['other:db'] } }, ctx, resolver()),
    (e: unknown) => e instanceof Refusal && e.status === 404,
  );
});

test('a policy file can allow named rules for matching tenants, and reports every problem', () => {
  const p = policyFor(
    'tenants:\n  "trusted/*":\n    allow: [binds]\n    limits: { maxContainers: 3 }\n',
    'p.yml',
    'trusted/a',
  );
  assert.ok(p.allow.has('binds'));
  assert.equal(p.limits.maxContainers, 3);
  assert.equal(policyFor('tenants:\n  "trusted/*":\n    allow: [binds]\n', 'p.yml', 'other').allow.size, 0);
  assert.throws(
    () => policyFor('tenants:\n  x:\n    allow: [nope]\n    limits: { maxFoo: 1 }\nextra: 1\n', 'p.yml', 'x'),
    /3 problem\(s\)[\s\S]*allow\[0\][\s\S]*maxFoo[\s\S]*extra/,
  );
});

test('build options and tags', () => {
  assert.throws(
    () => checkBuild(new URLSearchParams('networkmode=host'), {}, defaultPolicy()),
    /build-options/,
  );
  assert.throws(
    () => checkBuild(new URLSearchParams('remote=https://x/y.git'), {}, defaultPolicy()),
    /remote URL/,
  );
  const q = checkBuild(
    new URLSearchParams('t=app&labels={"a":"1","io.berth.tenant":"x"}'),
    { 'io.berth.tenant': 't' },
    defaultPolicy(),
  );
  assert.deepEqual(JSON.parse(q.get('labels') ?? ''), { a: '1', 'io.berth.tenant': '' });
  assert.equal(normalizeTag('busybox'), 'busybox:latest');
  assert.equal(normalizeTag('docker.io/library/busybox:1'), 'busybox:1');
  assert.equal(normalizeTag('127.0.0.1:5000/app'), '127.0.0.1:5000/app:latest');
  // dockerd's reading: index.docker.io is docker.io, a first part with . : or capitals or localhost is a registry.
  assert.equal(normalizeTag('index.docker.io/team/app:2'), 'team/app:2');
  assert.equal(normalizeTag('index.docker.io/busybox'), 'busybox:latest');
  assert.equal(normalizeTag('docker.io/team/app'), 'team/app:latest');
  assert.equal(normalizeTag('localhost/app:1'), 'localhost/app:1');
  assert.equal(normalizeTag('localhost:5000/a/b'), 'localhost:5000/a/b:latest');
  assert.equal(normalizeTag('docker.io/library/team/app:1'), 'library/team/app:1');
  // A Hub path whose first part looks like a registry shows as a name that reads back differently.
  assert.equal(normalizeTag('docker.io/docker.io/app:ci'), 'docker.io/app:ci');
  assert.equal(normalizeTag('docker.io/app:ci'), 'app:ci');
  assert.equal(ambiguousRef('docker.io/docker.io/app:ci'), true);
  assert.equal(ambiguousRef('docker.io/quay.io/app'), true);
  assert.equal(ambiguousRef('index.docker.io/localhost/app'), true);
  for (const ok of ['app', 'quay.io/app:1', 'docker.io/team/app', 'localhost:5000/x', 'app@sha256:00'])
    assert.equal(ambiguousRef(ok), false, ok);
  assert.equal(tenantSlug('env/production'), 'env-production');
});

test('digest references and repositories read as RepoDigests shows them', () => {
  const d = `sha256:${'a'.repeat(64)}`;
  assert.equal(normalizeTag(`docker.io/library/busybox@${d}`), `busybox@${d}`);
  assert.equal(
    normalizeTag(`127.0.0.1:5000/app:1@${d}`),
    `127.0.0.1:5000/app@${d}`,
    'a tag before it is not kept',
  );
  assert.equal(normalizeTag(`index.docker.io/team/app@${d}`), `team/app@${d}`);
  assert.equal(repositoryOf('127.0.0.1:5000/app:1'), '127.0.0.1:5000/app');
  assert.equal(repositoryOf(`127.0.0.1:5000/app@${d}`), '127.0.0.1:5000/app');
  assert.equal(repositoryOf('docker.io/library/busybox'), 'busybox');
  assert.equal(repositoryOf('localhost:5000/a/b:2'), 'localhost:5000/a/b');
  const s = new TenantState('t');
  s.digests.set(`app@${d}`, 'sha256:1');
  assert.equal(s.ownsDigestAt(`docker.io/library/app@${d}`, 'sha256:1'), true);
  assert.equal(s.ownsDigestAt(`app@${d}`, 'sha256:2'), false, 'not once it names another image');
});

test('container ownership: an inherited tenant label counts only for containers the guard made', () => {
  const s = new TenantState('t1');
  const mine = { [LABEL_TENANT]: 't1' };
  assert.equal(s.ownsContainer('a', mine, {}), true, 'label set by the guard, image names no owner');
  assert.equal(s.ownsContainer('a', mine, { [LABEL_TENANT]: '' }), true);
  assert.equal(s.ownsContainer('a', mine, { [LABEL_TENANT]: 'other' }), true, 'the guard overrode it');
  assert.equal(s.ownsContainer('a', mine, mine), false, 'could be inherited: not without state');
  s.containers.add('a');
  assert.equal(s.ownsContainer('a', mine, mine), true, 'made by this guard');
  assert.equal(s.ownsContainer('b', { [LABEL_TENANT]: 't2' }, {}), false);
  assert.deepEqual(imageLabelsFor({ [LABEL_TENANT]: 't1', k: 'v' }), { [LABEL_TENANT]: '', k: 'v' });
  const q = checkBuild(
    new URLSearchParams({ labels: JSON.stringify({ [LABEL_TENANT]: 'victim' }) }),
    mine,
    defaultPolicy(),
  );
  assert.deepEqual(JSON.parse(q.get('labels') ?? ''), { [LABEL_TENANT]: '' });
});

test('prune filters read as Docker does: lists or maps, label / label! / until', () => {
  assert.deepEqual(
    [...parseFilters('{"label":["a=b"],"until":{"10m":true}}')],
    [
      ['label', ['a=b']],
      ['until', ['10m']],
    ],
  );
  assert.equal(parseFilters(null).size, 0);
  // The older form counts every key, as dockerd's filters do, whatever its value (red-team pass 22).
  assert.deepEqual(parseFilters('{"label":{"a=b":false,"c":true}}').get('label'), ['a=b', 'c']);
  assert.throws(() => parseFilters('[1]'), BodyError);
  assert.throws(() => parseFilters('{x'), BodyError);
  assert.equal(labelMatches({ a: 'b' }, 'a'), true);
  assert.equal(labelMatches({ a: 'b' }, 'a=b'), true);
  assert.equal(labelMatches({ a: 'b' }, 'a=c'), false);
  assert.equal(labelMatches(null, 'a'), false);
  const now = Date.UTC(2026, 0, 1);
  assert.equal(untilSeconds('1700000000'), 1700000000);
  assert.equal(untilSeconds('10m', now), now / 1000 - 600);
  assert.equal(untilSeconds('1.5h', now), now / 1000 - 5400);
  assert.equal(untilSeconds('2026-01-01T00:00:00Z'), now / 1000);
  assert.throws(() => untilSeconds('soon'), BodyError);
});

test('an inspect answer’s ID is read only from its opening bytes', () => {
  const id = 'a'.repeat(32) + '0123456789abcdef'.repeat(2);
  assert.equal(leadingContainerId(Buffer.from(`{"Id":"${id}","Created":"2026-11-23"}`)), id);
  assert.equal(leadingContainerId(Buffer.from(`{"Id":"${id}"}`)), id);
  // Anything else in front, or an ID that is not 64 lower-case hex digits, names nothing.
  for (const text of [
    ` {"Id":"${id}","Created":""}`,
    `{"Name":"/x","Id":"${id}"}`,
    `{"Name":"{\\"Id\\":\\"${id}\\","}`,
    `{"Id":"${id.toUpperCase()}","Created":""}`,
    `{"Id":"${id.slice(1)}","Created":""}`,
    `{"Id":"${id}0","Created":""}`,
    `{"id":"${id}","Created":""}`,
    '',
  ])
    assert.equal(leadingContainerId(Buffer.from(text)), undefined, text);
});

test('a container list answer’s entry IDs are read by following its structure, not by searching it', () => {
  const hex = (n: number) => n.toString(16).padStart(64, '0');
  const entry = (n: number, extra: Record<string, unknown> = {}) => ({
    Id: hex(n),
    Names: [`/c${n}`],
    Labels: {},
    ...extra,
  });
  const text = (v: unknown) => Buffer.from(`${JSON.stringify(v)}\n`);
  assert.deepEqual(listedContainerIds(text([entry(1), entry(2)])), [hex(1), hex(2)]);
  assert.deepEqual(listedContainerIds(text([])), []);
  assert.deepEqual(listedContainerIds(Buffer.from(`[ {"Id":"${hex(1)}"} ,\n {"Id":"${hex(2)}"} ]`)), [
    hex(1),
    hex(2),
  ]);
  // IDs planted in labels, names and commands (quotes, backslashes and braces escaped by the
  // engine's encoder) are not entries.
  const planted = `"},{"Id":"${hex(9)}","x":"\\`;
  const tricky = entry(3, {
    Names: [planted],
    Labels: { Id: hex(7), [`{"Id":"${hex(8)}"`]: planted },
    Command: `\\\\"{"Id":"${hex(6)}"`,
    Mounts: [{ Id: hex(5) }],
  });
  assert.deepEqual(listedContainerIds(text([tricky, entry(4)])), [hex(3), hex(4)]);
  // Anything but the engine's shape names nothing, and the caller parses in full.
  for (const bad of [
    Buffer.from(`[{"Names":[],"Id":"${hex(1)}"}]`),
    Buffer.from(`[{"Id":"${hex(0xabc).toUpperCase()}"}]`),
    Buffer.from(`[{"Id":"${hex(1)}"},["x"]]`),
    // Scalars between entries, or instead of them (red-team pass 35).
    Buffer.from(`[{"Id":"${hex(1)}"},"{\\"Id\\":\\"${hex(2)}\\"}"]`),
    Buffer.from(`["x",{"Id":"${hex(1)}"}]`),
    Buffer.from(`[{"Id":"${hex(1)}"} 1]`),
    Buffer.from(`[{"Id":"${hex(1)}"},]`),
    Buffer.from(`[1]`),
    Buffer.from(`[{"Id":"${hex(1)}"}`),
    Buffer.from(`[{"Id":"${hex(1)}"}] x`),
    Buffer.from(`[{"Id":"${hex(1)}","a":"unterminated}]`),
    Buffer.from(`{"message":"x"}`),
    Buffer.from(''),
  ])
    assert.equal(listedContainerIds(bad), undefined, bad.toString());
});

test('the list scan agrees with JSON.parse on generated answers full of JSON-looking strings', () => {
  let seed = 42;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const alphabet = ['"', '\\', '{', '}', '[', ']', ',', ':', 'Id', 'a', 'é', '\u2028', '\n', '\\"', ' '];
  const str = () => Array.from({ length: rnd(12) }, () => alphabet[rnd(alphabet.length)]).join('');
  const hex = () => Array.from({ length: 64 }, () => '0123456789abcdef'[rnd(16)]).join('');
  for (let round = 0; round < 300; round++) {
    const list = Array.from({ length: rnd(6) }, () => ({
      Id: hex(),
      Names: [str(), str()],
      Labels: Object.fromEntries(Array.from({ length: rnd(4) }, () => [str(), str()])),
      Command: str(),
      Ports: rnd(2) ? [] : [{ PrivatePort: rnd(9000), Type: 'tcp' }],
    }));
    const raw = Buffer.from(JSON.stringify(list));
    const parsed = (JSON.parse(raw.toString()) as { Id: string }[]).map((e) => e.Id);
    assert.deepEqual(listedContainerIds(raw), parsed, raw.toString());
  }
});

test("progress reports: only dockerd's own fields count, however the stream is cut", () => {
  const d = (n: number) => `sha256:${n.toString(16).padStart(64, '0')}`;
  const lines = [
    { status: 'Pulling from team/app', id: 'v1' },
    { status: 'Downloading', progressDetail: { current: 1, total: 2 }, id: '0123456789ab' },
    { status: `Digest: ${d(1)}` },
    { status: `Status: Downloaded newer image for reg/team/app:v1` },
    { status: `v1: digest: ${d(9)} size: 527` },
    { progressDetail: {}, aux: { Tag: 'v1', Digest: d(2), Size: 527 } },
    // Text a registry or an image controls sits inside string values: never a report.
    { errorDetail: { message: `{"status":"Digest: ${d(3)}"}` }, error: `"aux":{"Digest":"${d(4)}"}` },
    { status: 'Extracting', id: `Digest: ${d(5)}` },
    { status: `Digest: ${d(6)} and more` },
    { status: `Digest: sha256:NOTHEX` },
    { aux: { ID: d(7) } },
    // An import's image, a load's tags.
    { status: d(10) },
    { stream: 'Loaded image: reg/team/app:v1\n' },
    { stream: 'Loaded image: docker.io/library/base:2\n' },
    { stream: `Step 2/3 : RUN echo Loaded image: evil:x\n` },
    { stream: 'Loaded image: no-newline:x' },
    { errorDetail: { message: `{"status":"${d(11)}"}` }, error: 'Loaded image: evil:y\n' },
  ];
  const bytes = Buffer.from(lines.map((l) => JSON.stringify(l)).join('\r\n') + '\n' + 'not json\n');
  // Every way of cutting the stream into pieces gives the same answer.
  for (const size of [1, 3, 7, 64, bytes.length]) {
    const p = new ProgressReport();
    for (let i = 0; i < bytes.length; i += size) p.feed(bytes.subarray(i, i + size));
    const r = p.end();
    assert.deepEqual([...r.digests].sort(), [d(1), d(2)], `pieces of ${size} bytes`);
    assert.deepEqual([...r.ids], [d(10)], `pieces of ${size} bytes`);
    assert.deepEqual([...r.loaded].sort(), ['base:2', 'reg/team/app:v1'], `pieces of ${size} bytes`);
  }
  // A last line without its newline still counts; a multi-byte character split across pieces is
  // decoded whole.
  const tail = new ProgressReport();
  const last = Buffer.from(`{"status":"Pulling from é/x"}\n{"status":"Digest: ${d(8)}"}`);
  const mid = last.indexOf('é') + 1;
  tail.feed(last.subarray(0, mid));
  tail.feed(last.subarray(mid));
  assert.deepEqual([...tail.end().digests], [d(8)]);
  // A line that never ends is dropped rather than held.
  const long = new ProgressReport();
  long.feed(Buffer.from(`{"status":"${'x'.repeat(70 * 1024)}`));
  long.feed(Buffer.from(`"}\n{"status":"Digest: ${d(1)}"}\n`));
  assert.deepEqual([...long.end().digests], [d(1)]);
});

test('container names that read as an ID (12 hex digits or more) are refused; others pass', () => {
  for (const ok of [null, 'db', 'cafe', 'web-1', 'a1b2c3d4e5f', 'abcdef12345g', 'ABCDEF123456', 'proj_web_1'])
    assert.doesNotThrow(() => checkContainerName(ok), String(ok));
  for (const bad of ['a9d8a7af2d46', '/a9d8a7af2d46', '0123456789ab', 'f'.repeat(64)])
    assert.throws(
      () => checkContainerName(bad),
      (e: unknown) => e instanceof Refusal && e.rule === 'ownership',
      bad,
    );
});

test("Docker's Created times order by time, whatever fraction digits Go left out", () => {
  // Found by CI: as text, the later time sorted first, and two guards kept different networks.
  const earlier = '2026-11-24T12:20:01.12345Z';
  const later = '2026-11-24T12:20:01.123456789Z';
  assert.ok(earlier.localeCompare(later) > 0, 'as text they sort the wrong way');
  assert.ok(createdNanos(earlier) < createdNanos(later));
  assert.equal(createdNanos('2026-11-24T12:20:01Z'), createdNanos('2026-11-24T12:20:01.000000000Z'));
  assert.equal(createdNanos('2026-11-24T13:20:01.5+01:00'), createdNanos('2026-11-24T12:20:01.5Z'));
  assert.equal(createdNanos('yesterday'), 0n);
  assert.equal(createdNanos(undefined), 0n);
});

test("red-team pass 19: engine errors do not name others' containers; the tenant's own and image IDs stay", () => {
  const mine = 'a'.repeat(64);
  const other = 'b'.repeat(64);
  const own = (id: string) => mine.startsWith(id);
  const conflict = (id: string) =>
    `Conflict. The container name "/web" is already in use by container "${id}". You have to remove (or rename) that container to be able to reuse that name.`;
  assert.equal(
    hideForeignContainers(conflict(other), own),
    'Conflict. The container name "/web" is already in use by container "<hidden>". You have to remove (or rename) that container to be able to reuse that name.',
  );
  assert.equal(hideForeignContainers(conflict(mine), own), conflict(mine));
  // A volume in use: dockerd lists the containers (Go's %v of a list: spaces between).
  assert.equal(
    hideForeignContainers(`remove data: volume is in use - [${other} ${mine}]`, own),
    `remove data: volume is in use - [<hidden> ${mine}]`,
  );
  // An image in use: short IDs after "container"; the image's own ID stays.
  assert.equal(
    hideForeignContainers(
      `conflict: unable to delete 0123456789ab (must be forced) - image is being used by stopped container ${other.slice(0, 12)}`,
      own,
    ),
    'conflict: unable to delete 0123456789ab (must be forced) - image is being used by stopped container <hidden>',
  );
  assert.equal(
    hideForeignContainers(`No such image: ${other}`, own),
    `No such image: ${other}`,
    'an ID the tenant named',
  );
  assert.equal(hideForeignContainers(`sha256:${other} is in use`, own), `sha256:${other} is in use`);
});
