import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fmt, medianDifference, medianInterval, paired, quantile, slope, summarize } from './stats.js';

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

test('the median interval takes the order statistics the binomial tails allow', () => {
  // n = 20: P(B <= 5) = 0.0207 <= 0.025 < P(B <= 6) = 0.0577, so x(6) and x(15).
  const twenty = Array.from({ length: 20 }, (_, i) => 20 - i);
  const ci = medianInterval(twenty);
  assert.equal(ci?.low, 6);
  assert.equal(ci?.high, 15);
  assert.ok(Math.abs((ci?.coverage ?? 0) - (1 - 2 * 0.020694732666015625)) < 1e-12);
  // n = 6 is the least that allows 95%: the extremes, coverage 1 - 2/64.
  assert.deepEqual(medianInterval([3, 1, 2, 6, 5, 4]), { low: 1, high: 6, coverage: 1 - 2 / 64 });
  assert.equal(medianInterval([1, 2, 3, 4, 5]), undefined);
  assert.equal(medianInterval([]), undefined);
  // A lower confidence allows an interval from fewer samples.
  assert.deepEqual(medianInterval([1, 2, 3, 4, 5], 0.9)?.low, 1);
});

test('the median interval holds the true median at least as often as it claims', () => {
  // A skewed distribution (exponential, median ln 2), drawn with a seeded generator.
  let seed = 12345;
  const uniform = (): number => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return (seed + 0.5) / 2147483648;
  };
  for (const n of [6, 9, 15, 25]) {
    let held = 0;
    const trials = 4000;
    let claimed = 1;
    for (let t = 0; t < trials; t++) {
      const xs = Array.from({ length: n }, () => -Math.log(uniform()));
      const ci = medianInterval(xs);
      assert.ok(ci);
      claimed = ci.coverage;
      if (ci.low <= Math.LN2 && Math.LN2 <= ci.high) held++;
    }
    assert.ok(claimed >= 0.95);
    // Three standard errors of slack for the simulation itself.
    const se = Math.sqrt((claimed * (1 - claimed)) / trials);
    assert.ok(held / trials >= claimed - 3 * se, `n=${n}: held ${held}/${trials}, claimed ${claimed}`);
  }
});

test('pairing matches samples by round and skips rounds one side lacks', () => {
  const base = { samples: [100, 200, 300], rounds: [0, 1, 2] };
  const other = { samples: [90, 330], rounds: [2, 0] };
  assert.deepEqual(
    paired(base, other, (o, b) => o / b),
    [330 / 100, 90 / 300],
  );
  assert.deepEqual(
    paired({ samples: [1, 2] }, other, (o, b) => o - b),
    [],
  );
});

test('the median difference pairs samples by index, over the indexes both series have', () => {
  // Differences 1, 3, 2 (the fourth sample has no partner): median 2. The difference of the two
  // medians would be 25 − 11 = 14.
  assert.equal(medianDifference([11, 23, 32, 99], [10, 20, 30]), 2);
  assert.ok(Number.isNaN(medianDifference([], [1])));
});
