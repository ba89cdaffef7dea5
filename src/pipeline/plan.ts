/** The job DAG: topological layers and `--job` selection. */
import { BerthError } from '../common/index.js';
import type { JobSpec, Pipeline } from './types.js';

export interface Plan {
  /** Selected jobs in file order. */
  jobs: JobSpec[];
  /** Jobs in topological layers: every job's needs are in earlier layers. */
  layers: string[][];
  /** For each selected job, the jobs it needs. */
  dependencies: Record<string, string[]>;
}

/**
 * Plans a (validated, acyclic) pipeline. `only` selects jobs by name — a matrix job's base name
 * selects all its expansions — and pulls in everything they need, transitively.
 */
export function plan(pipeline: Pipeline, opts: { only?: readonly string[] } = {}): Plan {
  const byName = new Map(pipeline.jobs.map((j) => [j.name, j]));
  let selected = new Set(pipeline.jobs.map((j) => j.name));
  if (opts.only && opts.only.length > 0) {
    selected = new Set();
    const pending: string[] = [];
    for (const want of opts.only) {
      const hits = pipeline.jobs.filter((j) => j.name === want || j.base === want).map((j) => j.name);
      if (hits.length === 0) {
        throw new BerthError('BERTH_USAGE', `no job named \`${want}\` in ${pipeline.file}`, {
          hint: `jobs: ${pipeline.jobs.map((j) => j.name).join(', ')}`,
        });
      }
      pending.push(...hits);
    }
    while (pending.length > 0) {
      const n = pending.pop() ?? '';
      if (selected.has(n)) continue;
      selected.add(n);
      pending.push(...(byName.get(n)?.needs ?? []));
    }
  }
  const jobs = pipeline.jobs.filter((j) => selected.has(j.name));
  const depth = new Map<string, number>();
  const depthOf = (name: string, trail: Set<string>): number => {
    const known = depth.get(name);
    if (known !== undefined) return known;
    if (trail.has(name)) throw new BerthError('PIPELINE_INVALID', `cycle in needs through \`${name}\``);
    trail.add(name);
    const d = Math.max(-1, ...(byName.get(name)?.needs ?? []).map((n) => depthOf(n, trail))) + 1;
    trail.delete(name);
    depth.set(name, d);
    return d;
  };
  const layers: string[][] = [];
  for (const j of jobs) {
    const d = depthOf(j.name, new Set());
    (layers[d] ??= []).push(j.name);
  }
  return {
    jobs,
    layers: layers.filter((l) => l.length > 0),
    dependencies: Object.fromEntries(jobs.map((j) => [j.name, [...j.needs]])),
  };
}
