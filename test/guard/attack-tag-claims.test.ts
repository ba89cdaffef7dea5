/**
 * Attack: taking a tag someone else sets while the tenant's own operation on that name is in
 * flight. A build with `-t` or an import names a free tag, and the guard claims it for the
 * operation; the tenant controls how long the upload lasts. While it stalls, the host tags the
 * name. The claim must give the tenant nothing over the host's tag (no re-tag, no removal), and
 * when the upload ends in failure the tag must not become the tenant's, nor go with its cleanup.
 * Every request is raw HTTP; what happened is checked on the engine directly.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { images } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { SESSION, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, send } from '../support/rawhttp.js';
import { entry } from '../support/tar.js';

const IMAGE = 'berth-local/busybox';

describe('attack: a tag claimed by a stalled upload', () => {
  const c = engine();
  const dir = tempDir('berth-claims-');
  const sock = join(dir.path, 'g.sock');
  let guard: GuardHandle;
  let imageId = '';
  const victims: string[] = [];

  before(async () => {
    guard = await createGuard({ tenant: uniqueName('claims'), listen: sock, labels: sessionLabels() });
    imageId = (await images(c).inspect(IMAGE)).Id;
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    for (const v of victims)
      await images(c)
        .remove(v)
        .catch(() => false);
    c.close();
    dir[Symbol.dispose]();
  });

  /** Sends a request head with a chunked body and nothing more; the answer is read as it comes. */
  const stall = (path: string, contentType: string) =>
    new Promise<{ socket: Socket; answer: Promise<string> }>((resolve, reject) => {
      const socket = connect(sock, () => {
        socket.write(
          `POST ${path} HTTP/1.1\r\nHost: docker\r\nContent-Type: ${contentType}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n`,
        );
        // The guard has claimed the tag once the engine is asked; give it that long.
        setTimeout(() => resolve({ socket, answer }), 500);
      });
      const answer = new Promise<string>((done) => {
        let text = '';
        socket.on('data', (b: Buffer) => (text += b.toString()));
        socket.on('close', () => done(text));
      });
      socket.on('error', reject);
    });

  const attempts = async (repo: string, tag: string) => {
    // The host sets the name the tenant's stalled upload claimed.
    await images(c).tag(IMAGE, repo, tag);
    const ref = `${repo}:${tag}`;
    expectRefused(
      await send(sock, {
        method: 'POST',
        path: `/v1.41/images/berth-local/tools/tag?repo=${encodeURIComponent(repo)}&tag=${tag}`,
      }),
      'image-tag',
      're-tag of the host’s tag during the upload',
    );
    expectRefused(
      await send(sock, { method: 'DELETE', path: `/v1.41/images/${encodeURIComponent(ref)}` }),
      'image-tag',
      'removal of the host’s tag during the upload',
    );
    assert.equal((await images(c).inspect(ref)).Id, imageId, 'the host’s tag is where the host set it');
  };

  const afterUpload = async (ref: string) => {
    expectRefused(
      await send(sock, { method: 'DELETE', path: `/v1.41/images/${encodeURIComponent(ref)}` }),
      'image-tag',
      'removal of the host’s tag after the failed upload',
    );
    assert.equal((await images(c).inspect(ref)).Id, imageId, 'the host’s tag survived the upload');
  };

  for (const [what, path, type] of [
    ['a build with -t', (repo: string, tag: string) => `/v1.41/build?t=${repo}:${tag}`, 'application/x-tar'],
    [
      'an import',
      (repo: string, tag: string) => `/v1.41/images/create?fromSrc=-&repo=${repo}&tag=${tag}`,
      'application/x-tar',
    ],
  ] as const)
    test(`${what} that stalls gives the tenant nothing over a tag the host sets meanwhile`, async () => {
      const repo = `berth-claim-victim-${SESSION}-${victims.length}`;
      const ref = `${repo}:prod`;
      victims.push(ref);
      const { socket, answer } = await stall(path(repo, 'prod'), type);
      await attempts(repo, 'prod');
      // The upload ends, and the operation fails (not a tar archive).
      socket.write('5\r\nhello\r\n0\r\n\r\n');
      const text = await Promise.race([
        answer,
        new Promise<string>((r) =>
          setTimeout(() => {
            socket.destroy();
            r('');
          }, 20_000),
        ),
      ]);
      assert.doesNotMatch(text, /^HTTP\/1\.1 2\d\d[\s\S]*Successfully/, 'the operation failed');
      await afterUpload(ref);
    });

  /** A chunk of the chunked body (and its end). */
  const finish = (socket: Socket, body: Buffer) =>
    socket.write(
      Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from('\r\n0\r\n\r\n')]),
    );
  for (const [what, path, body] of [
    [
      'a build with -t',
      (repo: string, tag: string) => `/v1.41/build?t=${repo}:${tag}`,
      () =>
        Buffer.concat([
          entry('Dockerfile', `FROM ${IMAGE}\nLABEL berth.claims=${SESSION}\n`),
          Buffer.alloc(1024),
        ]),
    ],
    [
      'an import',
      (repo: string, tag: string) => `/v1.41/images/create?fromSrc=-&repo=${repo}&tag=${tag}`,
      () => Buffer.concat([entry('made-by-import', SESSION), Buffer.alloc(1024)]),
    ],
  ] as const)
    test(`${what} that stalls and then succeeds does not write over a tag the host set meanwhile`, async () => {
      const repo = `berth-claim-victim-${SESSION}-${victims.length}`;
      const ref = `${repo}:prod`;
      victims.push(ref);
      const { socket, answer } = await stall(path(repo, 'prod'), 'application/x-tar');
      await attempts(repo, 'prod');
      finish(socket, body());
      const text = await answer;
      // The operation ran; the tag is refused in its answer, and stays where the host set it.
      assert.match(text, /berth: image-tag: /, 'the answer says why the tag was not set');
      assert.equal((await images(c).inspect(ref)).Id, imageId, 'the host’s tag was not written over');
      await afterUpload(ref);
    });

  test('the cleanup leaves the host’s tags the stalled uploads claimed', async () => {
    await guard.close({ cleanup: true });
    for (const v of victims)
      assert.equal((await images(c).inspect(v)).Id, imageId, `${v} survived the cleanup`);
  });
});
