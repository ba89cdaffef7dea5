import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { buffer } from 'node:stream/consumers';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { instructions, readDockerfile, triggerRefusals } from './dockerfile.js';
import { ContextGate, dockerfilePaths } from './contextgate.js';
import { LoadScanner } from './loadscan.js';
import { entry, header } from '../../test/support/tar.js';

const END = Buffer.alloc(1024);
const refused = (text: string) => readDockerfile(text).refusals;

test('ADD sources the daemon would download are found however the Dockerfile spells them', () => {
  for (const text of [
    'FROM b\nADD http://127.0.0.1:8080/secret /s',
    'FROM b\nadd https://169.254.169.254/latest/ /s',
    'FROM b\n  Add --chown=1:1 --chmod=600 http://x/ /s',
    'FROM b\nADD ["http://x/", "/s"]',
    'FROM b\nADD ["\\u0068ttp://x/", "/s"]',
    'FROM b\nADD "http://x/" /s',
    "FROM b\nADD 'http://x/' /s",
    'FROM b\nADD http\\://x/ /s',
    'FROM b\nADD local.txt http://x/ /s',
    // Continuations join lines as they are, comments and blank lines inside them skipped.
    'FROM b\nADD ht\\\ntp://x/ /s',
    'FROM b\nADD "http:/\\\n# a comment\n\n/x" /s',
    'FROM b\nADD \\\n  http://x/ \\\n  /s',
    // Another escape character.
    '# escape=`\nFROM b\nADD ht`\ntp://x/ /s',
    '#escape = `\nFROM b\nADD http`\n://x/ /s',
    // Variables: the value is not known here.
    'FROM b\nARG U=http://x/\nADD $U /s',
    'FROM b\nADD ${U:-http://x/} /s',
    'FROM b\nADD ["$U", "/s"]',
    // ONBUILD runs in the builds of images made from this one.
    'FROM b\nONBUILD ADD http://x/ /s',
    'FROM b\nonbuild add http://x/ /s',
    // Other schemes count too (the daemon reads only http and https, but nothing is guessed).
    'FROM b\nADD HTTP://x/ /s',
    'FROM b\nADD ftp://x/ /s',
    '\uFEFFFROM b\r\nADD http://x/ /s\r\n',
    // Found by a red-team pass: readings that differ between dockerd's parser versions.
    'FROM b\nRUN echo \\\\\nADD http://x/dblbs /x',
    '# foo=bar\n# escape=`\nFROM b\nWORKDIR /tmp`\nADD http://x/ /x',
    ' # escape=`\nFROM b\nWORKDIR /tmp\\\nADD http://x/ /x',
    'FROM b\nADD ["http\\u003a//x/jsontrail", "/x"] z',
    // Third pass: spaces Go and JavaScript read differently (NEL, a BOM inside the file).
    'FROM b\n\u0085ADD http://x/nel /nel',
    'FROM b\nADD --chown=0\\\n\uFEFF#c http://x/feff /d/',
    'FROM b\nADD \u0085["http\\u003a//x/json-nel","/j"]',
  ])
    assert.notDeepEqual(refused(text), [], JSON.stringify(text));
});

test('ordinary Dockerfiles pass: local ADD and COPY, URLs outside ADD, comments', () => {
  for (const text of [
    'FROM b\nADD app.tar.gz /opt/\nCOPY . /src\nRUN wget -q http://x/ -O /s',
    'FROM b\n# ADD http://x/ /s\nRUN echo "ADD http://x/"',
    'FROM b\nCOPY --from=build /out /out\nLABEL url=http://x/\nENV U=http://x/',
    'FROM b\nADD ["a b.txt", "/dst/"]',
    'FROM b\nCOPY $SRC /dst',
    '# escape=`\nFROM b\nRUN echo a `\n  b',
  ])
    assert.deepEqual(refused(text), [], JSON.stringify(text));
});

test('the refusal names the line and the source', () => {
  const r = refused('FROM b\n\nRUN true\nADD http://127.0.0.1:1/ /s');
  assert.equal(r.length, 1);
  assert.match(r[0] ?? '', /^line 4: ADD http:\/\/127\.0\.0\.1:1\/: the daemon would download it/);
});

