/**
 * Compatibility, volumes, networks and compose: Debian's docker CLI and docker-compose v1 through
 * berth guard — volume create/ls/inspect/rm, a user network with own containers connected and
 * reaching each other by name, scoped container prune and system df, and a two-service compose
 * project (up, ps, logs, down -v) whose services talk by service name.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LABEL_TENANT } from '../../src/common/index.js';
import { containers, networks, volumes } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { docker, engine, run, sessionLabels, tempDir, uniqueName } from '../support/index.js';

const IMAGE = 'berth-local/busybox';

describe('compatibility: volumes, networks, prune, df and compose through berth guard', () => {
  const c = engine();
  const dir = tempDir('berth-compat-o-');
  const tenant = uniqueName('compo');
  const mine = { label: [`${LABEL_TENANT}=${tenant}`] };
  let guard: GuardHandle;
  let host = '';
  const dockerOk = async (args: string[]) => {
    const r = await docker(host, args);
    assert.equal(r.code, 0, `docker ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  before(async () => {
    guard = await createGuard({ tenant, listen: join(dir.path, 'docker.sock'), labels: sessionLabels() });
    host = guard.address;
  });

  after(async () => {
    await guard.close({ cleanup: true });
    const left = [
      ...(await containers(c).list({ all: true, filters: mine })).map(
        (x) => `container ${x.Names[0] ?? x.Id}`,
      ),
      ...(await networks(c).list(mine)).map((x) => `network ${x.Name}`),
      ...(await volumes(c).list(mine)).map((x) => `volume ${x.Name}`),
    ];
    c.close();
    dir[Symbol.dispose]();
    assert.deepEqual(left, [], 'close({ cleanup }) leaves nothing of the tenant');
  });

  test('volumes: create, ls, inspect, use, rm', async () => {
    const vol = uniqueName('vol');
    await dockerOk(['volume', 'create', vol]);
    assert.ok((await dockerOk(['volume', 'ls', '-q'])).split('\n').includes(vol));
    assert.equal(await dockerOk(['volume', 'inspect', '-f', '{{.Driver}}', vol]), 'local\n');
    assert.equal((await volumes(c).inspect(vol)).Labels?.[LABEL_TENANT], tenant);
    await dockerOk([
      'run',
      '--rm',
      '--network',
      'none',
      '-v',
      `${vol}:/data`,
      IMAGE,
      'sh',
      '-c',
      'echo kept > /data/f',
    ]);
    assert.equal(
      await dockerOk(['run', '--rm', '--network', 'none', '-v', `${vol}:/data`, IMAGE, 'cat', '/data/f']),
      'kept\n',
    );
    await dockerOk(['volume', 'rm', vol]);
    assert.equal((await volumes(c).list({ name: [vol] })).length, 0);
  });

  test('networks: create, connect own containers, DNS by name, disconnect, rm', async () => {
    const net = uniqueName('net');
    await dockerOk(['network', 'create', net]);
    const server = uniqueName('srv');
    await dockerOk([
      'run',
      '-d',
      '--name',
      server,
      '--network',
      'none',
      IMAGE,
      'httpd',
      '-f',
      '-p',
      '8080',
      '-h',
      '/etc',
    ]);
    await dockerOk(['network', 'disconnect', 'none', server]);
    await dockerOk(['network', 'connect', '--alias', 'web', net, server]);
    const client = uniqueName('cli');
    const got = await dockerOk([
      'run',
      '--rm',
      '--name',
      client,
      '--network',
      net,
      IMAGE,
      'sh',
      '-c',
      `wget -q -O - http://${server}:8080/hostname && wget -q -O /dev/null http://web:8080/hostname && echo via-alias`,
    ]);
    assert.match(got, /via-alias/);
    const inspect = await dockerOk([
      'network',
      'inspect',
      '-f',
      '{{range .Containers}}{{.Name}} {{end}}',
      net,
    ]);
    assert.match(inspect, new RegExp(server));
    await dockerOk(['network', 'disconnect', net, server]);
    await dockerOk(['rm', '-f', server]);
    await dockerOk(['network', 'rm', net]);
    assert.equal((await networks(c).list({ name: [net] })).length, 0);
  });

  test('container prune and system df see the tenant only', async () => {
    const stopped = uniqueName('stopped');
    await dockerOk(['create', '--name', stopped, '--network', 'none', IMAGE, 'true']);
    const outsider = await containers(c).create({
      Image: IMAGE,
      Cmd: ['true'],
      Labels: sessionLabels(),
      HostConfig: { NetworkMode: 'none' },
    });
    try {
      const df = await dockerOk(['system', 'df', '--format', '{{.Type}} {{.TotalCount}}']);
      assert.match(df, /^Containers 1$/m, df);
      const pruned = await dockerOk(['container', 'prune', '-f']);
      assert.match(pruned, /Deleted Containers:/);
      assert.equal(await containers(c).find(stopped), undefined, 'the tenant’s stopped container is pruned');
      assert.ok(await containers(c).find(outsider.Id), 'a container that is not the tenant’s survives');
      assert.match(
        await dockerOk(['system', 'df', '--format', '{{.Type}} {{.TotalCount}}']),
        /^Containers 0$/m,
      );
    } finally {
      await containers(c).remove(outsider.Id);
    }
  });

  test('docker-compose v1: up, ps, logs, service names resolve, down -v removes everything', async () => {
    const proj = join(dir.path, 'compose');
    mkdirSync(proj);
    writeFileSync(
      join(proj, 'docker-compose.yml'),
      [
        'version: "2.4"',
        'services:',
        '  web:',
        `    image: ${IMAGE}`,
        '    command: httpd -f -p 8080 -h /etc',
        '  probe:',
        `    image: ${IMAGE}`,
        '    depends_on: [web]',
        '    volumes: [scratch:/scratch]',
        '    command: sh -c "for i in 1 2 3 4 5 6 7 8 9 10; do wget -q -O /dev/null http://web:8080/hostname && echo reached-web && break; sleep 1; done; sleep 600"',
        'volumes:',
        '  scratch: {}',
        '',
      ].join('\n'),
    );
    const project = `p${tenant.slice(-6)}`;
    const env = { DOCKER_HOST: host, COMPOSE_PROJECT_NAME: project };
    const compose = (args: string[]) => run('docker-compose', args, { cwd: proj, env, timeoutMs: 120_000 });
    const up = await compose(['up', '-d']);
    assert.equal(up.code, 0, up.stderr);
    const ps = await compose(['ps', '-q']);
    assert.equal(ps.stdout.trim().split('\n').length, 2, ps.stdout + ps.stderr);
    let logs = '';
    for (let i = 0; i < 30 && !logs.includes('reached-web'); i++) {
      logs = (await compose(['logs', '--no-color', 'probe'])).stdout;
      if (!logs.includes('reached-web')) await new Promise((r) => setTimeout(r, 500));
    }
    assert.match(logs, /reached-web/, 'probe reached web by its service name');
    const projectLabel = { label: [`${LABEL_TENANT}=${tenant}`, `com.docker.compose.project=${project}`] };
    assert.equal((await containers(c).list({ filters: projectLabel })).length, 2);
    const down = await compose(['down', '-v']);
    assert.equal(down.code, 0, down.stderr);
    assert.equal((await containers(c).list({ all: true, filters: projectLabel })).length, 0);
    assert.equal((await volumes(c).list(projectLabel)).length, 0, 'down -v removed the project volume');
    assert.equal((await networks(c).list(projectLabel)).length, 0, 'down removed the project network');
  });
});
