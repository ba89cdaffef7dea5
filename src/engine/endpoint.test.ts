import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseEndpoint, loadTlsMaterial } from './endpoint.js';
import { BerthError } from '../common/index.js';

test('no DOCKER_HOST means the default unix socket', () => {
  assert.deepEqual(parseEndpoint({}), {
    kind: 'unix',
    socketPath: '/var/run/docker.sock',
    url: 'unix:///var/run/docker.sock',
  });
  assert.equal(parseEndpoint({ DOCKER_HOST: '' }).url, 'unix:///var/run/docker.sock');
});

test('unix:// with a path, and unix:// alone', () => {
  const ep = parseEndpoint({ DOCKER_HOST: 'unix:///tmp/x/docker.sock' });
  assert.equal(ep.kind, 'unix');
  assert.equal(ep.kind === 'unix' && ep.socketPath, '/tmp/x/docker.sock');
  assert.equal(parseEndpoint({ DOCKER_HOST: 'unix://' }).url, 'unix:///var/run/docker.sock');
});

test('tcp:// takes 2375 by default and 2376 with TLS, as the docker CLI does', () => {
  const plain = parseEndpoint({ DOCKER_HOST: 'tcp://10.0.0.5' });
  assert.equal(plain.kind === 'tcp' && plain.port, 2375);
  assert.equal(plain.kind === 'tcp' && plain.tls, undefined);
  const tls = parseEndpoint({
    DOCKER_HOST: 'tcp://docker',
    DOCKER_TLS_VERIFY: '1',
    DOCKER_CERT_PATH: '/certs',
  });
  assert.ok(tls.kind === 'tcp');
  assert.equal(tls.port, 2376);
  assert.deepEqual(tls.tls, {
    verify: true,
    certPath: '/certs',
    caFile: '/certs/ca.pem',
    certFile: '/certs/cert.pem',
    keyFile: '/certs/key.pem',
  });
  assert.equal(tls.url, 'tcp://docker:2376');
});

test('explicit ports, IPv6 literals and trailing slashes', () => {
  const a = parseEndpoint({ DOCKER_HOST: 'tcp://127.0.0.1:12375/' });
  assert.equal(a.kind === 'tcp' && a.port, 12375);
  const b = parseEndpoint({ DOCKER_HOST: 'tcp://[::1]:2375' });
  assert.ok(b.kind === 'tcp');
  assert.equal(b.host, '::1');
  assert.equal(b.url, 'tcp://[::1]:2375');
  const c = parseEndpoint({ DOCKER_HOST: 'tcp://:2375' });
  assert.equal(c.kind === 'tcp' && c.host, '127.0.0.1');
});

test('DOCKER_TLS without VERIFY turns TLS on without verification; https:// implies TLS', () => {
  const a = parseEndpoint({ DOCKER_HOST: 'tcp://h:1', DOCKER_TLS: '1', HOME: '/home/u' });
  assert.ok(a.kind === 'tcp' && a.tls);
  assert.equal(a.tls.verify, false);
  assert.equal(a.tls.certPath, '/home/u/.docker');
  const b = parseEndpoint({ DOCKER_HOST: 'https://h', HOME: '/root' });
  assert.ok(b.kind === 'tcp' && b.tls);
  assert.equal(b.port, 2376);
  // DOCKER_TLS_VERIFY="" is "unset", as in the docker CLI.
  const c = parseEndpoint({ DOCKER_HOST: 'tcp://h', DOCKER_TLS_VERIFY: '' });
  assert.equal(c.kind === 'tcp' && c.tls, undefined);
});

test('bad addresses are ENGINE_ENDPOINT errors that say what to write instead', () => {
  const cases: [string, RegExp][] = [
    ['/var/run/docker.sock', /unix:\/\/\/var\/run\/docker.sock/],
    ['localhost:2375', /tcp:\/\/localhost:2375/],
    ['ssh://user@host', /not supported/],
    ['ftp://x', /unknown scheme/],
    ['tcp://h:99999', /invalid port/],
    ['tcp://h:2375/path', /path after host:port/],
    ['unix://relative.sock', /absolute/],
    ['tcp://[::1', /unclosed/],
  ];
  for (const [host, re] of cases) {
    assert.throws(
      () => parseEndpoint({ DOCKER_HOST: host }),
      (err: unknown) =>
        err instanceof BerthError &&
        err.code === 'ENGINE_ENDPOINT' &&
        re.test(`${err.message} ${err.hint ?? ''}`),
      host,
    );
  }
});

test('TLS material: verify needs ca.pem; a cert needs its key', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-tls-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const settings = {
    verify: true,
    certPath: dir,
    caFile: join(dir, 'ca.pem'),
    certFile: join(dir, 'cert.pem'),
    keyFile: join(dir, 'key.pem'),
  };
  assert.throws(() => loadTlsMaterial(settings), /ca.pem does not exist/);
  writeFileSync(settings.caFile, 'CA');
  assert.deepEqual(loadTlsMaterial(settings), { rejectUnauthorized: true, ca: Buffer.from('CA') });
  writeFileSync(settings.certFile, 'CERT');
  assert.throws(() => loadTlsMaterial(settings), /key.pem does not exist/);
  writeFileSync(settings.keyFile, 'KEY');
  const m = loadTlsMaterial({ ...settings, verify: false });
  assert.equal(m.rejectUnauthorized, false);
  assert.equal(m.key?.toString(), 'KEY');
});
