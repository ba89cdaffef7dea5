/**
 * Attack: `docker load` and the tags around it. The guard reads the archive before dockerd does and
 * acts on the tags the archive names, nothing else: a tag another party makes or moves while a slow
 * load is uploading is not claimed and not put back; a manifest hidden from a naive reader (a PAX
 * path, a write through a symlink the archive made) is found or refused before anything is loaded.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { gzipSync } from 'node:zlib';
import { join } from 'node:path';
import { containers, images } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { SESSION, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, send } from '../support/rawhttp.js';
import { entry, pax } from '../support/tar.js';

const IMAGE = 'berth-local/busybox';

describe('attack: docker load claiming or reverting tags it does not name', () => {
  const c = engine();
  const dir = tempDir('berth-load-atk-');
  const sock = join(dir.path, 'g.sock');
  const repo = `berth-atk-load-${SESSION}`;
  let guard: GuardHandle;
  let base = '';
  let distinct = '';
  let box = '';
  let archive: Buffer = Buffer.alloc(0);

  before(async () => {
    guard = await createGuard({ tenant: uniqueName('load'), listen: sock, labels: sessionLabels() });
    base = (await images(c).inspect(IMAGE)).Id;
    // A second image of the host's own, made directly.
    const { Id } = await containers(c).create({ Image: IMAGE, Cmd: ['true'], Labels: sessionLabels() });
    box = Id;
    distinct = (
      await c.json<{ Id: string }>('POST', '/commit', { query: { container: box, repo, tag: 'distinct' } })
    ).Id;
    // An archive of the base image by ID: it names no tag.
    archive = await new Promise<Buffer>((resolve, reject) => {
      void c.request({ path: `/images/${base}/get` }).then((res) => {
        const parts: Buffer[] = [];
        res.on('data', (b: Buffer) => parts.push(b));
        res.on('end', () => resolve(Buffer.concat(parts)));
        res.on('error', reject);
      }, reject);
    });
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    for (const t of ['distinct', 'during', 'moved', 'hidden', 'linked', 'zipped'])
      await images(c)
        .remove(`${repo}:${t}`)
        .catch(() => false);
    await images(c)
      .remove(distinct)
      .catch(() => false);
    await containers(c)
      .remove(box)
      .catch(() => undefined);
    c.close();
    dir[Symbol.dispose]();
  });

  const tagOf = async (ref: string) => (await images(c).find(ref))?.Id;

  /** Loads `tar` through the guard in two halves; `between` runs while the second is held back. */
  const slowLoad = (
    tar: Buffer,
    between: () => Promise<unknown>,
  ): Promise<{ status: number; text: string }> =>
    new Promise((resolve, reject) => {
      const s = connect(sock);
      const parts: Buffer[] = [];
      s.on('data', (b) => parts.push(b));
      s.on('error', reject);
      s.on('end', () => {
        const text = Buffer.concat(parts).toString('utf8');
        resolve({ status: Number(/^HTTP\/1\.1 (\d+)/.exec(text)?.[1] ?? 0), text });
      });
      s.write(
        `POST /v1.41/images/load?quiet=1 HTTP/1.1\r\nHost: docker\r\nContent-Type: application/x-tar\r\nContent-Length: ${tar.length}\r\nConnection: close\r\n\r\n`,
      );
      const half = Math.floor(tar.length / 2);
      s.write(tar.subarray(0, half));
      setTimeout(() => {
        between().then(() => s.end(tar.subarray(half)), reject);
      }, 300);
    });

  test('a tag the host makes during a slow load is not claimed', async () => {
    const r = await slowLoad(archive, () => images(c).tag(IMAGE, repo, 'during'));
    assert.equal(r.status, 200, r.text);
    assert.equal(await tagOf(`${repo}:during`), base);
    const rm = await send(sock, { method: 'DELETE', path: `/v1.41/images/${repo}:during` });
    expectRefused(rm, 'image-tag', 'removing the host’s new tag');
    assert.equal(await tagOf(`${repo}:during`), base, 'the host’s tag survives');
  });

  test('a tag the host moves during a slow load is not moved back', async () => {
    await images(c).tag(IMAGE, repo, 'moved');
    const r = await slowLoad(archive, () => images(c).tag(distinct, repo, 'moved'));
    assert.equal(r.status, 200, r.text);
    assert.equal(await tagOf(`${repo}:moved`), distinct, 'the host’s move stands');
  });

  const loadRaw = (tar: Buffer) =>
    send(sock, {
      method: 'POST',
      path: '/v1.41/images/load',
      headers: [['Content-Type', 'application/x-tar']],
      body: tar,
    });

  /** The base image's archive, its manifest replaced by `manifestParts` naming `tag`. */
  const withManifest = (manifestParts: (text: string) => Buffer[]): Buffer => {
    const out: Buffer[] = [];
    let off = 0;
    let manifest = '';
    while (off + 512 <= archive.length) {
      const h = archive.subarray(off, off + 512);
      if (h.every((b) => b === 0)) break;
      const name = h.subarray(0, 100).toString('utf8').replace(/\0.*$/s, '');
      const size = parseInt(h.subarray(124, 136).toString('latin1').replace(/\0.*$/s, '').trim() || '0', 8);
      const span = 512 + Math.ceil(size / 512) * 512;
      if (name === 'manifest.json') manifest = archive.subarray(off + 512, off + 512 + size).toString('utf8');
      else out.push(archive.subarray(off, off + span));
      off += span;
    }
    const items = JSON.parse(manifest) as { RepoTags: string[] | null }[];
    for (const i of items) i.RepoTags = [`${repo}:distinct`];
    return Buffer.concat([...out, ...manifestParts(JSON.stringify(items)), Buffer.alloc(1024)]);
  };

  test('a manifest behind a PAX path is read, and the host’s tag is refused before anything loads', async () => {
    const tar = withManifest((text) => [pax({ path: 'manifest.json' }), entry('notes.txt', text)]);
    const r = await loadRaw(tar);
    expectRefused(r, 'image-tag', 'PAX-hidden manifest');
    assert.equal(await tagOf(`${repo}:distinct`), distinct, 'the host’s tag did not move');
  });

  test('a manifest hidden by tar forms Go reads differently from a naive reader is read too (red-team cases)', async () => {
    for (const [what, parts] of [
      [
        'a long name with junk after its NUL',
        (t: string) => [
          entry('././@LongLink', 'manifest.json\0junk\0', 'L', { gnu: true }),
          entry('zzz', t, '0', { gnu: true }),
        ],
      ],
      [
        'a long name over a PAX path',
        (t: string) => [
          pax({ path: 'zzz' }),
          entry('././@LongLink', 'manifest.json\0', 'L', { gnu: true }),
          entry('zzz', t),
        ],
      ],
      [
        'a second PAX header',
        (t: string) => [pax({ path: 'zzz' }), pax({ comment: 'a' }), entry('manifest.json', t)],
      ],
      [
        // link(2) makes `h` a second symlink to `.`: `h/manifest.json` lands on `manifest.json`.
        'a hard link to a symlink',
        (t: string) => [
          entry('s', '', '2', { linkname: '.' }),
          entry('h', '', '1', { linkname: 's' }),
          entry('h/manifest.json', t),
        ],
      ],
    ] as const) {
      const r = await loadRaw(withManifest(parts));
      expectRefused(r, 'image-tag', what);
      assert.equal(await tagOf(`${repo}:distinct`), distinct, `${what}: the host’s tag did not move`);
    }
  });

  test('a gzip archive is read through its compression: the host’s tag is refused, a free one loads', async () => {
    const hostTag = withManifest((text) => [entry('manifest.json', text)]);
    expectRefused(await loadRaw(gzipSync(hostTag)), 'image-tag', 'gzip archive naming the host’s tag');
    assert.equal(await tagOf(`${repo}:distinct`), distinct, 'the host’s tag did not move');

    const free = withManifest((text) => [
      entry('manifest.json', text.replaceAll(`${repo}:distinct`, `${repo}:zipped`)),
    ]);
    const r = await loadRaw(gzipSync(free));
    assert.equal(r.status, 200, r.text);
    assert.equal(await tagOf(`${repo}:zipped`), base, 'loaded and tagged');
    const rm = await send(sock, { method: 'DELETE', path: `/v1.41/images/${repo}:zipped` });
    assert.equal(rm.status, 200, 'the tag the load made is the tenant’s to remove');
  });

  test('other compressions and a broken gzip stream are refused with 400, a body too short to be an archive with 403', async () => {
    const bzip2 = Buffer.concat([Buffer.from('BZh91AY&SY'), Buffer.alloc(64)]);
    const r1 = await loadRaw(bzip2);
    expectRefused(r1, 'malformed', 'bzip2', 400);
    assert.match(r1.text, /decompress it first/);
    const broken = gzipSync(archive).subarray(0, 200);
    expectRefused(await loadRaw(broken), 'malformed', 'truncated gzip', 400);
    // Corrupt in the middle of a stream long enough that the gunzip is still behind the upload
    // when it fails: the load is refused, not left waiting.
    const long = gzipSync(Buffer.concat([archive, Buffer.alloc(8 * 1024 * 1024, 'berth ')]));
    const corrupt = Buffer.from(long);
    corrupt.fill(0xff, Math.floor(corrupt.length / 3), Math.floor(corrupt.length / 3) + 64);
    expectRefused(await loadRaw(corrupt), 'malformed', 'corrupt gzip', 400);
    expectRefused(await loadRaw(Buffer.from('tiny')), 'image-tag', 'four bytes', 403);
  });

  test('a manifest written through a symlink the archive made is refused', async () => {
    const tar = withManifest((text) => [
      entry('d', '', '2', { linkname: '.' }),
      entry('d/manifest.json', text),
    ]);
    const r = await loadRaw(tar);
    expectRefused(r, 'image-tag', 'manifest through a symlink');
    assert.equal(await tagOf(`${repo}:distinct`), distinct, 'the host’s tag did not move');
  });
});
