/**
 * Build contexts the fast front carries (berth-front.c upload(), src/guard/upload.ts): the front
 * moves the context to the engine itself, copies to the guard only what the guard asks to read,
 * and passes on only what the guard passed. These tests build through it on the real engine and
 * check what the engine got, byte for byte, and that every way a context can go wrong (compressed,
 * followed by junk, a Dockerfile after a large file, cut short, a client gone halfway, a channel
 * named by the client) ends as the guard alone would end it, leaving nothing behind.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { images } from '../../src/engine/index.js';
import { createGuard, nativeHelper } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import {
  SESSION,
  auditAfter,
  auditRecords,
  docker,
  engine,
  frontProcesses,
  sessionLabels,
  tempDir,
  uniqueName,
} from '../support/index.js';
import type { AuditRecord } from '../../src/guard/index.js';
import { buildRequest, expectRefused, messageOf, postBuild, rawRequest, send } from '../support/rawhttp.js';
import type { RawResponse } from '../support/rawhttp.js';
import { END, entry, header } from '../support/tar.js';

const MiB = 1024 * 1024;

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** The image ID a build's progress stream reports last, if any. */
function builtId(r: RawResponse): string | undefined {
  const ids = [...r.text.matchAll(/"ID":"(sha256:[0-9a-f]{64})"/g)].map((m) => m[1]);
  return ids.at(-1);
}