test('base images: stages and scratch are not bases; variables expand from global ARGs and build args', () => {
  assert.deepEqual(
    readDockerfile(
      'ARG V=1\nFROM --platform=linux/amd64 golang:1.22 AS build\nFROM build AS test\nFROM scratch\nFROM alpine:$V\nFROM reg:5000/team/app\n',
    ).bases,
    ['golang:1.22', 'alpine:1', 'reg:5000/team/app'],
  );
  const text =
    'ARG BASE="base:1" REG\nARG TAG\nFROM ${REG:-reg.local}/${BASE}\nFROM app:${TAG:-dev}\nARG LATE=x\nFROM z:$LATE\n';
  assert.deepEqual(readDockerfile(text).bases, ['reg.local/base:1', 'app:dev', 'z:']);
  assert.deepEqual(readDockerfile(text, { BASE: 'other:2', REG: 'r:5000', TAG: '7', LATE: 'y' }).bases, [
    'r:5000/other:2',
    'app:7',
    'z:',
  ]);
  assert.deepEqual(
    instructions('FROM a\nRUN a \\\n  b\n# c\nCMD d').map((i) => [i.keyword, i.line]),
    [
      ['from', 1],
      ['run', 2],
      ['cmd', 5],
    ],
  );
});

test('COPY --from an image is a base; a stage or an index is not; berth labels are refused', () => {
  const df =
    'FROM a AS one\nCOPY --from=one /x /x\nCOPY --from=0 /x /x\nCOPY --chown=1 --from=reg:5000/tool:2 /t /t\nCOPY --from=later /y /y\nFROM b AS later\n';
  // `one` is the stage being built there: the builder reads it as an image.
  assert.deepEqual(readDockerfile(df).bases, ['a', 'one', 'reg:5000/tool:2', 'later', 'b']);
  for (const bad of [
    'FROM a\nCOPY --from=$X /x /x\n',
    'FROM a\nCOPY --from="img" /x /x\n',
    'FROM a\nONBUILD COPY --from=img /x /x\n',
    'FROM a\nLABEL io.berth.run=x\n',
    'FROM a\nLABEL "io\\.berth\\.role"=dind\n',
    'FROM a\nLABEL ${K}=v\n',
    'FROM a\nONBUILD LABEL io.berth.bench=1\n',
    // An index of no stage ended before: dockerd might read it as an image name.
    'FROM a\nCOPY --from=0 /x /x\n',
    'FROM a\nFROM b\nCOPY --from=5 /x /x\n',
  ])
    assert.ok(readDockerfile(bad).refusals.length > 0, bad);
  assert.deepEqual(readDockerfile('FROM a\nLABEL version=$V other="x y"\n').refusals, []);
  assert.deepEqual(readDockerfile('FROM a\nFROM b\nCOPY --from=0 /x /x\n').refusals, []);
  assert.ok(triggerRefusals('img', ['LABEL io.berth.role=dind']).length > 0);
});

test('flags are read only when written plainly: a quoted flag cannot hide the word after it', () => {
  for (const bad of [
    'FROM --pl"atform"=linux/amd64${x:+" berth-local/busybox "} real\n',
    "FROM --platform='a b' decoy real\n",
    'FROM --platform=x\\ decoy real\n',
    'FROM a\nCOPY --f"rom"=img /x /x\n',
    'FROM a\nCOPY --fr\\om=img /x /x\n',
    'FROM a\nONBUILD COPY --f"rom"=img /x /x\n',
    'FROM --platform=x\tdecoy real\n',
  ])
    assert.ok(readDockerfile(bad).refusals.length > 0, bad);
  assert.deepEqual(readDockerfile('FROM --platform=$BUILDPLATFORM golang:1 AS b\n').refusals, []);
  // A stage's name is known once the stage ended: within it, it names an image.
  assert.deepEqual(readDockerfile('FROM a AS self\nCOPY --from=self /x /x\n').bases, ['a', 'self']);
  assert.deepEqual(readDockerfile('FROM a AS one\nFROM b\nCOPY --from=one /x /x\n').bases, ['a', 'b']);
});

test("a base image's ONBUILD triggers are read like Dockerfile lines", () => {
  assert.equal(triggerRefusals('base:1', ['ADD http://x/ /s', 'RUN true']).length, 1);
  assert.deepEqual(triggerRefusals('base:1', ['ADD . /src', 'COPY a b']), []);
  // dockerd parses a trigger as a Dockerfile: comment lines dropped, continuations joined. A
  // trigger of more than one line (a commit's config can hold one) is refused, not read as one.
  for (const t of ['# x\nADD http://x/ /s', 'A\\\nDD http://x/ /s', 'ADD a b\rADD http://x/ /s'])
    assert.match(triggerRefusals('base:1', [t]).join(), /spans lines/, JSON.stringify(t));
  // The byte-level flag reading (below) holds for triggers too.
  assert.match(triggerRefusals('base:1', ['ADD --chown=rootŅhttp://x/ /s']).join(), /non-ASCII/);
});

