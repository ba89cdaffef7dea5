import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fmt, quantile, slope, summarize } from './stats.js';

test('quantiles interpolate between ranks', () => {
  assert.equal(quantile([1, 2, 3, 4], 0.5), 2.5);
  assert.equal(quantile([10], 0.99), 10);
  assert.ok(Number.isNaN(quantile([], 0.5)));
});

test('summaries ignore non-finite samples and report spread', () => {
  const s = summarize([5, 1, Number.NaN, 3, 2, 4]);
  assert.deepEqual(
    { n: s.n, median: s.median, min: s.min, max: s.max, iqr: s.iqr },
    { n: 5, median: 3, min: 1, max: 5, iqr: 2 },
  );
});

test('slope of a line is its gradient; of a flat series, zero', () => {
  assert.equal(slope([0, 1, 2, 3].map((x) => ({ x, y: 2 * x + 7 }))), 2);
  assert.equal(slope([0, 1, 2].map((x) => ({ x, y: 42 }))), 0);
  assert.equal(slope([{ x: 1, y: 1 }]), 0);
});

test('numbers print with three significant digits', () => {
  assert.equal(fmt(0.123456), '0.123');
  assert.equal(fmt(12345.6), '12346');
  assert.equal(fmt(Number.NaN), '–');
});