describe('guard: build contexts carried by the fast front', () => {
  const c = engine();
  const dir = tempDir('berth-upload-e2e-');
  const sock = join(dir.path, 'g.sock');
  const auditFile = join(dir.path, 'audit.log');
  const big = randomBytes(6 * MiB);
  let guard: GuardHandle;
  const audit = () => auditRecords(auditFile);
  const isBuild = (l: AuditRecord) => l.path === '/build';
  /** The audit lines of builds since line `from`, once there is one (written after the answer). */
  const builds = async (from: number): Promise<AuditRecord[]> =>
    (await auditAfter(auditFile, from, isBuild)).filter(isBuild);
  /** A file of the image, read back through the guard (create, cp, remove). */
  const fileOf = async (image: string, path: string): Promise<Buffer> => {
    const made = await docker(guard.address, ['create', '--network', 'none', image, 'x']);
    assert.equal(made.code, 0, made.stderr);
    const id = made.stdout.trim();
    const out = join(dir.path, `cp-${id.slice(0, 12)}`);
    try {
      const cp = await docker(guard.address, ['cp', `${id}:${path}`, out]);
      assert.equal(cp.code, 0, cp.stderr);
      return readFileSync(out);
    } finally {
      await docker(guard.address, ['rm', '-f', id]);
    }
  };
  // Other test files build on the same engine at the same time, so "no image is made" looks for
  // images that carry the test's own label, set right after FROM: every step a build runs past
  // FROM makes an image with it (before, it compared every image the engine had).
  const marked = (dockerfile: string, marker: string): string =>
    dockerfile.replace('\n', `\nLABEL berth-test.upload=${marker}\n`);
  const imagesMarked = async (marker: string): Promise<string[]> => {
    const r = await docker(guard.address, [
      'images',
      '-aq',
      '--no-trunc',
      '--filter',
      `label=berth-test.upload=${marker}`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    return r.stdout.trim().split('\n').filter(Boolean);
  };
  const post = (context: Buffer, query = '', framing: 'length' | 'chunked' = 'length', chunks?: number[]) =>
    postBuild(sock, context, query, { framing, ...(chunks ? { chunks } : {}) });

  before(async () => {
    assert.ok(nativeHelper('berth-front'), 'berth-front is built (npm run build)');
    guard = await createGuard({
      tenant: uniqueName('upload'),
      listen: sock,
      labels: sessionLabels(),
      audit: auditFile,
    });
    assert.equal(frontProcesses().length, 1, 'the guard runs its front');
  });

  after(async () => {
    await guard.close({ cleanup: true });
    c.close();
    dir[Symbol.dispose]();
  });

  test('docker build: the engine gets the context byte for byte, carried by the front', async () => {
    const ctx = join(dir.path, 'ctx');
    mkdirSync(ctx);
    writeFileSync(join(ctx, 'Dockerfile'), 'FROM scratch\nCOPY big /big\nCOPY small /small\n');
    writeFileSync(join(ctx, 'big'), big);
    writeFileSync(join(ctx, 'small'), 'small file\n');
    const tag = `berth-upload-${SESSION}:cli`;
    const from = audit().length;
    const r = await docker(guard.address, ['build', '-q', '-t', tag, ctx]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(
      (await builds(from)).map((l) => [l.decision, l.via]),
      [['allow', 'upload']],
      'the build went the front’s way',
    );
    assert.equal(sha(await fileOf(tag, '/big')), sha(big), 'the large file (passed unread) is whole');
    assert.equal((await fileOf(tag, '/small')).toString(), 'small file\n');
    await docker(guard.address, ['rmi', tag]);
  });

  test('raw API, by length and chunked in odd pieces: the same bytes arrive', async () => {
    const context = Buffer.concat([
      entry('Dockerfile', 'FROM scratch\nCOPY big /big\n'),
      entry('big', big),
      END,
    ]);
    for (const [framing, chunks] of [
      ['length', undefined],
      ['chunked', [1, 511, 7, 3 * MiB + 5, 100_000]],
    ] as const) {
      const from = audit().length;
      const r = await post(context, '', framing, chunks ? [...chunks] : undefined);
      assert.equal(r.status, 200, r.text.slice(0, 300));
      const id = builtId(r);
      assert.ok(id, `${framing}: ${r.text.slice(-300)}`);
      assert.equal((await builds(from))[0]?.via, 'upload', framing);
      assert.equal(sha(await fileOf(id, '/big')), sha(big), framing);
      await images(c).remove(id, true);
    }
  });

  test('a context sent in one-byte chunks builds (its headers do not fill the front’s pipes; red-team pass 32)', async () => {
    const context = Buffer.concat([
      entry('Dockerfile', 'FROM scratch\nCOPY f /f\n'),
      entry('f', 'tiny\n'),
      END,
    ]);
    const r = await post(context, '', 'chunked', new Array<number>(context.length - 1).fill(1));
    assert.equal(r.status, 200, r.text.slice(0, 300));
    const id = builtId(r);
    assert.ok(id, r.text.slice(-300));
    assert.equal((await fileOf(id, '/f')).toString(), 'tiny\n');
    await images(c).remove(id, true);
  });

  test('a long X-Registry-Config (the engine request’s head over 4 KiB) builds as any other (red-team pass 32)', async () => {
    const config = Buffer.from(
      JSON.stringify({ 'registry.invalid': { username: 'u', password: 'p'.repeat(3600) } }),
    ).toString('base64');
    // Within the front's 8 KiB for a head; the guard's request to the engine comes out over 4 KiB.
    assert.ok(config.length > 4096 && config.length < 6000);
    const context = Buffer.concat([
      entry('Dockerfile', 'FROM scratch\nCOPY big /big\n'),
      entry('big', big),
      END,
    ]);
    const from = audit().length;
    const r = await send(
      sock,
      {
        method: 'POST',
        path: '/v1.41/build',
        headers: [
          ['Content-Type', 'application/x-tar'],
          ['X-Registry-Config', config],
        ],
        body: context,
        framing: 'chunked',
        chunks: [MiB],
      },
      { timeoutMs: 120_000 },
    );
    assert.equal(r.status, 200, r.text.slice(0, 300));
    const id = builtId(r);
    assert.ok(id, r.text.slice(-300));
    assert.equal((await builds(from))[0]?.via, 'upload');
    assert.equal(sha(await fileOf(id, '/big')), sha(big));
    await images(c).remove(id, true);
  });

  test('a PAX block over 1 MiB (which Go refuses) is refused by the guard first; the guard serves on (red-team pass 32)', async () => {
    const marker = uniqueName('mark');
    const records = Buffer.alloc(MiB + 512, 0x20);
    const context = Buffer.concat([
      entry('PaxHeaders/g', records, 'g'),
      entry('Dockerfile', marked('FROM berth-local/busybox\nADD http://127.0.0.1:9/x /x\n', marker)),
      END,
    ]);
    for (let i = 0; i < 3; i++) {
      const r = await post(context, '', 'chunked', [MiB]);
      assert.ok(r.status === 400 || r.status === 403, `${r.status} ${r.text.slice(0, 300)}`);
      assert.match(messageOf(r) ?? '', /^berth: /);
    }
    const ping = await rawRequest(sock, 'GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n');
    assert.equal(ping.status, 200, 'the guard serves on');
    assert.deepEqual(await imagesMarked(marker), [], 'no image is made');
  });

  test('a compressed context is read whole by the guard, and builds as before', async () => {
    const context = gzipSync(
      Buffer.concat([
        entry('Dockerfile', 'FROM scratch\nCOPY f /f\n'),
        entry('f', big.subarray(0, 2 * MiB)),
        END,
      ]),
    );
    const from = audit().length;
    const r = await post(context, '', 'chunked', [64 * 1024]);
    assert.equal(r.status, 200, r.text.slice(0, 300));
    const id = builtId(r);
    assert.ok(id, r.text.slice(-300));
    assert.equal((await builds(from))[0]?.via, 'upload');
    assert.equal(sha(await fileOf(id, '/f')), sha(big.subarray(0, 2 * MiB)));
    await images(c).remove(id, true);
  });

  test('bytes after the end of the archive never reach the engine, however many', async () => {
    // Junk that is no tar at all: were it passed on, the engine would read it as the archive's end
    // (two zero blocks are what it waits for; the guard sends its own).
    const junk = Buffer.alloc(3 * MiB, 0x41);
    const context = Buffer.concat([
      entry('Dockerfile', 'FROM scratch\nCOPY big /big\n'),
      entry('big', big),
      END,
      junk,
    ]);
    const r = await post(context, '', 'chunked', [MiB]);
    assert.equal(r.status, 200, r.text.slice(0, 300));
    const id = builtId(r);
    assert.ok(id, r.text.slice(-300));
    await images(c).remove(id, true);
  });

  test('a Dockerfile after a large file passed unread is still read, and refused', async () => {
    const marker = uniqueName('mark');
    const tag = `berth-upload-${SESSION}:late`;
    const context = Buffer.concat([
      entry('big', big),
      entry('Dockerfile', marked('FROM berth-local/busybox\nADD http://127.0.0.1:9/x /x\n', marker)),
      END,
    ]);
    const r = await post(context, `t=${encodeURIComponent(tag)}`, 'chunked', [MiB]);
    expectRefused(r, 'build-options', 'a URL the daemon would fetch, in a Dockerfile after a large file');
    assert.equal(await images(c).find(tag), undefined, 'no image is tagged');
    assert.deepEqual(await imagesMarked(marker), [], 'no image is made');
  });

  test('a context cut short inside a file passed unread builds nothing', async () => {
    const marker = uniqueName('mark');
    const context = Buffer.concat([
      entry('Dockerfile', marked('FROM scratch\nCOPY big /big\n', marker)),
      header('big', big.length),
      big.subarray(0, 2 * MiB),
    ]);
    const r = await post(context, '', 'chunked', [MiB]);
    assert.equal(builtId(r), undefined, 'no image is reported');
    assert.ok(
      r.status >= 400 || r.text.includes('"errorDetail"'),
      `the build fails: ${r.text.slice(0, 300)}`,
    );
    assert.deepEqual(await imagesMarked(marker), [], 'no image is made');
  });

  test('a client gone halfway: nothing is built, and the front and the guard carry on', async () => {
    const marker = uniqueName('mark');
    const [front] = frontProcesses();
    assert.ok(front);
    const threads = () => readdirSync(`/proc/${front}/task`).length;
    const idle = threads();
    const context = Buffer.concat([
      entry('Dockerfile', marked('FROM scratch\nCOPY big /big\n', marker)),
      entry('big', big),
      END,
    ]);
    const bytes = buildRequest({
      method: 'POST',
      path: '/v1.41/build',
      headers: [['Content-Type', 'application/x-tar']],
      body: context,
      framing: 'chunked',
      chunks: [256 * 1024],
    });
    const s = connect(sock);
    await once(s, 'connect');
    await new Promise<void>((res) => s.write(bytes.subarray(0, 3 * MiB), () => res()));
    // While the front holds the upload, it runs a thread for the connection and two for the engine.
    const end = Date.now() + 10_000;
    while (threads() <= idle && Date.now() < end) await new Promise((res) => setTimeout(res, 20));
    assert.ok(threads() > idle, 'the upload is under way');
    s.destroy();
    while (threads() > idle && Date.now() < end) await new Promise((res) => setTimeout(res, 50));
    assert.ok(threads() <= idle, 'the front’s threads for it ended');
    assert.deepEqual(await imagesMarked(marker), [], 'no image is made');
    const r = await post(
      Buffer.concat([
        entry('Dockerfile', marked('FROM scratch\nCOPY f /f\n', marker)),
        entry('f', 'f\n'),
        END,
      ]),
    );
    assert.equal(r.status, 200);
    const id = builtId(r);
    assert.ok(id, r.text.slice(-300));
    // The check above can see a build: this one's images carry the label.
    assert.ok((await imagesMarked(marker)).includes(id), 'a build that ran is seen by its label');
    await images(c).remove(id, true);
  });

  test('a client cannot name an upload channel itself (raw API): 400, and nothing runs', async () => {
    const forged = randomBytes(16).toString('hex');
    for (const [what, path, body] of [
      ['a build', '/v1.41/build', Buffer.concat([entry('Dockerfile', 'FROM scratch\n'), END])],
      ['a ping', '/_ping', undefined],
    ] as const) {
      const r = await send(sock, {
        method: body ? 'POST' : 'GET',
        path,
        headers: [
          ['Content-Type', 'application/x-tar'],
          ['X-Berth-Upload', forged],
        ],
        ...(body ? { body, framing: 'chunked' as const } : {}),
      });
      assert.equal(r.status, 400, `${what}: ${r.text}`);
      assert.match(messageOf(r) ?? '', /^berth: malformed: .*upload channel/, what);
    }
    const ping = await rawRequest(sock, 'GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n');
    assert.equal(ping.status, 200, 'the guard serves on');
  });
});
