import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import { ArchiveScan, LoadScanner, compressionOf, landing } from './loadscan.js';
import { entry, header, pax } from '../../test/support/tar.js';

const END = Buffer.alloc(1024);
const manifest = (tags: string[]) => JSON.stringify([{ Config: 'c.json', RepoTags: tags, Layers: [] }]);

/** Scans `parts` fed in pieces of `step` bytes (odd sizes: headers arrive split). */
function scan(parts: Buffer[], step = 333) {
  const all = Buffer.concat(parts);
  const s = new LoadScanner();
  for (let i = 0; i < all.length; i += step) s.write(all.subarray(i, i + step));
  return s.end();
}

test('a save-style archive: the manifest tags, and the legacy repositories file', () => {
  const r = scan([
    entry('abc/layer.tar', 'x'.repeat(3000)),
    entry('c.json', '{}'),
    entry('manifest.json', manifest(['app:1', 'reg.local:5000/team/app:2'])),
    entry('repositories', JSON.stringify({ legacy: { v1: 'abc' } })),
    END,
  ]);
  assert.equal(r.problem, undefined);
  assert.deepEqual(r.tags.sort(), ['app:1', 'legacy:v1', 'reg.local:5000/team/app:2']);
});

test('names that land on manifest.json after cleaning, PAX paths, GNU long names and USTAR prefixes', () => {
  for (const parts of [
    [entry('./manifest.json', manifest(['a:1']))],
    [entry('/manifest.json', manifest(['a:1']))],
    [entry('x/../manifest.json', manifest(['a:1']))],
    [pax({ path: 'manifest.json' }), entry('innocent.json', manifest(['a:1']))],
    [
      entry('././@LongLink', 'manifest.json\0', 'L', { gnu: true }),
      entry('innocent', manifest(['a:1']), '0', { gnu: true }),
    ],
    [entry('manifest.json', manifest(['a:1']), '0', { prefix: 'x/..' })],
  ]) {
    const r = scan([...parts, END]);
    assert.equal(r.problem, undefined);
    assert.deepEqual(r.tags, ['a:1'], parts.map((p) => p.subarray(0, 40).toString('latin1')).join('|'));
  }
  assert.equal(landing('a/./b/../c/'), 'a/c');
});

test('every spelling Go folds onto RepoTags, and duplicate keys, all count', () => {
  const text = '[{"RepoTags":["a:1"],"repotags":["b:2"],"REPOTAGſ":["c:3"]},{"repoTags":["d:4"]}]';
  assert.deepEqual(scan([entry('manifest.json', text), END]).tags.sort(), ['a:1', 'b:2', 'c:3', 'd:4']);
  // Every version of the file counts (the last one written wins in dockerd's folder).
  const two = scan([
    entry('manifest.json', manifest(['x:1'])),
    entry('manifest.json', manifest(['y:2'])),
    END,
  ]);
  assert.deepEqual(two.tags.sort(), ['x:1', 'y:2']);
});

test('what cannot be vouched for: links as the manifest, writes through a symlink, bad JSON, truncation', () => {
  assert.match(
    scan([entry('manifest.json', '', '2', { linkname: 'other.json' }), END]).problem ?? '',
    /not a regular file/,
  );
  assert.match(
    scan([entry('manifest.json', '', '1', { linkname: 'other.json' }), END]).problem ?? '',
    /not a regular file/,
  );
  assert.match(
    scan([entry('d', '', '2', { linkname: '.' }), entry('d/manifest.json', manifest(['a:1'])), END])
      .problem ?? '',
    /through a symbolic link/,
  );
  assert.match(scan([entry('manifest.json', '[{"RepoTags":'), END]).problem ?? '', /not JSON/);
  const whole = entry('manifest.json', manifest(['a:1']));
  assert.match(scan([whole.subarray(0, 520)]).problem ?? '', /ends in the middle/, 'data cut short');
  assert.match(scan([whole.subarray(0, 300)]).problem ?? '', /ends in the middle/, 'a header cut short');
});

test("an archive that ends after its last entry's data, without padding or end block, is whole (as Go reads it)", () => {
  const data = manifest(['a:1']);
  const s = new LoadScanner();
  s.write(entry('manifest.json', data).subarray(0, 512 + Buffer.byteLength(data)));
  const r = s.end();
  assert.equal(r.problem, undefined);
  assert.deepEqual(r.tags, ['a:1']);
  assert.equal(s.unpadded, 512 - Buffer.byteLength(data), 'the padding a forwarder must add');
});

