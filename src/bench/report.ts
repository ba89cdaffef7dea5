/** Renders benchmark results as Markdown and JSON. Pure. */
import { fmt, medianInterval, paired, summarize } from './stats.js';
import type { ContenderId, Measurement } from './types.js';

export interface MachineInfo {
  cores: number;
  memoryGiB: number;
  engineVersion: string;
  apiVersion: string;
  storageDriver: string;
  kernel: string;
  node: string;
}

export interface BenchReport {
  date: string;
  machine: MachineInfo;
  mode: 'full' | 'quick';
  reps: number;
  contenders: { id: ContenderId; title: string; note?: string }[];
  skipped: { id: string; reason: string }[];
  /** Repetitions that failed once and were run again (their second result is the one kept). */
  retried?: { id: string; reason: string }[];
  measurements: Measurement[];
  notes: string[];
}

/** What could not be measured (or had to be measured again), one `id (reason)` each. */
export function listProblems(items: readonly { id: string; reason: string }[]): string {
  return items.map((s) => `${s.id} (${s.reason})`).join('; ');
}

export interface Row {
  scenario: string;
  metric: string;
  unit: string;
  contender: ContenderId;
  median: number;
  iqr: number;
  n: number;
  /**
   * Relative to the raw socket (undefined without raw): the median of the ratios of samples taken
   * in the same round, where the driver recorded rounds; else the ratio of the two medians.
   */
  ratio: number | undefined;
  /** The same for the difference (this minus raw), in the metric's unit. */
  delta: number | undefined;
  /** Rounds in which both this contender and the raw socket were measured. */
  pairs: number;
  /** The metric is itself a difference from the raw socket (Measurement.versus). */
  versus?: 'raw';
  /** 95% distribution-free intervals for the median ratio and difference (from 6 pairs). */
  ratioInterval: { low: number; high: number } | undefined;
  deltaInterval: { low: number; high: number } | undefined;
}

export function rows(report: BenchReport): Row[] {
  const raw = new Map<string, Measurement>();
  for (const m of report.measurements) if (m.contender === 'raw') raw.set(`${m.scenario}/${m.metric}`, m);
  return report.measurements.map((m) => {
    const s = summarize(m.samples);
    const base = raw.get(`${m.scenario}/${m.metric}`);
    const row: Row = {
      scenario: m.scenario,
      metric: m.metric,
      unit: m.unit,
      contender: m.contender,
      median: s.median,
      iqr: s.iqr,
      n: s.n,
      ratio: undefined,
      delta: undefined,
      pairs: 0,
      ratioInterval: undefined,
      deltaInterval: undefined,
    };
    if (m.versus === 'raw') {
      // Already differences from the raw socket, request by request: their median over the rounds.
      row.versus = 'raw';
      row.delta = s.median;
      row.pairs = s.n;
      row.deltaInterval = medianInterval(m.samples);
      return row;
    }
    if (!base) return row;
    const ratios = paired(base, m, (x, b) => x / b).filter((r) => Number.isFinite(r));
    const deltas = paired(base, m, (x, b) => x - b).filter((d) => Number.isFinite(d));
    if (ratios.length > 0) {
      row.pairs = ratios.length;
      row.ratio = summarize(ratios).median;
      row.delta = summarize(deltas).median;
      row.ratioInterval = medianInterval(ratios);
      row.deltaInterval = medianInterval(deltas);
      return row;
    }
    const b = summarize(base.samples).median;
    row.ratio = b === 0 ? undefined : s.median / b;
    row.delta = s.median - b;
    return row;
  });
}

/** A signed difference as the report prints it: +0.116, −0.02. */
function signed(x: number): string {
  return `${x >= 0 ? '+' : '−'}${fmt(Math.abs(x))}`;
}

export function toMarkdown(report: BenchReport, titles: Record<string, string>): string {
  const out: string[] = [];
  const m = report.machine;
  out.push('# berth benchmark');
  out.push('');
  out.push(
    `${report.date} · ${m.cores} cores · ${m.memoryGiB.toFixed(1)} GiB · engine ${m.engineVersion} (API ${m.apiVersion}, ${m.storageDriver}) · kernel ${m.kernel} · node ${m.node} · ${report.mode} mode, ${report.reps} repetition(s), each contender once per round in a new random order`,
  );
  out.push('');
  out.push(
    'Contenders: ' +
      report.contenders.map((c) => `**${c.id}** — ${c.title}${c.note ? ` (${c.note})` : ''}`).join('; ') +
      '.',
  );
  if (report.skipped.length) {
    out.push('');
    out.push(`Not measured: ${listProblems(report.skipped)}.`);
  }
  if (report.retried?.length) {
    out.push('');
    out.push(`Failed once, then run again: ${listProblems(report.retried)}.`);
  }
  out.push('');
  out.push(
    "Each cell: median ± half the interquartile range over the rounds; then, in parentheses, the comparison with the raw socket in the same run: the median over the rounds of this contender's sample divided by (for times, also minus) the raw socket's sample of the same round, and in square brackets a 95% confidence interval for that median (distribution-free: order statistics of the per-round values; given from 6 rounds on). A metric named *_added_* is itself a difference from the raw socket, request by request (each request paired with the raw socket's of the same cycle): its cell gives the median over the rounds of each round's median difference, and the interval. Times: lower is better; throughputs: higher is better.",
  );
  const all = rows(report);
  const scenarios = [...new Set(all.map((r) => r.scenario))];
  for (const sc of scenarios) {
    const here = all.filter((x) => x.scenario === sc);
    const contenders = [...new Set(here.map((r) => r.contender))];
    const metrics = [...new Set(here.map((r) => r.metric))];
    out.push('');
    out.push(`## ${titles[sc] ?? sc}`);
    out.push('');
    out.push(`| metric | ${contenders.join(' | ')} |`);
    out.push(`| --- |${contenders.map(() => ' ---: |').join('')}`);
    for (const metric of metrics) {
      const unit = here.find((r) => r.metric === metric)?.unit ?? '';
      const cells = contenders.map((c) => {
        const r = here.find((x) => x.metric === metric && x.contender === c);
        if (!r || r.n === 0 || !Number.isFinite(r.median)) return '–';
        const spread = r.n > 1 ? ` ±${fmt(r.iqr / 2)}` : '';
        if (r.versus === 'raw') {
          const di = r.deltaInterval;
          return `${signed(r.delta ?? r.median)} ${r.unit}${di ? ` [${signed(di.low)}, ${signed(di.high)}]` : ''}`;
        }
        if (c === 'raw' || r.ratio === undefined || !Number.isFinite(r.ratio))
          return `${fmt(r.median)}${spread}`;
        // Times: the difference is what the targets name, so it gets the interval; else the ratio.
        const ms = r.unit === 'ms' && r.delta !== undefined && Number.isFinite(r.delta);
        const ri = r.ratioInterval;
        const di = r.deltaInterval;
        const compared = ms
          ? `${fmt(r.ratio)}×, ${signed(r.delta ?? 0)} ms${di ? ` [${signed(di.low)}, ${signed(di.high)}]` : ''}`
          : `${fmt(r.ratio)}×${ri ? ` [${fmt(ri.low)}–${fmt(ri.high)}]` : ''}`;
        return `${fmt(r.median)}${spread} (${compared})`;
      });
      out.push(`| ${metric} (${unit}) | ${cells.join(' | ')} |`);
    }
  }
  if (report.notes.length) {
    out.push('');
    out.push('## Notes');
    out.push('');
    for (const n of report.notes) out.push(`- ${n}`);
  }
  out.push('');
  return out.join('\n');
}
