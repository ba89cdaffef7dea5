/**
 * The guard against a real engine: the Debian docker CLI through it, and attacks sent as raw
 * HTTP, each checked upstream (directly, not through the guard) for "nothing happened".
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LABEL_TENANT } from '../common/index.js';
import { containers, networks, volumes } from '../engine/index.js';
import { createGuard } from './index.js';
import type { GuardHandle } from './index.js';
import {
  BERTH_CMD,
  docker,
  engine,
  sessionLabels,
  start,
  tempDir,
  uniqueName,
} from '../../test/support/index.js';
import { header, send } from '../../test/support/rawhttp.js';

/** Sends exactly these bytes on a unix socket; answers status and body. */
function raw(socket: string, bytes: string | Buffer): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const s = connect(socket);
    const chunks: Buffer[] = [];
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', reject);
    s.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
      const body = text.slice(text.indexOf('\r\n\r\n') + 4);
      resolve({ status, body });
    });
    s.end(bytes);
  });
}

function post(path: string, body: string, headers: Record<string, string> = {}): string {
  const h = {
    Host: 'docker',
    'Content-Type': 'application/json',
    'Content-Length': String(Buffer.byteLength(body)),
    Connection: 'close',
    ...headers,
  };
  return `POST ${path} HTTP/1.1\r\n${Object.entries(h)
    .map(([k, v]) => `${k}: ${v}`)
    .join('\r\n')}\r\n\r\n${body}`;
}

