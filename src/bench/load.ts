/**
 * The load scenario: many concurrent clients mixing container lists, inspects and attach streams
 * for a bounded time against one contender, with the proxy's resident memory sampled every second.
 * Reports requests served, errors, p99 latency, peak RSS and the RSS slope over the run (a leak
 * shows as a steady positive slope).
 */
import { performance } from 'node:perf_hooks';
import { DockerClient, containers, encodeFilters } from '../engine/index.js';
import { rssOf } from './contenders.js';
import { slope, summarize } from './stats.js';
import { benchLabels } from './reap.js';
import type { Contender, Scenario } from './types.js';

const targets = new Map<string, string[]>();

/** How long one request of the load may take before it counts as an error. */
const REQUEST_TIMEOUT_MS = 10_000;

export const load: Scenario = {
  id: 'load',
  title: 'Load: concurrent clients mixing lists, inspects and attach streams',
  once: true,
  applies: (c) => c.shared,
  metrics: {
    served: { unit: 'count', better: 'higher' },
    errors: { unit: 'count', better: 'lower' },
    p99: { unit: 'ms', better: 'lower' },
    peak_rss: { unit: 'MiB', better: 'lower' },
    rss_slope: { unit: 'MiB/min', better: 'lower' },
  },
  async prepare(c) {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const { Id } = await containers(c.client).create({
        Image: 'berth-local/busybox',
        Cmd: ['sh', '-c', 'while true; do echo tick; sleep 0.2; done'],
        Labels: benchLabels({ 'io.berth.bench': c.id }),
        HostConfig: { NetworkMode: 'none' },
      });
      await containers(c.client).start(Id);
      ids.push(Id);
    }
    targets.set(c.id, ids);
  },
  async run(c, o) {
    const ids = targets.get(c.id) ?? [];
    // The full soak runs on berth guard (its memory must stay flat); the others get a shorter
    // reference run under the same load.
    const seconds = c.id === 'guard' ? o.soakSeconds : Math.min(60, o.soakSeconds);
    const end = performance.now() + seconds * 1000;
    const latencies: number[] = [];
    let served = 0;
    let errors = 0;
    const rss: { x: number; y: number }[] = [];
    const t0 = performance.now();
    const sampler = setInterval(() => {
      if (c.pid !== undefined) {
        const r = rssOf(c.pid);
        if (r !== undefined) rss.push({ x: (performance.now() - t0) / 60_000, y: r / 1024 / 1024 });
      }
    }, 1000);
    const filters = encodeFilters({ label: [`io.berth.bench=${c.id}`] });
    const worker = async (n: number): Promise<void> => {
      const client = new DockerClient({ env: { DOCKER_HOST: c.dockerHost } });
      try {
        let i = n;
        while (performance.now() < end) {
          const op = i++ % 10;
          const start = performance.now();
          try {
            // A request that gets no answer counts as an error instead of stalling its client.
            const signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
            if (op < 4) {
              await client.json('GET', '/containers/json', { query: { filters }, signal });
            } else if (op < 8) {
              await client.json('GET', `/containers/${ids[i % ids.length] ?? ''}/json`, { signal });
            } else {
              const { socket } = await client.hijack({
                path: `/containers/${ids[i % ids.length] ?? ''}/attach`,
                query: { stream: 1, stdout: 1, stderr: 1 },
                signal,
              });
              await new Promise<void>((resolve) => {
                socket.once('data', () => resolve());
                socket.once('close', () => resolve());
                setTimeout(resolve, 1000);
              });
              socket.destroy();
            }
            served++;
            latencies.push(performance.now() - start);
          } catch {
            errors++;
          }
        }
      } finally {
        client.close();
      }
    };
    try {
      await Promise.all(Array.from({ length: o.loadClients }, (_, n) => worker(n)));
    } finally {
      clearInterval(sampler);
      // dockerd (20.10) keeps an attach connection whose client has hung up for as long as the
      // container runs; thousands of them exhaust its descriptors. Removing this contender's
      // targets right after its phase releases them before the next contender's phase.
      for (const id of ids)
        await containers(c.client)
          .remove(id, { force: true })
          .catch(() => false);
      targets.delete(c.id);
    }
    const s = summarize(latencies);
    const peak = rss.reduce((m, p) => Math.max(m, p.y), Number.NEGATIVE_INFINITY);
    return {
      served,
      errors,
      p99: s.p99,
      peak_rss: rss.length ? peak : Number.NaN,
      rss_slope: rss.length > 2 ? slope(rss) : Number.NaN,
    };
  },
  async cleanup(c: Contender) {
    for (const id of targets.get(c.id) ?? []) await containers(c.client).remove(id, { force: true });
  },
};