test('red-team pass 4: flags read byte by byte, FROM names berth cannot expand, ARG defaults', () => {
  // dockerd ends a flag word at a single byte 0x85 or 0xA0 (Go's unicode.IsSpace on a byte), also
  // inside a UTF-8 sequence (Ņ is C5 85): the URL after it is the source. ADD, COPY, FROM and
  // ONBUILD are taken in ASCII only.
  for (const text of [
    'FROM b\nADD --chown=0:0\ufffdhttp://x/ /s',
    'FROM b\nADD --chown=rootŅhttp://x/ /s',
    'FROM b\nCOPY --from=aà /x /y',
    'FROM --platform=linux/amd64\ufffdonb\n',
    'FROM b\nONBUILD ADD --chown=rootŅhttp://x/ /s',
  ])
    assert.match(refused(text).join(), /non-ASCII/, JSON.stringify(text));
  // Elsewhere non-ASCII is text, as it always was.
  assert.deepEqual(refused('FROM b\nLABEL maintainer="José"\nRUN echo ñandú à la carte\n'), []);
  // dockerd takes quotes and escapes out of a FROM name; berth does not guess: refused.
  for (const text of ['FROM "onb"\n', 'FROM on\\b\n', "FROM o'n'b\n", 'FROM $1\n', 'FROM ${A-x}\n'])
    assert.match(refused(text).join(), /written plainly/, JSON.stringify(text));
  // An ARG default is expanded from the ARGs before it, as dockerd expands it.
  assert.deepEqual(readDockerfile('ARG A=onb\nARG B=$A\nARG C=${B}:1\nFROM $C\n').bases, ['onb:1']);
  // Pass 5: dockerd's builtin proxy args expand in ARG defaults and FROM, declared or not; a
  // FROM that expands to nothing is refused, not skipped.
  assert.deepEqual(readDockerfile('ARG B=$HTTP_PROXY\nFROM $B\n', { HTTP_PROXY: 'onb' }).bases, ['onb']);
  assert.match(refused('ARG B\nFROM $B\n').join(), /no image name/);
  // A stage's platform is reported with its base, expanded; one berth cannot read is refused.
  assert.deepEqual(readDockerfile('ARG P=linux/arm64\nFROM --platform=$P b\n').platforms, [
    ['b', 'linux/arm64'],
  ]);
  assert.match(refused('FROM --platform="linux/arm64" b\n').join(), /platform only when/);
});

/** The gate's output for a context sent in pieces, and the Dockerfile versions its check saw. */
async function gate(context: Buffer, refuse?: Error, option: string | null = null) {
  const seen: string[] = [];
  const g = new ContextGate(dockerfilePaths(option), (versions) => {
    seen.push(...versions.map((v) => v.toString()));
    return Promise.resolve(refuse);
  });
  const pieces = Array.from({ length: Math.ceil(context.length / 700) }, (_, i) =>
    context.subarray(i * 700, i * 700 + 700),
  );
  const out = buffer(g);
  const sent = pipeline(Readable.from(pieces), g);
  return {
    out: await out.catch(() => undefined),
    sent: await sent.then(
      () => undefined,
      (e: unknown) => e,
    ),
    seen,
    g,
  };
}

test('the gate passes a context on as a plain tar, its end only after the check', async () => {
  const tar = Buffer.concat([entry('x', 'hello'), entry('Dockerfile', 'FROM b\n'), END]);
  const plain = await gate(tar);
  assert.equal(plain.sent, undefined);
  assert.deepEqual(plain.seen, ['FROM b\n']);
  assert.ok(plain.out?.equals(tar), 'the same bytes, end block included');
  // A gzip context goes on decompressed.
  const zipped = await gate(gzipSync(tar));
  assert.ok(zipped.out?.equals(tar));
  // The docker CLI's `-f -` contexts end without the last entry's padding or an end block: the
  // gate completes them as Go's reader reads them.
  const cut = Buffer.concat([entry('Dockerfile', 'FROM b\n'), entry('.dockerfile.abc', 'FROM c\n')]);
  const short = cut.subarray(0, cut.length - (512 - 7));
  const completed = await gate(short, undefined, '.dockerfile.abc');
  assert.deepEqual(completed.seen, ['FROM c\n']);
  assert.ok(completed.out?.equals(Buffer.concat([cut, END])));
  const check = new LoadScanner();
  check.write(completed.out ?? Buffer.alloc(0));
  assert.equal(check.end().problem, undefined);
});