describe('berth guard on a real engine', () => {
  const c = engine();
  const dir = tempDir('berth-guard-');
  const ws = join(dir.path, 'workspace');
  const tenant = uniqueName('t');
  const other = uniqueName('u');
  let guard: GuardHandle;
  let otherGuard: GuardHandle;
  let sock = '';
  let host = '';
  let victimHost = ''; // a "host" container, made directly
  let victimOther = ''; // another tenant's container, made through its guard

  const tenantCount = async () =>
    (await containers(c).list({ filters: { label: [`${LABEL_TENANT}=${tenant}`] } })).length;

  before(async () => {
    mkdirSync(ws, { recursive: true });
    writeFileSync(join(ws, 'hello.txt'), 'from the workspace\n');
    symlinkSync('/', join(ws, 'escape'));
    guard = await createGuard({
      tenant,
      listen: join(dir.path, 'g.sock'),
      maps: [{ jobPath: '/workspace', hostPath: ws }],
      labels: sessionLabels(),
    });
    otherGuard = await createGuard({
      tenant: other,
      listen: join(dir.path, 'o.sock'),
      labels: sessionLabels(),
    });
    sock = join(dir.path, 'g.sock');
    host = guard.address;
    const v = await containers(c).create(
      {
        Image: 'berth-local/busybox',
        Cmd: ['sleep', '600'],
        Labels: sessionLabels(),
        HostConfig: { NetworkMode: 'none' },
      },
      uniqueName('host'),
    );
    victimHost = v.Id;
    await containers(c).start(victimHost);
    const o = await docker(otherGuard.address, [
      'run',
      '-d',
      '--name',
      uniqueName('other'),
      'berth-local/busybox',
      'sleep',
      '600',
    ]);
    assert.equal(o.code, 0, o.stderr);
    victimOther = o.stdout.trim();
  });

  after(async () => {
    await guard.close({ cleanup: true });
    await otherGuard.close({ cleanup: true });
    await containers(c).remove(victimHost);
    c.close();
    dir[Symbol.dispose]();
  });

  test('docker run: exit codes, stdin half-close, bind paths translated from the job view', async () => {
    assert.equal((await docker(host, ['run', '--rm', 'berth-local/busybox', 'sh', '-c', 'exit 7'])).code, 7);
    const piped = await docker(
      host,
      ['run', '--rm', '-i', 'berth-local/busybox', 'sh', '-c', 'tr a-z A-Z; echo done'],
      { input: 'abc\n' },
    );
    assert.equal(piped.stdout, 'ABC\ndone\n');
    const bind = await docker(host, [
      'run',
      '--rm',
      '-v',
      '/workspace:/src',
      'berth-local/busybox',
      'cat',
      '/src/hello.txt',
    ]);
    assert.equal(bind.stdout, 'from the workspace\n', bind.stderr);
  });

  test('lists show only the tenant’s objects; siblings reach each other by name', async () => {
    const name = uniqueName('web');
    assert.equal(
      (await docker(host, ['run', '-d', '--name', name, 'berth-local/busybox', 'httpd', '-f', '-p', '8080']))
        .code,
      0,
    );
    const ps = await docker(host, ['ps', '-a', '--format', '{{.ID}}']);
    assert.equal(ps.stdout.trim().split('\n').length, 1);
    const byName = await docker(host, ['ps', '--filter', `name=${name}`, '--format', '{{.Names}}']);
    assert.equal(byName.stdout.trim(), name);
    const probe = await docker(host, [
      'run',
      '--rm',
      'berth-local/busybox',
      'wget',
      '-q',
      '-O',
      '/dev/null',
      '-T',
      '3',
      `http://${name}:8080/`,
    ]);
    assert.notEqual(probe.stderr.includes('bad address'), true, probe.stderr);
    assert.equal((await docker(host, ['rm', '-f', name])).code, 0);
  });

  test('ping, inspect and lists answer with the engine’s bytes and headers, in the guard’s framing', async () => {
    const engineSock = c.endpoint.kind === 'unix' ? c.endpoint.socketPath : '';
    const own = await docker(host, ['create', '--network', 'none', 'berth-local/busybox', 'true']);
    assert.equal(own.code, 0, own.stderr);
    const id = own.stdout.trim();
    try {
      const filters = encodeURIComponent(JSON.stringify({ id: [id] }));
      for (const path of [
        '/v1.41/_ping',
        `/v1.41/containers/${id}/json`,
        `/v1.41/containers/json?all=1&filters=${filters}`,
      ]) {
        const [viaGuard, direct] = [await send(sock, { path }), await send(engineSock, { path })];
        assert.equal(viaGuard.status, 200, `${path}: ${viaGuard.body.toString()}`);
        assert.equal(viaGuard.body.toString(), direct.body.toString(), `${path}: the engine's own bytes`);
        for (const h of ['api-version', 'ostype', 'server', 'docker-experimental'])
          assert.equal(header(viaGuard, h), header(direct, h), `${path}: ${h}`);
        assert.equal(Number(header(viaGuard, 'content-length')), viaGuard.body.length, `${path}: framing`);
        assert.equal(header(viaGuard, 'transfer-encoding'), undefined, `${path}: framing`);
      }
    } finally {
      await containers(c).remove(id, { force: true });
    }
  });

  test('another tenant’s and the host’s containers are absent: by name, full ID and prefix', async () => {
    for (const ref of [victimOther, victimOther.slice(0, 12), victimHost, victimHost.slice(0, 10)]) {
      const r = await docker(host, ['inspect', ref]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /No such (object|container)/i);
      assert.equal((await docker(host, ['stop', '-t', '0', ref])).code, 1);
      // rm -f of an absent container succeeds in the docker CLI: it must still be absent, not removed.
      assert.equal((await docker(host, ['rm', '-f', ref])).code, 0);
      assert.equal((await docker(host, ['exec', ref, 'true'])).code, 1);
    }
    assert.equal((await containers(c).inspect(victimOther)).State.Running, true);
    assert.equal((await containers(c).inspect(victimHost)).State.Running, true);
  });

  test('escapes are refused with the rule named, and nothing is created upstream', async () => {
    const before = await tenantCount();
    const attacks: [string, string, RegExp][] = [
      ['privileged', '{"Image":"berth-local/busybox","HostConfig":{"Privileged":true}}', /berth: privileged/],
      [
        'case variant',
        '{"Image":"berth-local/busybox","hostconfig":{"PRIVILEGED":true}}',
        /berth: privileged/,
      ],
      [
        'duplicate keys, last wins',
        '{"Image":"berth-local/busybox","HostConfig":{"Privileged":false,"privileged":true}}',
        /berth: privileged/,
      ],
      [
        'Unicode folding ſ',
        '{"Image":"berth-local/busybox","HostConfig":{"ſecurityOpt":["seccomp=unconfined"]}}',
        /berth: security-opt/,
      ],
      [
        'escaped key',
        '{"Image":"berth-local/busybox","HostConfig":{"\\u0050rivileged":true}}',
        /berth: privileged/,
      ],
      [
        'host root bind',
        '{"Image":"berth-local/busybox","HostConfig":{"Binds":["/:/host"]}}',
        /berth: binds/,
      ],
      [
        'symlink out of the workspace',
        '{"Image":"berth-local/busybox","HostConfig":{"Binds":["/workspace/escape:/host"]}}',
        /berth: binds/,
      ],
      [
        'dot-dot out of the workspace',
        '{"Image":"berth-local/busybox","HostConfig":{"Binds":["/workspace/../../../etc:/h"]}}',
        /berth: binds/,
      ],
      [
        'Mounts bind',
        '{"Image":"berth-local/busybox","HostConfig":{"Mounts":[{"Type":"bind","Source":"/","Target":"/h"}]}}',
        /berth: binds/,
      ],
      [
        'capabilities',
        '{"Image":"berth-local/busybox","HostConfig":{"CapAdd":["SYS_ADMIN"]}}',
        /berth: capabilities/,
      ],
      [
        'devices',
        '{"Image":"berth-local/busybox","HostConfig":{"Devices":[{"PathOnHost":"/dev/sda","PathInContainer":"/dev/sda"}]}}',
        /berth: devices/,
      ],
      ['host pid', '{"Image":"berth-local/busybox","HostConfig":{"PidMode":"host"}}', /berth: namespaces/],
      [
        'host network',
        '{"Image":"berth-local/busybox","HostConfig":{"NetworkMode":"host"}}',
        /berth: namespaces/,
      ],
      [
        'cgroup parent',
        '{"Image":"berth-local/busybox","HostConfig":{"CgroupParent":"/"}}',
        /berth: cgroup-parent/,
      ],
      [
        'sysctl',
        '{"Image":"berth-local/busybox","HostConfig":{"Sysctls":{"kernel.core_pattern":"|/x"}}}',
        /berth: sysctls/,
      ],
      [
        'masked paths',
        '{"Image":"berth-local/busybox","HostConfig":{"MaskedPaths":[]}}',
        /berth: masked-paths/,
      ],
    ];
    for (const [what, body, re] of attacks) {
      const r = await raw(sock, post('/v1.41/containers/create', body));
      assert.equal(r.status, 403, `${what}: ${JSON.stringify(r)}`);
      assert.match((JSON.parse(r.body) as { message: string }).message, re, what);
    }
    // Another tenant's container as a namespace, volume source or link target is absent.
    for (const hc of [
      { PidMode: `container:${victimOther}` },
      { VolumesFrom: [victimHost] },
      { NetworkMode: `container:${victimHost.slice(0, 12)}` },
    ]) {
      const r = await raw(
        sock,
        post('/v1.41/containers/create', JSON.stringify({ Image: 'berth-local/busybox', HostConfig: hc })),
      );
      assert.equal(r.status, 404, r.body);
    }
    assert.equal(await tenantCount(), before, 'no container was created upstream');
  });

  test('unknown and dangerous endpoints are refused, however the path is spelled', async () => {
    for (const path of [
      '/swarm/init',
      '/v1.41/plugins',
      '/session',
      '/grpc',
      '/libpod/containers/json',
      '/v1.41/secrets',
      '/v1.41//containers/..%2f..%2fswarm/init',
      '/v1.41/containers/%2e%2e/swarm/init',
    ]) {
      const r = await raw(sock, post(path, '{}'));
      assert.equal(r.status, 403, `${path}: ${r.body}`);
      assert.match(r.body, /berth: endpoint/);
    }
  });

  test('a form-encoded body cannot smuggle networkmode=host into a build; oversize JSON is refused', async () => {
    const r = await raw(
      sock,
      post('/v1.41/build', 'networkmode=host', {
        'Content-Type': 'Application/X-WWW-Form-Urlencoded; charset=utf-8',
      }),
    );
    assert.equal(r.status, 403, r.body);
    assert.match(r.body, /berth: build-options/);
    const big = `{"Image":"berth-local/busybox","Labels":{"x":"${'a'.repeat(5 * 1024 * 1024)}"}}`;
    const o = await raw(sock, post('/v1.41/containers/create', big));
    assert.equal(o.status, 400);
    assert.match(o.body, /berth: body/);
  });

  test('volumes with bind driver options are refused; tags of others cannot be overwritten or removed', async () => {
    const v = await raw(
      sock,
      post('/v1.41/volumes/create', '{"Name":"x","DriverOpts":{"type":"none","o":"bind","device":"/"}}'),
    );
    assert.equal(v.status, 403);
    assert.match(v.body, /berth: volume-options/);
    assert.equal(
      (await volumes(c).list({ name: ['x'] })).some((x) => x.Name === 'x'),
      false,
    );
    const tag = await docker(host, ['tag', 'berth-local/tools', 'berth-local/busybox:latest']);
    assert.match(tag.stderr, /berth: image-tag/);
    const rmi = await docker(host, ['rmi', 'berth-local/busybox']);
    assert.match(rmi.stderr, /berth: image-tag/);
  });

  test('falsy defaults from clients pass', async () => {
    const body = JSON.stringify({
      Image: 'berth-local/busybox',
      Cmd: ['true'],
      HostConfig: { Privileged: false, CapAdd: null, Devices: [], SecurityOpt: null, NetworkMode: 'default' },
    });
    const r = await raw(sock, post('/v1.41/containers/create', body));
    assert.equal(r.status, 201, r.body);
    const id = (JSON.parse(r.body) as { Id: string }).Id;
    const inspected = await containers(c).inspect(id);
    assert.equal(inspected.Config.Labels?.[LABEL_TENANT], tenant);
    assert.ok(
      Object.keys(inspected.NetworkSettings.Networks ?? {}).some((n) => n.startsWith('berth-')),
      'joined the tenant network',
    );
    await containers(c).remove(id);
  });
});

