import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LineSplitter } from './lines.js';

const split = (chunks: (string | Buffer)[], max?: number): string[] => {
  const out: string[] = [];
  const s = new LineSplitter((l) => out.push(l), max);
  for (const c of chunks) s.push(Buffer.isBuffer(c) ? c : Buffer.from(c));
  s.end();
  return out;
};

test('lines: cut at newlines wherever the chunks end; CRLF, empty lines and a last line without newline kept', () => {
  assert.deepEqual(split(['a\nb', 'c\r\n\nd']), ['a', 'bc', '', 'd']);
  assert.deepEqual(split(['x\n']), ['x']);
  assert.deepEqual(split([]), []);
  const text = 'one\ntwo\r\nthree\n\nfour';
  for (let cut = 0; cut <= text.length; cut++)
    assert.deepEqual(
      split([text.slice(0, cut), text.slice(cut)]),
      ['one', 'two', 'three', '', 'four'],
      `cut ${cut}`,
    );
});

test('lines: a character cut between chunks is decoded whole', () => {
  const bytes = Buffer.from('é€😀\n');
  for (let cut = 0; cut <= bytes.length; cut++)
    assert.deepEqual(split([bytes.subarray(0, cut), bytes.subarray(cut)]), ['é€😀'], `cut ${cut}`);
});

test('lines: a line longer than the limit comes in pieces of the limit, held no longer than that', () => {
  const out: string[] = [];
  const s = new LineSplitter((l) => out.push(l), 4);
  s.push(Buffer.from('abcdefghij'));
  assert.deepEqual(out, ['abcd', 'efgh'], 'given out before the newline comes');
  s.push(Buffer.from('k\nxy'));
  s.end();
  assert.deepEqual(out, ['abcd', 'efgh', 'ijk', 'xy']);
  assert.deepEqual(split(['abcdefgh\n'], 4), ['abcd', 'efgh']);
});

test('lines: many megabytes without a newline are cut in linear time (no re-scan of what is held)', () => {
  const out: string[] = [];
  const s = new LineSplitter((l) => out.push(l));
  const chunk = Buffer.alloc(64 * 1024, 'a');
  for (let i = 0; i < 512; i++) s.push(chunk); // 32 MiB
  s.end();
  assert.equal(out.length, 512);
  assert.ok(out.every((l) => l.length === 64 * 1024));
});

test('lines: a secret across a cut of a long line is masked whole, never in halves (red-team pass 23)', () => {
  const secret = 'S3CR3T-VALUE';
  const mask = (t: string) => t.split(secret).join('***');
  for (let at = 0; at < 12; at++) {
    const out: string[] = [];
    const s = new LineSplitter((l) => out.push(l), 8, mask, secret.length);
    // The secret starts `at` characters before the first cut, and arrives a character at a time.
    const text = `${'a'.repeat(8 - Math.min(at, 8))}${secret}${'b'.repeat(20)}`;
    for (const ch of text) s.push(Buffer.from(ch));
    s.end();
    const all = out.join('');
    assert.ok(
      !all.includes('S3CR') && !all.includes('VALUE') && !all.includes('CR3T'),
      `at ${at}: ${JSON.stringify(out)}`,
    );
    assert.ok(all.includes('***'), `at ${at}`);
  }
});
