/**
 * Attack: making the daemon contact a registry the operator did not allow. Pulls, pushes,
 * logins, searches, distribution inspects and a build's base pull make dockerd connect to the
 * registry the request names, from the host's network: with the default policy any registry,
 * including a service on the host's loopback. A policy `registries:` list restricts them. Here
 * the guard's policy allows only a real test registry; a test HTTP server on 127.0.0.1 stands
 * for a host service, and must see no request from any refused shape (raw HTTP and the CLI).
 * Push and pull to the allowed registry still work.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { images } from '../../src/engine/index.js';
import { createGuard, policyFor } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { SESSION, docker, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, messageOf, send } from '../support/rawhttp.js';
import { startRegistry } from '../support/registry.js';
import { startHostService } from '../support/hostservice.js';
import type { HostService } from '../support/hostservice.js';
import type { TestRegistry } from '../support/registry.js';
import { END, entry } from '../support/tar.js';

describe('attack: registries outside the policy’s list', () => {
  const c = engine();
  const dir = tempDir('berth-registries-');
  const sock = join(dir.path, 'g.sock');
  let guard: GuardHandle;
  let registry: TestRegistry | undefined;
  let service: HostService;
  let host = '';
  const tenant = uniqueName('registries');

  before(async () => {
    service = await startHostService({ status: 404, body: '{}' });
    host = service.addr;
    registry = await startRegistry(dir.path);
    // Through a policy file's text, as an operator writes it (case and Docker Hub's alias folded).
    const policy = policyFor(
      `defaults:\n  registries: [${registry.addr.toUpperCase()}, index.docker.io]\n`,
      'policy.yml',
      tenant,
    );
    assert.deepEqual([...(policy.registries ?? [])], [registry.addr, 'docker.io']);
    guard = await createGuard({ tenant, listen: sock, labels: sessionLabels(), policy });
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    await registry?.close();
    await service[Symbol.asyncDispose]();
    c.close();
    dir[Symbol.dispose]();
  });

  test('raw HTTP: pulls, pushes, logins, searches and distribution inspects of other registries are refused', async () => {
    const shapes: [string, string, string?][] = [
      ['POST', `/v1.41/images/create?fromImage=${host}/app&tag=1`],
      ['POST', `/v1.41/images/create?fromImage=${encodeURIComponent(`${host}/app:1`)}`],
      // fromImage wins over fromSrc in dockerd: still a pull.
      ['POST', `/v1.41/images/create?fromSrc=-&fromImage=${host}/app&tag=1`],
      ['POST', `/v1.41/images/create?fromImage=${host.replace('127.0.0.1', 'LOCALHOST')}/app&tag=1`],
      ['POST', `/v1.41/images/create?fromImage=${host}/app@sha256:${'a'.repeat(64)}`],
      ['POST', `/images/${host}/app/push?tag=1`],
      ['GET', `/v1.41/distribution/${host}/app:1/json`],
      ['GET', `/v1.41/images/search?term=${host}/app`],
      ['POST', '/v1.41/auth', JSON.stringify({ serveraddress: `http://${host}` })],
      ['POST', '/v1.41/auth', JSON.stringify({ serveraddress: `${host}/v2/` })],
      // Read as dockerd would read it, or refused: user info, a query.
      ['POST', '/v1.41/auth', JSON.stringify({ serveraddress: `https://u@${host}/` })],
      ['POST', '/v1.41/auth', JSON.stringify({ ServerAddress: `https://${host}?x=1` })],
    ];
    for (const [method, path, body] of shapes) {
      const res = await send(sock, {
        method,
        path,
        headers: body ? [['Content-Type', 'application/json']] : [],
        body,
      });
      expectRefused(res, 'registries', `${method} ${path} ${body ?? ''}`);
      assert.match(messageOf(res) ?? '', new RegExp(`allowed: ${registry?.addr ?? ''}, docker.io`));
    }
    assert.equal(service.hits(), 0, 'the host service saw a request');
  });

  test('a build that would pull its base from another registry is refused before dockerd sees it', async () => {
    const context = Buffer.concat([entry('Dockerfile', `FROM ${host}/base:1\nRUN true\n`), END]);
    for (const query of ['pull=1', '']) {
      const res = await send(sock, {
        method: 'POST',
        path: `/v1.41/build?${query}`,
        headers: [['Content-Type', 'application/x-tar']],
        body: context,
      });
      expectRefused(res, 'registries', `build ${query}`);
    }
    assert.equal(service.hits(), 0, 'the host service saw a request');
  });

  test('the CLI: push and pull work with the allowed registry, other registries are refused', async () => {
    const addr = registry?.addr ?? '';
    const ref = `${addr}/berth-registries-${SESSION}:v1`;
    const ctx = join(dir.path, 'ctx');
    mkdirSync(ctx, { recursive: true });
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM berth-local/busybox\nRUN echo pushed > /which\n');
    const env = { DOCKER_BUILDKIT: '0' };
    const b = await docker(`unix://${sock}`, ['build', '-q', '-t', ref, ctx], { env });
    assert.equal(b.code, 0, b.stderr);
    const push = await docker(`unix://${sock}`, ['push', ref]);
    assert.equal(push.code, 0, push.stderr);
    assert.equal((await docker(`unix://${sock}`, ['rmi', ref])).code, 0);
    const pull = await docker(`unix://${sock}`, ['pull', ref]);
    assert.equal(pull.code, 0, pull.stderr);
    assert.ok(await images(c).find(ref), 'the pulled image is on the engine');

    const pullOther = await docker(`unix://${sock}`, ['pull', `${host}/app:1`]);
    assert.notEqual(pullOther.code, 0, `pull from ${host} succeeded`);
    assert.match(pullOther.stderr, /berth: registries: /);
    // A tag names no registry; pushing it is what would contact one.
    assert.equal((await docker(`unix://${sock}`, ['tag', ref, `${host}/app:1`])).code, 0);
    const pushOther = await docker(`unix://${sock}`, ['push', `${host}/app:1`]);
    assert.notEqual(pushOther.code, 0, `push to ${host} succeeded`);
    assert.match(pushOther.stderr, /berth: registries: /);
    const login = await docker(`unix://${sock}`, ['login', '-u', 'u', '--password-stdin', host], {
      input: 'p\n',
    });
    assert.notEqual(login.code, 0, `login to ${host} succeeded`);
    assert.match(login.stderr, /berth: registries: /);
    assert.equal(service.hits(), 0, 'the host service saw a request');
  });
});
