/** Statistics for benchmark samples. Pure. */

export interface Summary {
  n: number;
  median: number;
  p99: number;
  min: number;
  max: number;
  /** Interquartile range: a spread that one outlier does not dominate. */
  iqr: number;
}

export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = sorted[lo] ?? Number.NaN;
  const b = sorted[hi] ?? Number.NaN;
  return a + (b - a) * (pos - lo);
}

export function summarize(samples: readonly number[]): Summary {
  const s = [...samples].filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  return {
    n: s.length,
    median: quantile(s, 0.5),
    p99: quantile(s, 0.99),
    min: s[0] ?? Number.NaN,
    max: s[s.length - 1] ?? Number.NaN,
    iqr: quantile(s, 0.75) - quantile(s, 0.25),
  };
}

/** Least-squares slope of y over x (e.g. RSS bytes per second over a soak). */
export function slope(points: readonly { x: number; y: number }[]): number {
  const n = points.length;
  if (n < 2) return 0;
  const mx = points.reduce((a, p) => a + p.x, 0) / n;
  const my = points.reduce((a, p) => a + p.y, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.x - mx) * (p.y - my);
    den += (p.x - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

/** Formats a number with a sensible number of significant digits. */
export function fmt(x: number, digits = 3): string {
  if (!Number.isFinite(x)) return '–';
  if (x === 0) return '0';
  const abs = Math.abs(x);
  if (abs >= 1000) return x.toFixed(0);
  return Number(x.toPrecision(digits)).toString();
}

/**
 * The median of xs[k] − base[k] over the indexes both have: the typical difference between two
 * series taken side by side (sample k of each in the same cycle).
 */
export function medianDifference(xs: readonly number[], base: readonly number[]): number {
  const n = Math.min(xs.length, base.length);
  return summarize(Array.from({ length: n }, (_, k) => (xs[k] ?? NaN) - (base[k] ?? NaN))).median;
}

/**
 * A distribution-free confidence interval for the median of `samples`: the order statistics
 * x(k) and x(n+1-k) with the largest k for which P(Binomial(n, 1/2) < k) ≤ (1 - confidence) / 2,
 * so that the interval holds the true median with at least `confidence` whatever the samples'
 * distribution (they must be independent). Undefined when there are too few samples for any
 * interval at that confidence (at 95%: fewer than 6).
 */
export function medianInterval(
  samples: readonly number[],
  confidence = 0.95,
): { low: number; high: number; coverage: number } | undefined {
  const s = [...samples].filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  const n = s.length;
  const tail = (1 - confidence) / 2;
  // below[k] = P(B < k) for B ~ Binomial(n, 1/2), built from the probabilities of each count.
  let p = 0.5 ** n;
  let below = 0;
  let k = 0;
  for (let i = 0; i <= n; i++) {
    if (below + p > tail) break;
    below += p;
    k = i + 1;
    p = (p * (n - i)) / (i + 1);
  }
  if (k === 0 || n === 0) return undefined;
  const low = s[k - 1];
  const high = s[n - k];
  if (low === undefined || high === undefined) return undefined;
  return { low, high, coverage: 1 - 2 * below };
}

/**
 * Pairs two contenders' samples taken in the same round (the driver records each sample's round)
 * and returns `combine(other, base)` for each round both have, in round order.
 */
export function paired(
  base: { samples: readonly number[]; rounds?: readonly number[] | undefined },
  other: { samples: readonly number[]; rounds?: readonly number[] | undefined },
  combine: (other: number, base: number) => number,
): number[] {
  if (!base.rounds || !other.rounds) return [];
  const byRound = new Map<number, number>();
  base.rounds.forEach((r, i) => {
    const v = base.samples[i];
    if (v !== undefined) byRound.set(r, v);
  });
  const out: { r: number; v: number }[] = [];
  other.rounds.forEach((r, i) => {
    const b = byRound.get(r);
    const v = other.samples[i];
    if (b !== undefined && v !== undefined) out.push({ r, v: combine(v, b) });
  });
  return out.sort((a, b) => a.r - b.r).map((x) => x.v);
}
