/**
 * Attack suite, escape prevention: every refused container/exec/volume/build/import shape from
 * issue 3 sent as raw HTTP (with evasions: key case, Unicode folding, `\u` escapes, duplicate keys
 * where the last wins, null tricks, merged duplicate objects, chunked bodies split at odd places,
 * content-type variants, odd paths) and through the Debian docker CLI. Each attack is checked
 * upstream, directly on the engine: nothing created or changed; victims intact at the end.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import { containers, networks, volumes } from '../../src/engine/index.js';
import { buildRequest, expectRefused, messageOf, rawRequest, send } from '../support/rawhttp.js';
import type { RawResponse } from '../support/rawhttp.js';
import { auditAfter, docker, uniqueName } from '../support/index.js';
import { IMAGE, setupArena } from './attack-harness.js';
import type { Arena } from './attack-harness.js';

const CT_VARIANTS = ['application/json', 'Application/JSON; charset=utf-8', 'APPLICATION/JSON;charset=UTF-8'];

/** Key spellings dockerd's Go decoder folds onto `key`: case, Unicode folding, \u escapes. */
function spellings(key: string): string[] {
  const out = new Set([key, key.toLowerCase(), key.toUpperCase()]);
  if (/s/i.test(key)) out.add(key.replace(/s/i, '\u017f')); // ſ folds to s
  if (/k/i.test(key)) out.add(key.replace(/k/i, '\u212a')); // Kelvin sign folds to k
  const code = key.charCodeAt(0).toString(16).padStart(4, '0');
  out.add(`\\u${code}${key.slice(1)}`); // escaped first letter
  return [...out];
}

/** JSON texts of a create body that dockerd reads as HostConfig[field] = bad. */
function createVariants(field: string, bad: string, benign: string | undefined): [string, string][] {
  const img = `"Image":"${IMAGE}","Cmd":["true"]`;
  const hc = (inner: string, hcKey = 'HostConfig') => `{${img},"${hcKey}":{${inner}}}`;
  const v: [string, string][] = [];
  for (const s of spellings(field)) v.push([`key ${s}`, hc(`"${s}":${bad}`)]);
  for (const h of ['hostconfig', 'HOSTCONFIG', 'Ho\u017ftConfig', '\\u0048ostConfig'])
    v.push([`HostConfig spelled ${h}`, hc(`"${field}":${bad}`, h)]);
  if (benign !== undefined)
    v.push([`duplicate key, benign then bad`, hc(`"${field}":${benign},"${field.toLowerCase()}":${bad}`)]);
  v.push([`null after bad (Go keeps the value)`, hc(`"${field}":${bad},"${field.toUpperCase()}":null`)]);
  v.push([
    `two HostConfig objects (Go merges them)`,
    `{${img},"HostConfig":{"${field}":${bad}},"hostconfig":{"Memory":0}}`,
  ]);
  v.push([`whitespace and nesting noise`, `{ ${img} ,\r\n "HostConfig" : {\t"${field}"\n:\n${bad} } }`]);
  return v;
}

interface CreateAttack {
  rule: string;
  field: string;
  bad: string;
  benign?: string;
  /** Refused as absent (404) rather than 403 is acceptable: it names another tenant's object. */
  absentOk?: boolean;
}