test('a refused or unreadable context never gets its end block', async () => {
  const tar = Buffer.concat([entry('Dockerfile', 'FROM b\n'), END]);
  const no = await gate(tar, new Error('refused'));
  assert.ok(no.sent instanceof Error);
  assert.equal(no.g.refused?.message, 'refused');
  for (const [what, context] of [
    [
      'a Dockerfile reached through a link',
      Buffer.concat([entry('d', '', '2', { linkname: '.' }), entry('d/x', 'x'), END]),
    ],
    ['a linked Dockerfile', Buffer.concat([entry('Dockerfile', '', '2', { linkname: 'other' }), END])],
    ['bzip2', Buffer.concat([Buffer.from('BZh91AY&SY'), Buffer.alloc(600)])],
    ['cut in the middle of a header', tar.subarray(0, 300)],
  ] as const) {
    const r = await gate(
      context,
      undefined,
      what === 'a Dockerfile reached through a link' ? 'd/Dockerfile' : null,
    );
    assert.ok(r.sent instanceof Error, what);
    assert.ok(r.g.refused, what);
  }
  // Every version of the Dockerfile in the archive is checked, not only the last.
  const two = await gate(
    Buffer.concat([entry('Dockerfile', 'FROM a\n'), entry('./Dockerfile', 'FROM b\n'), END]),
  );
  assert.deepEqual(two.seen, ['FROM a\n', 'FROM b\n']);
  // Versions are held until the end: a context with too many is refused, not held.
  const many = await gate(
    Buffer.concat([...Array.from({ length: 17 }, () => entry('Dockerfile', 'FROM a\n')), END]),
  );
  assert.ok(many.sent instanceof Error);
  assert.match(many.g.refused?.message ?? '', /more than 16 times/);
  // The lower-case fallback dockerd reads when `Dockerfile` is missing.
  const lower = await gate(Buffer.concat([entry('dockerfile', 'FROM low\n'), END]));
  assert.deepEqual(lower.seen, ['FROM low\n']);
});

test('a gzip context inflates only as fast as its reader takes it (no bomb held in memory)', async () => {
  const size = 256 * 1024 * 1024;
  const zipped = gzipSync(
    Buffer.concat([entry('Dockerfile', 'FROM b\n'), entry('zeros', Buffer.alloc(size)), END]),
  );
  assert.ok(zipped.length < 2 * 1024 * 1024, 'the context is small on the wire');
  const g = new ContextGate(dockerfilePaths(null), () => Promise.resolve(undefined));
  g.end(zipped);
  // Nobody reads for a while: the gate holds a few buffers, not the 256 MiB it would inflate to.
  await new Promise((r) => setTimeout(r, 500));
  assert.ok(g.readableLength < 8 * 1024 * 1024, `held ${g.readableLength} bytes`);
  let total = 0;
  for await (const c of g) total += (c as Buffer).length;
  assert.equal(
    total,
    512 + 512 + size + 1024 + 512 + 1024 - 512 - 512,
    'every byte comes out, end block included',
  );
});

test('red-team pass 17: a context sent in small pieces to a reader that is behind is held back, not buffered', async () => {
  const g = new ContextGate(dockerfilePaths(null), () => Promise.resolve(undefined));
  // dockerd takes the first piece and then reads no more.
  g.pipe(new Writable({ highWaterMark: 16384, write: () => undefined }));
  // Pieces of 15 KiB (headers of empty files), one write per turn of the event loop.
  const piece = Buffer.concat(Array.from({ length: 30 }, (_, i) => header(`f${i}`, 0)));
  let writes = 0;
  while (writes < 1000) {
    writes++;
    if (!g.write(Buffer.from(piece))) break;
    await new Promise((r) => setImmediate(r));
  }
  assert.ok(writes < 20, `the upload is held back after ${writes} writes`);
  await new Promise((r) => setImmediate(r));
  assert.ok(g.readableLength < 4 * piece.length, `the gate holds ${g.readableLength} bytes`);
  g.destroy();
});
