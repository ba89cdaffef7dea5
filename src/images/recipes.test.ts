import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  cacheKey,
  debootstrapArgs,
  dindChanges,
  parseAptSources,
  parseLdd,
  pickMirror,
  toolsDockerfile,
} from './recipes.js';

test('ldd output becomes the list of files to copy, loader included', () => {
  const out = [
    '\tlinux-vdso.so.1 (0x00007fc172d7d000)',
    '\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fc16fe1e000)',
    '\t/lib64/ld-linux-x86-64.so.2 (0x00007fc172d7f000)',
    '\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)',
  ].join('\n');
  assert.deepEqual(parseLdd(out), ['/lib/x86_64-linux-gnu/libc.so.6', '/lib64/ld-linux-x86-64.so.2']);
});

test('deb822 and one-line apt sources both give the mirror for the suite', () => {
  const deb822 = [
    'Types: deb',
    '# comment',
    'URIs: http://deb.debian.org/debian',
    'Suites: bookworm bookworm-updates',
    'Components: main',
    '',
    'Types: deb',
    'URIs: http://deb.debian.org/debian-security',
    'Suites: bookworm-security',
    'Components: main',
  ].join('\n');
  assert.equal(pickMirror(parseAptSources(deb822, true), 'bookworm'), 'http://deb.debian.org/debian');
  const oneLine = 'deb [arch=amd64] http://mirror.example/debian bookworm main contrib\n# deb http://x y z\n';
  assert.deepEqual(parseAptSources(oneLine, false), [
    { uri: 'http://mirror.example/debian', suites: ['bookworm'], components: ['main', 'contrib'] },
  ]);
  assert.equal(pickMirror(parseAptSources(oneLine, false), 'trixie'), undefined);
  assert.deepEqual(parseAptSources('Types: deb-src\nURIs: http://x\nSuites: bookworm\n', true), []);
});

test('cache keys change with any input and are stable otherwise', () => {
  assert.equal(cacheKey(['a', 'b']), cacheKey(['a', 'b']));
  assert.notEqual(cacheKey(['a', 'b']), cacheKey(['a', 'c']));
  assert.notEqual(cacheKey(['ab']), cacheKey(['a', 'b']));
});

test('recipes: debootstrap minbase with docker.io and iptables; the key travels as a label', () => {
  const args = debootstrapArgs('bookworm', '/tmp/root', 'http://m/debian');
  assert.equal(args[0], '--variant=minbase');
  assert.match(args[1] ?? '', /^--include=docker\.io,iptables,ca-certificates/);
  assert.ok(dindChanges('k1').includes('LABEL io.berth.image-key=k1'));
  assert.match(toolsDockerfile(['/usr/bin/docker']), /COPY rootfs\/usr\/bin\/docker \/usr\/bin\/docker/);
});