test('berth guard: SIGTERM removes the tenant’s containers, networks and volumes, and nothing else', async () => {
  using dir = tempDir('berth-guard-cli-');
  const tenant = uniqueName('cli');
  const sockPath = join(dir.path, 'docker.sock');
  const [node = process.execPath, ...pre] = BERTH_CMD;
  const child = start(node, [...pre, 'guard', '--tenant', tenant, '--listen', sockPath], {
    env: { ...process.env },
  });
  const ready = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (b: Buffer) => {
      out += b.toString();
      if (out.includes('DOCKER_HOST=')) resolve(out);
    });
    child.on('exit', (code) => reject(new Error(`guard exited ${code}`)));
  });
  assert.match(ready, /DOCKER_HOST=unix:\/\//);
  const h = `unix://${sockPath}`;
  assert.equal((await docker(h, ['run', '-d', 'berth-local/busybox', 'sleep', '600'])).code, 0);
  assert.equal((await docker(h, ['volume', 'create', uniqueName('vol')])).code, 0);
  assert.equal((await docker(h, ['network', 'create', uniqueName('net')])).code, 0);
  using c = engine();
  const label = { label: [`${LABEL_TENANT}=${tenant}`] };
  assert.equal((await containers(c).list({ filters: label })).length, 1);
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  child.kill('SIGTERM');
  assert.equal(await exited, 0);
  assert.equal((await containers(c).list({ filters: label })).length, 0);
  assert.equal((await volumes(c).list(label)).length, 0);
  assert.equal((await networks(c).list(label)).length, 0);
});