test('PAX sizes keep the scan in step; nothing after the end block is read', () => {
  // The header says 0 bytes, the PAX record 1024: a header-like block inside the data is data.
  const fake = Buffer.concat([
    entry('manifest.json', manifest(['hidden:1'])).subarray(0, 512),
    Buffer.alloc(512),
  ]);
  const r = scan([
    pax({ size: '1024' }),
    header('blob', 0),
    fake,
    entry('manifest.json', manifest(['seen:1'])),
    END,
  ]);
  assert.equal(r.problem, undefined);
  assert.deepEqual(r.tags, ['seen:1']);
  const after = scan([END, entry('manifest.json', manifest(['late:1']))]);
  assert.deepEqual(after.tags, []);
});

test('compression is told from the first bytes, as dockerd tells it', () => {
  assert.equal(compressionOf(Buffer.from([0x1f, 0x8b, 0x08, 0])), 'gzip');
  assert.equal(compressionOf(Buffer.from('BZh91AY')), 'bzip2');
  assert.equal(compressionOf(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])), 'xz');
  assert.equal(compressionOf(Buffer.from([0x28, 0xb5, 0x2f, 0xfd])), 'zstd');
  assert.equal(compressionOf(header('a', 0)), 'none');
});

test("names land as Go's reader lands them (each case a red-team bypass of an earlier scanner)", () => {
  const m = manifest(['hidden:1']);
  /** A USTAR header whose version field is not "00": Go takes its prefix all the same. */
  const anyVersion = (b: Buffer) => {
    const c = Buffer.from(b);
    c.write('\0\0', 263, 'latin1');
    c.fill(0x20, 148, 156);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += c[i] ?? 0;
    c.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    return c;
  };
  const cases: [string, Buffer[]][] = [
    [
      'a GNU long name is cut at its first NUL',
      [
        entry('././@LongLink', 'manifest.json\0junk\0', 'L', { gnu: true }),
        entry('zzz', m, '0', { gnu: true }),
      ],
    ],
    [
      'a GNU long name wins over a PAX path',
      [pax({ path: 'zzz' }), entry('././@LongLink', 'manifest.json\0', 'L', { gnu: true }), entry('zzz', m)],
    ],
    [
      'a second PAX header replaces the first whole',
      [pax({ path: 'zzz' }), pax({ comment: 'a' }), entry('manifest.json', m)],
    ],
    [
      'a global header drops the meta entries before it',
      [pax({ path: 'zzz' }), entry('g', '9 a=b\n', 'g'), entry('manifest.json', m)],
    ],
    [
      'a USTAR prefix counts whatever the version',
      [anyVersion(entry('..', m, '0', { prefix: 'manifest.json/x' }))],
    ],
    [
      'an old-style entry named with a trailing slash is a folder, with no data',
      [header('x/', 1024, '\0'), entry('manifest.json', m)],
    ],
  ];
  for (const [what, parts] of cases) {
    const r = scan([...parts, END]);
    assert.equal(r.problem, undefined, what);
    assert.deepEqual(r.tags, ['hidden:1'], what);
  }
  // Third pass: a PAX record with an empty value keeps the header's own field (Go's mergePAX).
  for (const [what, rec] of [
    ['an empty PAX path', { path: '' }],
    ['an empty PAX size', { size: '' }],
  ] as const) {
    const r = scan([pax(rec), entry('manifest.json', m), END]);
    assert.equal(r.problem, undefined, what);
    assert.deepEqual(r.tags, ['hidden:1'], what);
  }
  // A PAX size Go would not parse, and a header whose checksum is wrong: refused.
  assert.match(scan([pax({ size: '0x10' }), entry('manifest.json', m), END]).problem ?? '', /PAX size/);
  const bad = Buffer.from(entry('manifest.json', m));
  bad.write('0000000\0', 148, 'latin1');
  assert.match(scan([bad, END]).problem ?? '', /checksum/);
  // Sparse entries (old GNU `S`, PAX GNU.sparse.*) rename and reshape their data: refused.
  assert.match(scan([entry('manifest.json', m, 'S'), END]).problem ?? '', /sparse/);
  assert.match(
    scan([
      pax({ 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': 'manifest.json' }),
      entry('zzz', m),
      END,
    ]).problem ?? '',
    /sparse/,
  );
});

test('red-team pass 4: a hard link to a symlink (or through one) is a symlink berth would not know', () => {
  // link(2) does not follow the link it is given: `h` becomes a second symlink to `.`, and
  // `h/manifest.json` lands on `manifest.json`.
  for (const [what, link] of [
    ['to the link', 's'],
    ['through the link', 's/x'],
    ['to the link, by a GNU long link name', 'K'],
  ] as const) {
    const hard =
      link === 'K'
        ? [entry('././@LongLink', 's\0', 'K'), header('h', 0, '1', { linkname: 'other' })]
        : [header('h', 0, '1', { linkname: link })];
    const r = scan([
      entry('x', 'x'),
      header('s', 0, '2', { linkname: '.' }),
      ...hard,
      entry('h/manifest.json', manifest(['host:1'])),
      END,
    ]);
    assert.match(r.problem ?? '', /hard-links h to/, what);
  }
  // A PAX linkpath is read as Go reads it; an empty one leaves the header's field.
  const viaPax = scan([
    header('s', 0, '2', { linkname: '.' }),
    pax({ linkpath: 's' }),
    header('h', 0, '1', { linkname: 'x' }),
    END,
  ]);
  assert.match(viaPax.problem ?? '', /hard-links h to s/);
  const emptyPax = scan([
    entry('x', 'x'),
    header('s', 0, '2', { linkname: '.' }),
    pax({ linkpath: '' }),
    header('h', 0, '1', { linkname: 'x' }),
    END,
  ]);
  assert.equal(emptyPax.problem, undefined);
  // Ordinary hard links to files stay fine.
  assert.equal(scan([entry('x', 'x'), header('y', 0, '1', { linkname: 'x' }), END]).problem, undefined);
});

test('red-team pass 4: a gzip archive that inflates to another compressed stream is refused', async () => {
  const tar = Buffer.concat([entry('Dockerfile', 'FROM b\n'), END]);
  const scanOf = async (body: Buffer) => {
    const a = new ArchiveScan(new LoadScanner(), 'build context');
    await new Promise<void>((r) => a.write(body, r));
    return a.end();
  };
  await assert.rejects(scanOf(gzipSync(gzipSync(tar))), /gzip inside gzip/);
  assert.equal((await scanOf(gzipSync(tar))).problem, undefined);
  // Fewer inflated bytes than a magic's length are still read (and found truncated).
  assert.match((await scanOf(gzipSync(Buffer.from('abc')))).problem ?? '', /ends in the middle/);
});

test('what passes on is the archive up to its end block, in about one piece per chunk, however it is cut', () => {
  const body = Buffer.concat([
    entry('Dockerfile', 'FROM b\n'),
    ...Array.from({ length: 200 }, (_, i) => entry(`d/f${i}`, 'x'.repeat(i * 37))),
    pax({ path: 'long/'.repeat(30) + 'name' }),
    header('short', 0),
    entry('empty', ''),
  ]);
  // Bytes after the end block are nobody's: they never pass.
  const archive = Buffer.concat([body, END, entry('after', 'late')]);
  for (const step of [1, 7, 511, 512, 513, 4096, 65536, archive.length]) {
    const out: Buffer[] = [];
    const s = new LoadScanner({
      watched: new Set(['Dockerfile']),
      read: () => undefined,
      emit: (b) => out.push(b),
    });
    let chunks = 0;
    for (let i = 0; i < archive.length; i += step, chunks++) s.write(archive.subarray(i, i + step));
    assert.equal(s.end().problem, undefined, `step ${step}`);
    assert.ok(Buffer.concat(out).equals(body), `step ${step}: the bytes before the end block, in order`);
    // At most two pieces per chunk: the bytes before a header that spans chunks, and that header.
    assert.ok(out.length <= 2 * chunks, `step ${step}: ${out.length} pieces for ${chunks} chunks`);
  }
  // A chunk-sized read of many entries is one piece, not two per entry.
  const one: Buffer[] = [];
  const s = new LoadScanner({ watched: new Set(), read: () => undefined, emit: (b) => one.push(b) });
  s.write(archive);
  assert.equal(one.length, 1);
});
