/** Renders benchmark results as Markdown and JSON. Pure. */
import { fmt, summarize } from './stats.js';
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
  /** Median relative to the raw socket's median for the same metric (undefined without raw). */
  ratio: number | undefined;
}

export function rows(report: BenchReport): Row[] {
  const raw = new Map<string, number>();
  for (const m of report.measurements) {
    if (m.contender === 'raw') raw.set(`${m.scenario}/${m.metric}`, summarize(m.samples).median);
  }
  return report.measurements.map((m) => {
    const s = summarize(m.samples);
    const base = raw.get(`${m.scenario}/${m.metric}`);
    return {
      scenario: m.scenario,
      metric: m.metric,
      unit: m.unit,
      contender: m.contender,
      median: s.median,
      iqr: s.iqr,
      n: s.n,
      ratio: base === undefined || base === 0 ? undefined : s.median / base,
    };
  });
}

export function toMarkdown(report: BenchReport, titles: Record<string, string>): string {
  const out: string[] = [];
  const m = report.machine;
  out.push('# berth benchmark');
  out.push('');
  out.push(
    `${report.date} · ${m.cores} cores · ${m.memoryGiB.toFixed(1)} GiB · engine ${m.engineVersion} (API ${m.apiVersion}, ${m.storageDriver}) · kernel ${m.kernel} · node ${m.node} · ${report.mode} mode, ${report.reps} repetition(s), contenders alternated within each repetition`,
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
    'Each cell: median ± half the interquartile range over the repetitions, then in brackets the ratio to the raw socket measured in the same run (and, for times, the difference in ms). Times: lower is better; throughputs: higher is better.',
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
        const base = here.find((x) => x.metric === metric && x.contender === 'raw');
        const delta =
          r.unit === 'ms' && base && Number.isFinite(base.median)
            ? `, ${r.median >= base.median ? '+' : '−'}${fmt(Math.abs(r.median - base.median))} ms`
            : '';
        const ratio =
          c !== 'raw' && r.ratio !== undefined && Number.isFinite(r.ratio)
            ? ` (${fmt(r.ratio)}×${delta})`
            : '';
        return `${fmt(r.median)}${spread}${ratio}`;
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
