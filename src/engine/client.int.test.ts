import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DockerClient,
  EngineError,
  MAX_API_VERSION,
  compareApiVersions,
  containers,
  exec,
  parseEndpoint,
  system,
} from './index.js';
import { sessionLabels, uniqueName } from '../../test/support/index.js';

test('negotiates the API version with the daemon and reads /version', async () => {
  using c = new DockerClient();
  const ping = await c.ping();
  const v = await c.apiVersion();
  assert.ok(compareApiVersions(v, MAX_API_VERSION) <= 0);
  assert.ok(compareApiVersions(v, ping.apiVersion) <= 0);
  const version = await system(c).version();
  assert.equal(version.ApiVersion, ping.apiVersion);
});

test('errors keep status, daemon message and the request that failed', async () => {
  using c = new DockerClient();
  const err = await c.json('GET', '/containers/berth-does-not-exist-xyz/json').then(
    () => assert.fail('expected a 404'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof EngineError);
  assert.equal(err.statusCode, 404);
  assert.match(err.daemonMessage ?? '', /No such container/i);
  assert.deepEqual(err.request, {
    method: 'GET',
    path: '/containers/berth-does-not-exist-xyz/json',
    endpoint: c.endpoint.url,
  });
});

test('an unreachable endpoint is ENGINE_UNREACHABLE naming the endpoint', async () => {
  using c = new DockerClient({ env: { DOCKER_HOST: 'unix:///nonexistent/berth.sock' } });
  await assert.rejects(
    c.ping(),
    (e: unknown) =>
      e instanceof EngineError &&
      e.code === 'ENGINE_UNREACHABLE' &&
      /nonexistent\/berth.sock/.test(e.message),
  );
});

test('hijacked exec: stdin is piped, half-closed, and the exit code comes back', async () => {
  using c = new DockerClient();
  const name = uniqueName('client-exec');
  const created = await containers(c).create(
    {
      Image: 'berth-local/busybox',
      Cmd: ['sleep', '300'],
      Labels: sessionLabels(),
      HostConfig: { NetworkMode: 'none' },
    },
    name,
  );
  try {
    await containers(c).start(created.Id);
    const stdin = new PassThrough();
    const out: Buffer[] = [];
    const stdout = new PassThrough().on('data', (b: Buffer) => out.push(b));
    const result = exec(c).run(created.Id, ['sh', '-c', 'tr a-z A-Z; echo err >&2; exit 7'], {
      stdin,
      stdout,
    });
    stdin.end('hello berth\n');
    const { exitCode } = await result;
    assert.equal(exitCode, 7);
    assert.equal(Buffer.concat(out).toString(), 'HELLO BERTH\n');
  } finally {
    await containers(c).remove(created.Id);
  }
});

test('the version check reuses its connection: ping, then requests, on one kept-alive connection', async () => {
  // A counting relay in front of the engine.
  const dir = mkdtempSync(join(tmpdir(), 'berth-relay-'));
  const path = join(dir, 'docker.sock');
  let connections = 0;
  const relay = createServer((client) => {
    connections++;
    const upstream = connect(parseEndpoint(process.env).url.replace(/^unix:\/\//, ''));
    client.pipe(upstream).pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  relay.listen(path);
  await once(relay, 'listening');
  try {
    using c = new DockerClient({ env: { DOCKER_HOST: `unix://${path}` } });
    await system(c).version();
    await system(c).version();
    await c.json('GET', '/containers/json', { query: { limit: 1 } });
    assert.equal(connections, 1);
  } finally {
    relay.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