describe('guard attack suite: escape prevention', () => {
  let a: Arena;
  let own = ''; // the attacker's own running container
  const neutralised: string[] = [];

  before(async () => {
    a = await setupArena('esc');
    const r = await docker(a.host, ['run', '-d', '--name', uniqueName('own'), IMAGE, 'sleep', '3600']);
    assert.equal(r.code, 0, r.stderr);
    own = r.stdout.trim();
  });
  after(async () => {
    if (neutralised.length)
      console.log(
        `# allowed but neutralised (guard reads differently from dockerd):\n#  ${neutralised.join('\n#  ')}`,
      );
    if (a) {
      try {
        await a.victimsIntact();
      } finally {
        await a.close();
      }
    }
  });

  /** Sends one create attack and checks the refusal and that no container by that name exists. */
  async function createRefused(
    what: string,
    body: string,
    rule: string,
    opts: {
      path?: string;
      ct?: string;
      chunks?: number[];
      absentOk?: boolean;
      /** For shapes dockerd and the guard may read differently: true when the upstream HostConfig carries the attack. */
      neutral?: (hc: Record<string, unknown>) => boolean;
    } = {},
  ): Promise<void> {
    const name = uniqueName('atk');
    const path = opts.path ?? `/v1.41/containers/create?name=${name}`;
    const full = path.includes('name=') ? path : `${path}${path.includes('?') ? '&' : '?'}name=${name}`;
    const spec = {
      method: 'POST',
      path: full,
      headers: [['Content-Type', opts.ct ?? 'application/json']] as [string, string][],
      body,
      framing: opts.chunks ? ('chunked' as const) : ('length' as const),
      chunks: opts.chunks,
    };
    const bytes = buildRequest(spec);
    // Chunked attacks are also written in separate pieces so the payload arrives across reads.
    const res: RawResponse = opts.chunks
      ? await rawRequest(a.sock, [bytes.subarray(0, 40), bytes.subarray(40, 97), bytes.subarray(97)], {
          gapMs: 15,
        })
      : await rawRequest(a.sock, bytes);
    if (opts.neutral && res.status === 201) {
      // Allowed: then what reached dockerd must not carry the attack (the guard forwards only its
      // canonical re-encoding). Recorded so the report can list where the guard's reading differs.
      const i = (await containers(a.c).inspect(name)) as unknown as { HostConfig: Record<string, unknown> };
      await containers(a.c).remove(name);
      assert.ok(!opts.neutral(i.HostConfig), `${what}: allowed AND applied upstream: ${res.text}`);
      neutralised.push(what);
      return;
    }
    if (res.status !== 201) {
      assert.equal(
        await containers(a.c).find(name),
        undefined,
        `${what}: HTTP ${res.status} but container ${name} was created upstream`,
      );
    }
    if (opts.absentOk && res.status === 404) {
      assert.match(messageOf(res) ?? '', /no such|not found/i, `${what}: ${res.text}`);
    } else {
      expectRefused(res, rule, what);
    }
    assert.equal(
      await containers(a.c).find(name),
      undefined,
      `${what}: container ${name} was created upstream`,
    );
  }

  /** Runs every attack in `fn`, collecting failures so one run lists every shape that got through. */
  async function collect(fn: (attempt: (p: Promise<void>) => Promise<void>) => Promise<void>) {
    const failures: string[] = [];
    await fn(async (p) => {
      try {
        await p;
      } catch (err) {
        failures.push(err instanceof Error ? (err.message.split('\n')[0] ?? err.message) : String(err));
      }
    });
    assert.deepEqual(failures, [], `${failures.length} attack shape(s) not refused:\n${failures.join('\n')}`);
  }

  async function attackField(t: CreateAttack, attempt: (p: Promise<void>) => Promise<void>): Promise<void> {
    const before = await a.snapshot();
    const badValue = JSON.parse(t.bad) as unknown;
    const applied = (hc: Record<string, unknown>) => {
      const v = hc[t.field];
      if (t.field === 'LogConfig') return (v as { Type?: string } | null)?.Type === 'syslog';
      if (t.field === 'Sysctls') return Object.keys((v as object | null) ?? {}).length > 0;
      if (Array.isArray(badValue) && badValue.length === 0) return Array.isArray(v) && v.length === 0;
      return isDeepStrictEqual(v, badValue);
    };
    for (const [what, body] of createVariants(t.field, t.bad, t.benign)) {
      // Only the merged-duplicate-object shape may be read differently (and then must not apply).
      const neutral = what.startsWith('two HostConfig') ? applied : undefined;
      await attempt(
        createRefused(`${t.field}=${t.bad}: ${what}`, body, t.rule, { absentOk: t.absentOk, neutral }),
      );
    }
    const plain = `{"Image":"${IMAGE}","HostConfig":{"${t.field}":${t.bad}}}`;
    for (const ct of CT_VARIANTS.slice(1))
      await attempt(
        createRefused(`${t.field}: content-type ${ct}`, plain, t.rule, { ct, absentOk: t.absentOk }),
      );
    await attempt(
      createRefused(`${t.field}: chunked, odd splits`, plain, t.rule, {
        chunks: [1, 3, 7, 2, 11, 5],
        ct: 'Application/JSON; charset=utf-8',
        absentOk: t.absentOk,
      }),
    );
    for (const p of [
      '/containers/create',
      '//v1.41//containers/./create',
      '/v1.41/containers/x/../create',
      '/v1.41/containers%2Fcreate',
      '/v1.40/containers/create',
      '/v1.41/containers/create/',
    ]) {
      const name = uniqueName('atk');
      const path = `${p}?name=${name}`;
      const res = await send(a.sock, {
        method: 'POST',
        path,
        headers: [['Content-Type', 'application/json']],
        body: plain,
      });
      const created = (await containers(a.c).find(name)) !== undefined;
      if (created) await containers(a.c).remove(name);
      await attempt(
        Promise.resolve().then(() => {
          assert.equal(created, false, `${t.field} via path ${p}: created upstream (HTTP ${res.status})`);
          // An odd path may be refused as an unknown endpoint; it must never be forwarded unchecked.
          if (res.status === 403 && messageOf(res)?.startsWith('berth: endpoint: ')) return;
          if (res.status === 400 && /^berth: malformed: /.test(messageOf(res) ?? '')) return;
          if (t.absentOk && res.status === 404) return;
          if (res.status === 404 && /page not found/i.test(res.text)) return; // no such route in dockerd either
          expectRefused(res, t.rule, `${t.field} via path ${p}`);
        }),
      );
    }
    await a.unchanged(before, `${t.rule} (${t.field})`);
  }

  const cases: [string, CreateAttack[]][] = [
    ['privileged', [{ rule: 'privileged', field: 'Privileged', bad: 'true', benign: 'false' }]],
    [
      'capabilities',
      [
        { rule: 'capabilities', field: 'CapAdd', bad: '["SYS_ADMIN"]', benign: 'null' },
        { rule: 'capabilities', field: 'CapAdd', bad: '["ALL"]', benign: '[]' },
        { rule: 'capabilities', field: 'CapAdd', bad: '["cap_sys_ptrace"]' },
      ],
    ],
    [
      'devices',
      [
        {
          rule: 'devices',
          field: 'Devices',
          bad: '[{"PathOnHost":"/dev/mem","PathInContainer":"/dev/mem","CgroupPermissions":"rwm"}]',
          benign: '[]',
        },
        { rule: 'devices', field: 'DeviceCgroupRules', bad: '["a *:* rwm"]', benign: 'null' },
        { rule: 'devices', field: 'DeviceRequests', bad: '[{"Driver":"nvidia","Count":-1}]', benign: '[]' },
        // dockerd stats these paths on the host when the container starts: an oracle for any path.
        {
          rule: 'devices',
          field: 'BlkioDeviceReadBps',
          bad: '[{"Path":"/root/.ssh/id_rsa","Rate":1048576}]',
          benign: '[]',
        },
        { rule: 'devices', field: 'BlkioWeightDevice', bad: '[{"Path":"/etc/shadow","Weight":100}]' },
        { rule: 'devices', field: 'BlkioDeviceWriteIOps', bad: '[{"Path":"/dev/sda","Rate":10}]' },
      ],
    ],
    [
      'resources (OOM shield, realtime, dangerous ulimits)',
      [
        { rule: 'resources', field: 'OomScoreAdj', bad: '-1000', benign: '0' },
        { rule: 'resources', field: 'OomKillDisable', bad: 'true', benign: 'false' },
        { rule: 'resources', field: 'CpuRealtimeRuntime', bad: '950000', benign: '0' },
        { rule: 'resources', field: 'Ulimits', bad: '[{"Name":"rtprio","Soft":99,"Hard":99}]', benign: '[]' },
        { rule: 'resources', field: 'Ulimits', bad: '[{"name":"memlock","soft":-1,"hard":-1}]' },
        { rule: 'resources', field: 'Ulimits', bad: '[{"NAME":"nice","Soft":40,"Hard":40}]' },
      ],
    ],
    [
      'namespaces (host)',
      [
        { rule: 'namespaces', field: 'PidMode', bad: '"host"', benign: '""' },
        { rule: 'namespaces', field: 'NetworkMode', bad: '"host"', benign: '"default"' },
        { rule: 'namespaces', field: 'IpcMode', bad: '"host"', benign: '"private"' },
        { rule: 'namespaces', field: 'UTSMode', bad: '"host"', benign: '""' },
        { rule: 'namespaces', field: 'UsernsMode', bad: '"host"', benign: '""' },
        { rule: 'namespaces', field: 'CgroupnsMode', bad: '"host"', benign: '"private"' },
      ],
    ],
    [
      'security-opt',
      [
        { rule: 'security-opt', field: 'SecurityOpt', bad: '["seccomp=unconfined"]', benign: '[]' },
        { rule: 'security-opt', field: 'SecurityOpt', bad: '["seccomp:unconfined"]' },
        { rule: 'security-opt', field: 'SecurityOpt', bad: '["apparmor=unconfined"]' },
        { rule: 'security-opt', field: 'SecurityOpt', bad: '["label=disable"]' },
        { rule: 'security-opt', field: 'SecurityOpt', bad: '["label:disable"]' },
        { rule: 'security-opt', field: 'SecurityOpt', bad: '["systempaths=unconfined"]' },
        { rule: 'security-opt', field: 'SecurityOpt', bad: '["no-new-privileges","seccomp=unconfined"]' },
      ],
    ],
    [
      'masked-paths',
      [
        { rule: 'masked-paths', field: 'MaskedPaths', bad: '[]' },
        { rule: 'masked-paths', field: 'ReadonlyPaths', bad: '[]' },
      ],
    ],
    ['cgroup-parent', [{ rule: 'cgroup-parent', field: 'CgroupParent', bad: '"/"', benign: '""' }]],
    ['runtime', [{ rule: 'runtime', field: 'Runtime', bad: '"berth-evil-runtime"', benign: '"runc"' }]],
    [
      'log-driver',
      [
        {
          rule: 'log-driver',
          field: 'LogConfig',
          bad: '{"Type":"syslog","Config":{"syslog-address":"udp://127.0.0.1:9"}}',
          benign: '{"Type":"json-file"}',
        },
      ],
    ],
    ['volume-driver', [{ rule: 'volume-driver', field: 'VolumeDriver', bad: '"local"', benign: '""' }]],
    [
      'sysctls',
      [
        { rule: 'sysctls', field: 'Sysctls', bad: '{"kernel.core_pattern":"|/tmp/x"}', benign: '{}' },
        { rule: 'sysctls', field: 'Sysctls', bad: '{"kernel.modprobe":"/tmp/x"}' },
      ],
    ],
    [
      'binds',
      [
        { rule: 'binds', field: 'Binds', bad: '["/:/host"]', benign: '[]' },
        { rule: 'binds', field: 'Binds', bad: '["/var/run/docker.sock:/var/run/docker.sock"]' },
        { rule: 'binds', field: 'Binds', bad: '["/workspace/../../../etc:/h"]' },
        { rule: 'binds', field: 'Binds', bad: '["/workspace/..:/h"]' },
        { rule: 'binds', field: 'Binds', bad: '["/workspace/escape:/h"]' },
        { rule: 'binds', field: 'Binds', bad: '["/workspace/escape/etc:/h:ro"]' },
        { rule: 'binds', field: 'Binds', bad: '["/workspace/sub/etc:/h"]' },
        { rule: 'binds', field: 'Binds', bad: '["/workspace/hello.txt:/a","/etc:/b"]' },
        { rule: 'binds', field: 'Binds', bad: '["/workspacex:/h"]' },
        { rule: 'binds', field: 'Mounts', bad: '[{"Type":"bind","Source":"/","Target":"/h"}]', benign: '[]' },
        { rule: 'binds', field: 'Mounts', bad: '[{"type":"BIND","source":"/etc","target":"/h"}]' },
        {
          rule: 'binds',
          field: 'Mounts',
          bad: '[{"Type":"bind","Source":"/workspace/escape","Target":"/h"}]',
        },
        {
          rule: 'binds',
          field: 'Mounts',
          bad: '[{"Type":"bind","Source":"/workspace/../..","Target":"/h"}]',
        },
      ],
    ],
  ];

  for (const [name, attacks] of cases) {
    test(`${name}: raw HTTP — key case, Unicode folding, \\u escapes, duplicates, null, chunked, content types, odd paths`, async () => {
      await collect(async (attempt) => {
        for (const t of attacks) await attackField(t, attempt);
      });
    });
  }

  test('volume drivers in Mounts: DriverConfig on a volume mount is refused', async () => {
    const before = await a.snapshot();
    for (const m of [
      '[{"Type":"volume","Target":"/v","VolumeOptions":{"DriverConfig":{"Name":"local","Options":{"type":"none","o":"bind","device":"/"}}}}]',
      '[{"type":"volume","target":"/v","volumeoptions":{"driverconfig":{"options":{"device":"/","o":"bind","type":"none"}}}}]',
    ]) {
      await createRefused(
        `Mounts ${m}`,
        `{"Image":"${IMAGE}","HostConfig":{"Mounts":${m}}}`,
        'volume-driver',
      );
    }
    await a.unchanged(before, 'volume driver mounts');
  });

  test('namespaces, volumes-from, links, networks of others: 404 as if absent, never joined', async () => {
    const before = await a.snapshot();
    const refs = (id: string) => [id, id.slice(0, 12), id.slice(0, 5)];
    const otherName = (await containers(a.c).inspect(a.v.otherRunning)).Name.slice(1);
    const hostName = (await containers(a.c).inspect(a.v.hostRunning)).Name.slice(1);
    for (const ref of [...refs(a.v.otherRunning), ...refs(a.v.hostRunning), otherName, hostName]) {
      for (const [field, bad] of [
        ['PidMode', `"container:${ref}"`],
        ['IpcMode', `"container:${ref}"`],
        ['NetworkMode', `"container:${ref}"`],
        ['VolumesFrom', `["${ref}"]`],
        ['VolumesFrom', `["${ref}:ro"]`],
        ['Links', `["${ref}:alias"]`],
        ['Links', `["/${ref}:/own/alias"]`],
      ] as const) {
        await createRefused(
          `${field}=${bad}`,
          `{"Image":"${IMAGE}","HostConfig":{"${field}":${bad}}}`,
          field === 'Links' ? 'links' : field === 'VolumesFrom' ? 'volumes-from' : 'namespaces',
          { absentOk: true },
        );
        await createRefused(
          `${field}=${bad} (lower-case key)`,
          `{"Image":"${IMAGE}","hostconfig":{"${field.toLowerCase()}":${bad}}}`,
          field === 'Links' ? 'links' : field === 'VolumesFrom' ? 'volumes-from' : 'namespaces',
          { absentOk: true },
        );
      }
    }
    for (const net of [a.v.otherNetwork, a.v.hostNetwork, a.v.otherNetwork.slice(0, 12)]) {
      await createRefused(
        `NetworkMode=${net}`,
        `{"Image":"${IMAGE}","HostConfig":{"NetworkMode":"${net}"}}`,
        'links',
        {
          absentOk: true,
        },
      );
      await createRefused(
        `EndpointsConfig ${net}`,
        `{"Image":"${IMAGE}","NetworkingConfig":{"EndpointsConfig":{"${net}":{}}}}`,
        'links',
        { absentOk: true },
      );
      await createRefused(
        `endpointsconfig (lower case) ${net}`,
        `{"Image":"${IMAGE}","networkingconfig":{"endpointsconfig":{"${net}":{"aliases":["x"]}}}}`,
        'links',
        { absentOk: true },
      );
    }
    for (const vol of [a.v.otherVolume, a.v.hostVolume]) {
      await createRefused(
        `Binds ${vol}:/v`,
        `{"Image":"${IMAGE}","HostConfig":{"Binds":["${vol}:/v"]}}`,
        'ownership',
        {
          absentOk: true,
        },
      );
      await createRefused(
        `Mounts volume ${vol}`,
        `{"Image":"${IMAGE}","HostConfig":{"Mounts":[{"Type":"volume","Source":"${vol}","Target":"/v"}]}}`,
        'ownership',
        { absentOk: true },
      );
    }
    await a.unchanged(before, 'references to others');
  });

  test('HostConfig.Capabilities (API 1.40 field) via /v1.40: refused or dropped, never applied', async () => {
    const name = uniqueName('caps');
    const res = await send(a.sock, {
      method: 'POST',
      path: `/v1.40/containers/create?name=${name}`,
      headers: [['Content-Type', 'application/json']],
      body: `{"Image":"${IMAGE}","Cmd":["true"],"HostConfig":{"Capabilities":["CAP_SYS_ADMIN","CAP_SYS_MODULE"]}}`,
    });
    if (res.status === 403) {
      expectRefused(res, 'capabilities', 'Capabilities');
      assert.equal(await containers(a.c).find(name), undefined);
    } else {
      assert.equal(res.status, 201, res.text);
      const i = (await containers(a.c).inspect(name)) as unknown as {
        HostConfig: { Capabilities?: unknown };
      };
      await containers(a.c).remove(name);
      assert.ok(
        !i.HostConfig.Capabilities,
        `Capabilities reached the daemon: ${JSON.stringify(i.HostConfig.Capabilities)}`,
      );
    }
  });

  test('docker top: ps arguments that title another column PID are refused (host processes would show)', async () => {
    for (const args of [
      '-orss=PID,user,pid,args ax f e',
      'ax -o pid=PID,args',
      'aux O',
      '--format pid,args',
      '-e;id',
    ]) {
      const r = await send(a.sock, {
        method: 'GET',
        path: `/v1.41/containers/${own}/top?ps_args=${encodeURIComponent(args)}`,
      });
      expectRefused(r, 'namespaces', `ps_args ${args}`);
      assert.doesNotMatch(r.text, /dockerd|containerd/, 'no host process in the answer');
    }
    const ok = await docker(a.host, ['top', own, 'aux']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /sleep 3600/);
    assert.doesNotMatch(ok.stdout, /dockerd/);
  });

  test('privileged exec: raw HTTP variants and docker exec --privileged; no exec is created', async () => {
    const execIds = async () =>
      ((await containers(a.c).inspect(own)) as unknown as { ExecIDs: string[] | null }).ExecIDs ?? [];
    const before = await execIds();
    for (const body of [
      '{"Cmd":["id"],"Privileged":true}',
      '{"Cmd":["id"],"privileged":true}',
      '{"Cmd":["id"],"PRIVILEGED":true}',
      '{"Cmd":["id"],"\\u0050rivileged":true}',
      '{"Cmd":["id"],"Privileged":false,"privileged":true}',
      '{"Cmd":["id"],"Privileged":true,"Privileged":null}',
    ]) {
      for (const path of [`/v1.41/containers/${own}/exec`, `//containers/./${own.slice(0, 12)}/exec`]) {
        const res = await send(a.sock, {
          method: 'POST',
          path,
          headers: [['content-type', 'Application/Json']],
          body,
        });
        if (path.startsWith('//') && messageOf(res)?.startsWith('berth: endpoint: ')) continue;
        expectRefused(res, 'privileged', `exec ${body} ${path}`);
      }
      const ch = await send(a.sock, {
        method: 'POST',
        path: `/v1.41/containers/${own}/exec`,
        headers: [['Content-Type', 'application/json']],
        body,
        framing: 'chunked',
        chunks: [2, 5, 1],
      });
      expectRefused(ch, 'privileged', `exec chunked ${body}`);
    }
    const cli = await docker(a.host, ['exec', '--privileged', own, 'true']);
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /berth: privileged: /);
    assert.deepEqual(await execIds(), before, 'an exec was created upstream');
    // A plain exec still works.
    const ok = await docker(a.host, ['exec', own, 'true']);
    assert.equal(ok.code, 0, ok.stderr);
  });

  test('container update cannot add devices or cgroup parent', async () => {
    const before = await containers(a.c).inspect(own);
    for (const body of [
      '{"DeviceCgroupRules":["a *:* rwm"]}',
      '{"devices":[{"PathOnHost":"/dev/mem","PathInContainer":"/dev/mem","CgroupPermissions":"rwm"}]}',
      '{"CgroupParent":"/"}',
      '{"OomKillDisable":true}',
      '{"ulimits":[{"name":"rtprio","soft":99,"hard":99}]}',
      '{"CpuRealtimeRuntime":950000}',
      '{"BlkioDeviceReadBps":[{"Path":"/root","Rate":1}]}',
    ]) {
      const res = await send(a.sock, {
        method: 'POST',
        path: `/v1.41/containers/${own}/update`,
        headers: [['Content-Type', 'application/json']],
        body,
      });
      assert.ok(res.status === 403 || res.status === 400, `update ${body}: ${res.status} ${res.text}`);
    }
    const now = await containers(a.c).inspect(own);
    assert.deepEqual(now.HostConfig, before.HostConfig, 'update changed the container upstream');
  });

  test('network-driver and network-ipam: drivers, options, scopes and chosen subnets refused raw and via CLI', async () => {
    const before = await a.snapshot();
    const nets = async () => (await networks(a.c).list()).map((n) => n.Name);
    const shapes: [string, string, (n: string) => string][] = [
      ['network-driver', 'macvlan', (n) => `{"Name":"${n}","Driver":"macvlan"}`],
      ['network-driver', 'host driver, lower-case key', (n) => `{"name":"${n}","driver":"host"}`],
      [
        'network-driver',
        'bridge name option',
        (n) => `{"Name":"${n}","Options":{"com.docker.network.bridge.name":"docker0"}}`,
      ],
      ['network-driver', 'swarm scope', (n) => `{"Name":"${n}","Scope":"swarm"}`],
      ['network-driver', 'ingress', (n) => `{"Name":"${n}","Ingress":true}`],
      [
        'network-ipam',
        'a subnet over the host’s own addresses',
        (n) => `{"Name":"${n}","IPAM":{"Config":[{"Subnet":"127.0.0.0/8"}]}}`,
      ],
      [
        'network-ipam',
        'folded keys',
        (n) =>
          `{"Name":"${n}","ipam":{"config":[{"\u0053ubnet":"169.254.0.0/16","gateway":"169.254.169.254"}]}}`,
      ],
      [
        'network-ipam',
        'duplicate IPAM, the last chooses',
        (n) => `{"Name":"${n}","IPAM":{},"IPAM":{"Config":[{"Subnet":"10.0.0.0/8"}]}}`,
      ],
      ['network-ipam', 'IPAM driver', (n) => `{"Name":"${n}","IPAM":{"Driver":"evil"}}`],
    ];
    for (const [rule, what, mk] of shapes) {
      const name = uniqueName('atknet');
      const res = await send(a.sock, {
        method: 'POST',
        path: '/v1.41/networks/create',
        headers: [['Content-Type', 'application/json']],
        body: mk(name),
      });
      expectRefused(res, rule, what);
      assert.ok(!(await nets()).includes(name), `${what}: network created upstream`);
    }
    for (const [flags, re] of [
      [['--driver', 'macvlan'], /berth: network-driver: /],
      [['--subnet', '192.168.0.0/16'], /berth: network-ipam: /],
      [['--ip-range', '10.9.0.0/24', '--subnet', '10.9.0.0/16'], /berth: network-ipam: /],
    ] as [string[], RegExp][]) {
      const name = uniqueName('atknet');
      const r = await docker(a.host, ['network', 'create', ...flags, name]);
      assert.notEqual(r.code, 0, `network create ${flags.join(' ')} succeeded`);
      assert.match(r.stderr, re);
      assert.ok(!(await nets()).includes(name));
    }
    await a.unchanged(before, 'network create attacks');
  });

  test('volume-options: bind-mount volumes (type=none,o=bind,device=/) refused raw and via CLI', async () => {
    const before = await a.snapshot();
    for (const [what, mk] of [
      ['plain', (n: string) => `{"Name":"${n}","DriverOpts":{"type":"none","o":"bind","device":"/"}}`],
      [
        'lower-case keys',
        (n: string) => `{"name":"${n}","driveropts":{"type":"none","o":"bind","device":"/etc"}}`,
      ],
      [
        'Driver local',
        (n: string) => `{"Name":"${n}","Driver":"local","DriverOpts":{"device":"/","o":"bind"}}`,
      ],
      [
        'duplicate DriverOpts',
        (n: string) => `{"Name":"${n}","DriverOpts":{},"driverOpts":{"device":"/","o":"bind","type":"none"}}`,
      ],
      [
        'folded key',
        (n: string) => `{"Name":"${n}","DriverOpt\u017f":{"device":"/","o":"bind","type":"none"}}`,
      ],
      ['other driver', (n: string) => `{"Name":"${n}","Driver":"berth-evil"}`],
    ] as const) {
      const name = uniqueName('atkvol');
      const res = await send(a.sock, {
        method: 'POST',
        path: '/v1.41/volumes/create',
        headers: [['Content-Type', 'application/json; charset=utf-8']],
        body: mk(name),
      });
      assert.equal(res.status, 403, `${what}: ${res.text}`);
      assert.match(messageOf(res) ?? '', /^berth: (volume-options|volume-driver): /, what);
      assert.equal((await volumes(a.c).list({ name: [name] })).length, 0, `${what}: volume created upstream`);
    }
    const n = uniqueName('atkvol');
    const cli = await docker(a.host, [
      'volume',
      'create',
      '-o',
      'type=none',
      '-o',
      'o=bind',
      '-o',
      'device=/',
      n,
    ]);
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /berth: volume-options: /);
    assert.equal((await volumes(a.c).list({ name: [n] })).length, 0);
    // size is the one allowed option's name: the volume must come out owned (or be refused by the driver).
    await a.unchanged(before, 'volume options');
  });

  test('build-options: networkmode=host / cgroupparent / remote, in the query and in form bodies', async () => {
    const before = await a.snapshot();
    const attempts: [string, string, string | undefined, string | undefined][] = [
      ['query networkmode=host', '/v1.41/build?networkmode=host', undefined, undefined],
      ['query cgroupparent', '/v1.41/build?cgroupparent=/', undefined, undefined],
      ['query remote', '/v1.41/build?remote=http://127.0.0.1:9/ctx.tar', undefined, undefined],
      ['query remote git', '/build?remote=git://127.0.0.1:9/x', undefined, undefined],
      [
        'form body overrides query',
        '/v1.41/build?networkmode=default',
        'networkmode=host',
        'application/x-www-form-urlencoded',
      ],
      [
        'form body, odd content type',
        '/v1.41/build',
        'networkmode=host&t=x',
        'Application/X-WWW-Form-Urlencoded; charset=utf-8',
      ],
      ['form body cgroupparent', '/v1.41/build', 'cgroupparent=%2F', 'application/x-www-form-urlencoded'],
      [
        'form body remote',
        '/v1.41/build',
        'remote=http%3A%2F%2F127.0.0.1%3A9%2Fx',
        'application/x-www-form-urlencoded',
      ],
      ['odd path', '//v1.41/./build?networkmode=host', undefined, undefined],
      ['encoded query value', '/v1.41/build?networkmode=%68ost', undefined, undefined],
    ];
    for (const [what, path, body, ct] of attempts) {
      const res = await send(a.sock, {
        method: 'POST',
        path,
        headers: ct ? [['Content-Type', ct]] : [['Content-Type', 'application/x-tar']],
        body: body ?? '',
      });
      if (what === 'odd path' && /^berth: (endpoint|malformed): /.test(messageOf(res) ?? '')) continue;
      expectRefused(res, 'build-options', what);
    }
    const cli = await docker(a.host, ['build', '--network', 'host', '-q', '-'], {
      input: 'FROM berth-local/busybox\nRUN true\n',
    });
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /berth: build-options: /);
    await a.unchanged(before, 'build options');
  });

  test('build resources: ulimits beyond the safe list refused (query, form body, CLI); RUN steps on the tenant network', async () => {
    const before = await a.snapshot();
    const rt = encodeURIComponent('[{"Name":"rtprio","Soft":99,"Hard":99}]');
    for (const [what, path, body, ct] of [
      ['query ulimits', `/v1.41/build?ulimits=${rt}`, '', 'application/x-tar'],
      [
        'query ulimits, the name given twice in two cases (Go takes the last)',
        `/v1.41/build?ulimits=${encodeURIComponent('[{"Name":"nofile","NAME":"rtprio","Soft":99,"Hard":99}]')}`,
        '',
        'application/x-tar',
      ],
      ['form body ulimits', '/v1.41/build', `ulimits=${rt}`, 'application/x-www-form-urlencoded'],
    ] as const) {
      const res = await send(a.sock, { method: 'POST', path, headers: [['Content-Type', ct]], body });
      expectRefused(res, 'resources', what);
    }
    const cli = await docker(a.host, ['build', '--ulimit', 'rtprio=99', '-q', '-'], {
      input: 'FROM berth-local/busybox\nRUN true\n',
    });
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /berth: resources: ulimit rtprio/);
    await a.unchanged(before, 'build ulimits');
    // A RUN step's address is on the tenant's network, not the shared default bridge.
    const built = await docker(a.host, ['build', '--no-cache', '-'], {
      input: `FROM berth-local/busybox\nRUN echo ${uniqueName('net')} && echo "addr=$(hostname -i)"\n`,
    });
    assert.equal(built.code, 0, built.stderr);
    const addr = /addr=(\d+\.\d+\.\d+\.\d+)/.exec(built.stdout)?.[1] ?? '';
    const nets = await networks(a.c).list({ label: [`io.berth.tenant=${a.tenant}`] });
    const net = await a.c.json<{ IPAM?: { Config?: { Subnet?: string }[] } }>(
      'GET',
      `/networks/${nets[0]?.Id ?? 'none'}`,
    );
    const subnet = net.IPAM?.Config?.[0]?.Subnet ?? '';
    const [netAddr = '', bits = '32'] = subnet.split('/');
    const block = (ip: string) =>
      Math.floor(ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0) / 2 ** (32 - Number(bits)));
    assert.ok(addr !== '' && subnet !== '', `address ${addr}, tenant subnet ${subnet}: ${built.stdout}`);
    assert.equal(block(addr), block(netAddr), `${addr} in ${subnet}`);
    const id = /Successfully built ([0-9a-f]+)/.exec(built.stdout)?.[1];
    if (id) await docker(a.host, ['rmi', id]);
  });

  test('image-import: import from a URL refused (query and form body); docker import http://…', async () => {
    const before = await a.snapshot();
    for (const [what, path, body] of [
      ['query', '/v1.41/images/create?fromSrc=http://127.0.0.1:9/x.tar&repo=berth-atk-imp', undefined],
      ['odd path', '/v1.41//images/./create?fromSrc=http%3A%2F%2F127.0.0.1%3A9%2Fx&repo=y', undefined],
      ['form body', '/v1.41/images/create?fromSrc=-', 'fromSrc=http%3A%2F%2F127.0.0.1%3A9%2Fx.tar&repo=y'],
    ] as const) {
      const res = await send(a.sock, {
        method: 'POST',
        path,
        headers: body ? [['Content-Type', 'application/x-www-form-urlencoded']] : [],
        body: body ?? '',
      });
      expectRefused(res, 'image-import', what);
    }
    const cli = await docker(a.host, ['import', 'http://127.0.0.1:9/x.tar', 'berth-atk-imp:x']);
    assert.notEqual(cli.code, 0);
    assert.match(cli.stderr, /berth: image-import: /);
    await a.unchanged(before, 'image import');
  });

  test('body: JSON over 4 MiB is refused (Content-Length and chunked), not passed; malformed is 400', async () => {
    const before = await a.snapshot();
    const name = uniqueName('big');
    const big = `{"Image":"${IMAGE}","Labels":{"x":"${'a'.repeat(5 * 1024 * 1024)}"},"HostConfig":{"Privileged":true}}`;
    for (const framing of ['length', 'chunked'] as const) {
      const res = await send(
        a.sock,
        {
          method: 'POST',
          path: `/v1.41/containers/create?name=${name}`,
          headers: [['Content-Type', 'application/json']],
          body: big,
          framing,
          chunks: [65536, 3, 1 << 20],
        },
        { timeoutMs: 60_000 },
      );
      assert.ok([400, 413].includes(res.status), `${framing}: ${res.status} ${res.text.slice(0, 200)}`);
      assert.match(messageOf(res) ?? '', /^berth: body: /, framing);
      assert.equal(await containers(a.c).find(name), undefined);
    }
    for (const bad of [
      '{"Image":',
      '{"Image":"x",}',
      '[1,2',
      '{"HostConfig":{"Privileged":"yes"}}',
      '\u0000',
      // Fields of types the rules did not expect: the request's fault (400), not the engine's.
      `{"Image":"${IMAGE}","HostConfig":{"Mounts":[null]}}`,
      `{"Image":"${IMAGE}","HostConfig":{"Mounts":[1]}}`,
      `{"Image":"${IMAGE}","NetworkingConfig":{"EndpointsConfig":{"x":null}}}`,
    ]) {
      const res = await send(a.sock, {
        method: 'POST',
        path: `/v1.41/containers/create?name=${name}`,
        headers: [['Content-Type', 'application/json']],
        body: bad,
      });
      assert.equal(res.status, 400, `${JSON.stringify(bad)}: ${res.text}`);
      assert.match(messageOf(res) ?? '', /^berth: (malformed|body): /);
    }
    // References and names dockerd cannot parse: 400 with the reason, not a 502 or a 404.
    for (const [method, path, body] of [
      ['DELETE', '/v1.41/images/UPPER:tag', undefined],
      ['DELETE', '/v1.41/images/D0F0F7A9A680', undefined],
      ['POST', '/v1.41/volumes/create', '{"Name":"../x"}'],
    ] as const) {
      const res = await send(a.sock, {
        method,
        path,
        ...(body === undefined ? {} : { headers: [['Content-Type', 'application/json']], body }),
      });
      assert.equal(res.status, 400, `${method} ${path} ${body ?? ''}: ${res.text}`);
      assert.match(messageOf(res) ?? '', /^berth: malformed: /);
    }
    // The guard keeps serving.
    const ping = await send(a.sock, { path: '/_ping' });
    assert.equal(ping.status, 200);
    assert.equal(ping.text, 'OK');
    await a.unchanged(before, 'body attacks');
  });

  test('CLI forms of every refused run shape fail with the rule named and create nothing', async () => {
    const before = await a.snapshot();
    const otherName = (await containers(a.c).inspect(a.v.otherRunning)).Name.slice(1);
    const hostName = (await containers(a.c).inspect(a.v.hostRunning)).Name.slice(1);
    const forms: [string[], RegExp][] = [
      [['--privileged'], /berth: privileged: /],
      [['--cap-add', 'SYS_ADMIN'], /berth: capabilities: /],
      [['--cap-add', 'ALL'], /berth: capabilities: /],
      [['--device', '/dev/mem'], /berth: devices: /],
      [['--device-cgroup-rule', 'a *:* rwm'], /berth: devices: /],
      [['--gpus', 'all'], /berth: devices: /],
      [['--pid', 'host'], /berth: namespaces: /],
      [['--network', 'host'], /berth: namespaces: /],
      [['--ipc', 'host'], /berth: namespaces: /],
      [['--uts', 'host'], /berth: namespaces: /],
      [['--userns', 'host'], /berth: namespaces: /],
      [['--cgroupns', 'host'], /berth: namespaces: /],
      [['--security-opt', 'seccomp=unconfined'], /berth: security-opt: /],
      [['--security-opt', 'apparmor=unconfined'], /berth: security-opt: /],
      [['--security-opt', 'label=disable'], /berth: security-opt: /],
      [['--security-opt', 'systempaths=unconfined'], /berth: (security-opt|masked-paths): /],
      [['--cgroup-parent', '/'], /berth: cgroup-parent: /],
      [['--runtime', 'berth-evil'], /berth: runtime: /],
      [['--log-driver', 'syslog', '--log-opt', 'syslog-address=udp://127.0.0.1:9'], /berth: log-driver: /],
      [['--volume-driver', 'local', '-v', 'x:/x'], /berth: volume-driver: /],
      [['--sysctl', 'kernel.shm_rmid_forced=1'], /berth: sysctls: /],
      [['--sysctl', 'net.ipv4.ip_forward=1'], /berth: sysctls: /],
      [['--oom-score-adj', '-1000'], /berth: resources: /],
      [['--oom-kill-disable'], /berth: resources: /],
      [['--ulimit', 'rtprio=99'], /berth: resources: /],
      [['--ulimit', 'memlock=-1'], /berth: resources: /],
      [['-v', '/:/host'], /berth: binds: /],
      [['-v', '/var/run/docker.sock:/var/run/docker.sock'], /berth: binds: /],
      [['-v', '/workspace/escape:/h'], /berth: binds: /],
      [['-v', '/workspace/../../etc:/h'], /berth: binds: /],
      [['--mount', 'type=bind,source=/,target=/h'], /berth: binds: /],
      [['--mount', 'type=bind,source=/workspace/sub/etc,target=/h'], /berth: binds: /],
      [['--volumes-from', otherName], /No such container|berth: volumes-from: |127\.0\.0\.1:1/],
      [['--volumes-from', hostName], /No such container|berth: volumes-from: |127\.0\.0\.1:1/],
      [['--link', `${otherName}:x`], /No such container|berth: links: |127\.0\.0\.1:1/],
      [['--network', `container:${otherName}`], /No such container|berth: namespaces: |127\.0\.0\.1:1/],
      [
        ['--pid', `container:${a.v.hostRunning.slice(0, 12)}`],
        /No such container|berth: namespaces: |127\.0\.0\.1:1/,
      ],
      [['--network', a.v.otherNetwork], /No such network|not found|berth: links: |127\.0\.0\.1:1/],
      [
        ['--network', a.v.hostNetwork.slice(0, 12)],
        /No such network|not found|berth: links: |127\.0\.0\.1:1/,
      ],
      [
        ['-v', `${a.v.otherVolume}:/v`],
        /No such volume|no such volume|not found|berth: ownership: |127\.0\.0\.1:1/,
      ],
    ];
    // A create that names someone else's object answers 404, as dockerd does; the CLI takes any 404
    // for a missing image and pulls. The image is the attacker's own tag on a loopback registry that
    // is not there, so that pull fails at once and nothing leaves the machine.
    const img = `127.0.0.1:1/berth-atk-${uniqueName('img')}:v1`;
    assert.equal((await docker(a.host, ['tag', IMAGE, img])).code, 0);
    for (const [flags, re] of forms) {
      const name = uniqueName('cli');
      const r = await docker(a.host, ['run', '--rm', '--name', name, ...flags, img, 'true']);
      assert.notEqual(r.code, 0, `docker run ${flags.join(' ')} succeeded`);
      assert.match(r.stderr, re, `docker run ${flags.join(' ')}`);
      assert.equal(await containers(a.c).find(name), undefined, `${flags.join(' ')}: created upstream`);
    }
    await a.unchanged(before, 'CLI run forms');
  });

  test('audit: a denied request is one JSON line naming the rule, decision deny', async () => {
    await createRefused('audit probe', `{"Image":"${IMAGE}","HostConfig":{"Privileged":true}}`, 'privileged');
    // The audit file is written asynchronously; give the stream a moment to flush.
    const lines = await auditAfter(a.auditPath, 0, (l) => l.rule === 'privileged');
    const deny = lines.find((l) => l.rule === 'privileged' && l.decision === 'deny');
    assert.ok(deny, `no deny line for privileged in ${lines.length} audit lines`);
    assert.equal(deny.tenant, a.tenant);
    assert.equal(deny.method, 'POST');
    assert.match(deny.path, /^(\/v1\.41)?\/containers\/create$/);
    assert.ok(!Number.isNaN(Date.parse(deny.time)), `time ${deny.time}`);
    assert.ok(
      lines.some((l) => l.decision === 'allow'),
      'allowed requests are audited too',
    );
  });
});
