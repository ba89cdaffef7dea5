/**
 * A pipeline of 8 parallel jobs through the runner, in the docker mode that matches each
 * contender (raw socket → host, guard → guard, berth dind → dind): wall time, and how many jobs
 * passed (a collision between jobs shows as a failed job).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseRunSpec, runPipeline } from '../runner/index.js';
import { benchLabels } from './reap.js';
import type { DockerMode } from '../runner/index.js';
import type { Scenario } from './types.js';

const MODES: Partial<Record<string, DockerMode>> = { raw: 'host', guard: 'guard', 'dind-berth': 'dind' };

export function parallelPipeline(mode: DockerMode, jobs = 8): string {
  const lines = ['image: berth-local/tools', `docker: ${mode}`, 'jobs:'];
  for (let i = 1; i <= jobs; i++) {
    lines.push(`  job${i}:`, '    steps:', '      - docker version --format "{{.Server.APIVersion}}"');
    if (mode !== 'dind')
      lines.push('      - docker run --rm --network none berth-local/busybox echo hello from $BERTH_RUN_ID');
  }
  return `${lines.join('\n')}\n`;
}

export const pipeline8: Scenario = {
  id: 'pipeline',
  title: 'A pipeline of 8 parallel jobs (berth run, in the matching docker mode)',
  applies: (c) => MODES[c.id] !== undefined,
  metrics: { wall: { unit: 'ms', better: 'lower' }, passed: { unit: 'count', better: 'higher' } },
  async run(c) {
    const mode = MODES[c.id] ?? 'none';
    const ws = mkdtempSync(join(tmpdir(), 'berth-bench-pipeline-'));
    try {
      const spec = parseRunSpec(parallelPipeline(mode), join(ws, 'berth.yml'));
      const t0 = performance.now();
      const out = await runPipeline({
        spec,
        parallel: 8,
        storeDir: join(ws, '.berth'),
        labels: benchLabels(),
        reapFirst: false,
      });
      return { wall: performance.now() - t0, passed: out.jobs.filter((j) => j.status === 'passed').length };
    } finally {
      rmSync(ws, { recursive: true, force: true });
    }
  },
};
