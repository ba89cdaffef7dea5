/**
 * dind benchmark (not a test): time from `up` to ready (p50 of 5, warm image), and one Dockerfile
 * build in a fresh nested daemon vs with a warm `--cache`, vs the same build through berth guard on
 * the shared daemon. `benchDind(opts)` answers Measurements for the bench driver; run this file
 * directly (`node --import tsx bench/dind.ts`) for a standalone summary.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { startDind, purgeCache } from '../src/dind/index.js';
import type { DindHandle } from '../src/dind/index.js';
import { createGuard } from '../src/guard/index.js';
import { DockerClient } from '../src/engine/index.js';
import { summarize } from '../src/bench/index.js';
import type { Measurement } from '../src/bench/index.js';

export interface DindBenchOptions {
  /** Repetitions per measurement (5 by default). */
  reps?: number;
  /** Image for the nested daemons (default: what startDind picks). */
  image?: string;
  /** Labels on everything the bench creates. */
  labels?: Record<string, string>;
  log?: (line: string) => void;
}

const DOCKER = '/usr/bin/docker';
const HOST = 'unix:///var/run/docker.sock';
const DOCKERFILE = [
  'FROM berth-local/busybox',
  'RUN dd if=/dev/urandom of=/blob1 bs=1M count=16 2>/dev/null',
  'RUN for i in $(seq 1 2000); do echo "line $i" >> /lines; done',
  'RUN dd if=/dev/urandom of=/blob2 bs=1M count=16 2>/dev/null && sha256sum /blob1 /blob2 > /sums',
  'CMD ["cat", "/sums"]',
  '',
].join('\n');

function loadBusybox(dockerHost: string): void {
  execFileSync(
    'sh',
    ['-c', `${DOCKER} -H ${HOST} save berth-local/busybox | ${DOCKER} -H ${dockerHost} load`],
    {
      stdio: 'ignore',
    },
  );
}

/** Builds asynchronously: the guard serves in this process, so the event loop must stay free. */
function timedBuild(dockerHost: string, ctx: string, tag: string, extra: string[] = []): Promise<number> {
  const t = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(DOCKER, ['-H', dockerHost, 'build', ...extra, '-t', tag, ctx], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(performance.now() - t);
      else reject(new Error(`build failed on ${dockerHost}: ${err}`));
    });
  });
}

/** Runs the dind benchmark; every daemon, volume and image it makes is removed before it returns. */
export async function benchDind(opts: DindBenchOptions = {}): Promise<Measurement[]> {
  const reps = opts.reps ?? 5;
  const log = opts.log ?? (() => undefined);
  const id = randomBytes(3).toString('hex');
  const base = { network: 'none', labels: opts.labels ?? {}, ...(opts.image ? { image: opts.image } : {}) };
  const ctx = mkdtempSync(join(tmpdir(), 'berth-bench-dind-'));
  writeFileSync(join(ctx, 'Dockerfile'), DOCKERFILE);
  const client = new DockerClient();
  const upMs: number[] = [];
  const fresh: number[] = [];
  const warm: number[] = [];
  const guarded: number[] = [];
  const cacheKey = `bench-${id}`;
  try {
    // Warm the image and the privilege probe (once per process), then time up → ready.
    await (await startDind({ ...base, name: `bench-warmup-${id}` })).close();
    for (let i = 0; i < reps; i++) {
      const t = performance.now();
      const h = await startDind({ ...base, name: `bench-up-${id}-${i}` });
      upMs.push(performance.now() - t);
      await h.close();
    }
    log(`dind up→ready p50 ${summarize(upMs).median.toFixed(0)} ms`);
    for (let i = 0; i < reps; i++) {
      const h = await startDind({ ...base, name: `bench-fresh-${id}-${i}` });
      try {
        loadBusybox(h.dockerHost);
        fresh.push(await timedBuild(h.dockerHost, ctx, 'bench:fresh'));
      } finally {
        await h.close();
      }
    }
    for (let i = 0; i <= reps; i++) {
      const h: DindHandle = await startDind({ ...base, name: `bench-warm-${id}-${i}`, cache: cacheKey });
      try {
        if (i === 0) loadBusybox(h.dockerHost);
        const ms = await timedBuild(h.dockerHost, ctx, 'bench:warm');
        if (i > 0) warm.push(ms); // the first build fills the cache
      } finally {
        await h.close();
      }
    }
    const dir = mkdtempSync(join(tmpdir(), 'berth-bench-dind-guard-'));
    const guard = await createGuard({
      tenant: `bench-dind-${id}`,
      listen: join(dir, 'docker.sock'),
      labels: opts.labels ?? {},
    });
    try {
      for (let i = 0; i < reps; i++)
        guarded.push(await timedBuild(guard.address, ctx, `bench-guard-${id}:${i}`, ['--no-cache']));
    } finally {
      await guard.close({ cleanup: true });
      rmSync(dir, { recursive: true, force: true });
    }
  } finally {
    await purgeCache(client, cacheKey).catch(() => undefined);
    client.close();
    rmSync(ctx, { recursive: true, force: true });
  }
  const ratio = summarize(fresh).median / summarize(warm).median;
  return [
    {
      scenario: 'dind-up',
      metric: 'up to ready (warm image)',
      unit: 'ms',
      better: 'lower',
      contender: 'dind-berth',
      samples: upMs,
      note: 'goal: p50 under 1500 ms',
    },
    {
      scenario: 'dind-build',
      metric: 'Dockerfile build, fresh nested daemon',
      unit: 'ms',
      better: 'lower',
      contender: 'dind-berth',
      samples: fresh,
    },
    {
      scenario: 'dind-build',
      metric: 'Dockerfile build, warm --cache',
      unit: 'ms',
      better: 'lower',
      contender: 'dind-berth',
      samples: warm,
      note: `fresh/warm p50 ratio ${ratio.toFixed(1)}x`,
    },
    {
      scenario: 'dind-build',
      metric: 'Dockerfile build through berth guard (shared daemon, --no-cache)',
      unit: 'ms',
      better: 'lower',
      contender: 'guard',
      samples: guarded,
    },
  ];
}

if (import.meta.url === `file://${process.argv[1] ?? ''}`) {
  const results = await benchDind({ log: (l) => process.stderr.write(`${l}\n`) });
  for (const m of results) {
    const s = summarize(m.samples);
    process.stdout.write(
      `${m.scenario}\t${m.metric}\tp50 ${s.median.toFixed(0)} ${m.unit}\t(n=${m.samples.length})${m.note ? `\t${m.note}` : ''}\n`,
    );
  }
}
