/**
 * The load scenario: many concurrent clients against one contender for a bounded time — a fifth
 * of them hold attach streams (seconds each, output flowing), the rest alternate container lists
 * and inspects — with the proxy's resident memory sampled every second. Reports requests served
 * per second, attach streams held to term per minute, errors (a failed or timed-out request, a
 * stream that ended early or went quiet), p99 request latency, peak RSS and the RSS slope after
 * warm-up (a leak shows as a steady positive slope).
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { DockerClient, containers, encodeFilters } from '../engine/index.js';
import { rssOf } from './contenders.js';
import { slope, summarize } from './stats.js';
import { benchLabels } from './reap.js';
import type { Contender, Scenario } from './types.js';

/** Every attach target of a contender not removed yet (for cleanup after a failed phase). */
const targets = new Map<string, Set<string>>();
/** The targets `prepare` started, which a phase begins with. */
const prepared = new Map<string, string[]>();

/** How long one request of the load may take before it counts as an error. */
const REQUEST_TIMEOUT_MS = 10_000;

/** The share of clients that hold attach streams; the others alternate lists and inspects. */
const STREAM_SHARE = 0.2;
/** How long a client holds each attach stream before it hangs up and attaches again. */
const ATTACH_HOLD_MS = 5_000;

/**
 * dockerd (20.10) keeps an attach connection whose client has hung up for as long as the container
 * runs — for a raw-socket client as much as through a proxy — so the attach targets are replaced
 * this often, and the old ones removed once no stream or request can still be using them.
 */
const ROTATE_MS = 60_000;
const TARGETS = 5;

async function startTargets(c: Contender): Promise<string[]> {
  const live = targets.get(c.id) ?? new Set<string>();
  targets.set(c.id, live);
  const ids: string[] = [];
  for (let i = 0; i < TARGETS; i++) {
    const { Id } = await containers(c.client).create({
      Image: 'berth-local/busybox',
      Cmd: ['sh', '-c', 'while true; do echo tick; sleep 0.2; done'],
      Labels: benchLabels({ 'io.berth.bench': c.id }),
      HostConfig: { NetworkMode: 'none' },
    });
    ids.push(Id);
    live.add(Id);
    await containers(c.client).start(Id);
  }
  return ids;
}

async function removeTargets(c: Contender, ids: Iterable<string>): Promise<void> {
  for (const id of [...ids]) {
    await containers(c.client)
      .remove(id, { force: true })
      .catch(() => false);
    targets.get(c.id)?.delete(id);
  }
}

export const load: Scenario = {
  id: 'load',
  title: 'Load: concurrent clients mixing lists, inspects and attach streams',
  once: true,
  applies: (c) => c.shared,
  metrics: {
    requests: { unit: 'req/s', better: 'higher' },
    streams: { unit: 'streams/min', better: 'higher' },
    errors: { unit: 'count', better: 'lower' },
    p99: { unit: 'ms', better: 'lower' },
    peak_rss: { unit: 'MiB', better: 'lower' },
    rss_slope: { unit: 'MiB/min', better: 'lower' },
  },
  async prepare(c) {
    prepared.set(c.id, await startTargets(c));
  },
  async run(c, o) {
    let ids = prepared.get(c.id) ?? [];
    const removals: Promise<void>[] = [];
    // The full soak runs on berth guard (its memory must stay flat); the others get a shorter
    // reference run under the same load.
    const seconds = c.id === 'guard' ? o.soakSeconds : Math.min(60, o.soakSeconds);
    const end = performance.now() + seconds * 1000;
    const latencies: number[] = [];
    let served = 0;
    let streams = 0;
    let errors = 0;
    const rss: { x: number; y: number }[] = [];
    const t0 = performance.now();
    const sampler = setInterval(() => {
      if (c.pid !== undefined) {
        const r = rssOf(c.pid);
        if (r !== undefined) rss.push({ x: (performance.now() - t0) / 60_000, y: r / 1024 / 1024 });
      }
    }, 1000);
    const rotation = (async () => {
      for (;;) {
        await sleep(Math.max(0, Math.min(end, performance.now() + ROTATE_MS) - performance.now()));
        if (performance.now() >= end) return;
        const old = ids;
        ids = await startTargets(c);
        // A stream or request that picked an old target may still run for up to its timeouts.
        removals.push(sleep(ATTACH_HOLD_MS + REQUEST_TIMEOUT_MS + 1000).then(() => removeTargets(c, old)));
      }
    })();
    const filters = encodeFilters({ label: [`io.berth.bench=${c.id}`] });
    const target = (i: number) => ids[i % ids.length] ?? '';
    // A request that gets no answer counts as an error instead of stalling its client.
    const requester = async (n: number): Promise<void> => {
      const client = new DockerClient({ env: { DOCKER_HOST: c.dockerHost } });
      try {
        for (let i = n; performance.now() < end; i++) {
          const start = performance.now();
          try {
            const signal = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
            if (i % 2 === 0) await client.json('GET', '/containers/json', { query: { filters }, signal });
            else await client.json('GET', `/containers/${target(i)}/json`, { signal });
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
    // An attach stream is held as a CI job holds one: open, output flowing, for seconds at a time.
    const streamer = async (n: number): Promise<void> => {
      const client = new DockerClient({ env: { DOCKER_HOST: c.dockerHost } });
      try {
        for (let i = n; performance.now() < end; i++) {
          try {
            const { socket } = await client.hijack({
              path: `/containers/${target(i)}/attach`,
              query: { stream: 1, stdout: 1, stderr: 1 },
              signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
            });
            const frames = await new Promise<number>((resolve, reject) => {
              let count = 0;
              const hold = setTimeout(() => resolve(count), ATTACH_HOLD_MS);
              const idle = () =>
                setTimeout(() => reject(new Error('the attach stream went quiet')), REQUEST_TIMEOUT_MS);
              let quiet = idle();
              socket.on('data', () => {
                count++;
                clearTimeout(quiet);
                quiet = idle();
              });
              socket.once('close', () => reject(new Error('the attach stream ended early')));
              socket.once('error', reject);
              const done = () => {
                clearTimeout(hold);
                clearTimeout(quiet);
              };
              socket.once('close', done);
            }).finally(() => socket.destroy());
            if (frames === 0) throw new Error('no output on the attach stream');
            streams++;
          } catch {
            errors++;
          }
        }
      } finally {
        client.close();
      }
    };
    const streamClients = Math.max(1, Math.round(o.loadClients * STREAM_SHARE));
    try {
      await Promise.all([
        rotation,
        ...Array.from({ length: streamClients }, (_, n) => streamer(n)),
        ...Array.from({ length: o.loadClients - streamClients }, (_, n) => requester(n)),
      ]);
    } finally {
      clearInterval(sampler);
      // Removing this contender's targets right after its phase releases the attach connections
      // dockerd still holds before the next contender's phase.
      await Promise.allSettled(removals);
      await removeTargets(c, targets.get(c.id) ?? []);
      prepared.delete(c.id);
    }
    const s = summarize(latencies);
    const warmup = Math.min(1, seconds / 5 / 60);
    const steady = rss.filter((p) => p.x >= warmup);
    const peak = rss.reduce((m, p) => Math.max(m, p.y), Number.NEGATIVE_INFINITY);
    // Rates, not counts: berth guard's phase is the long soak, the others' a shorter reference.
    return {
      requests: served / seconds,
      streams: (streams / seconds) * 60,
      errors,
      p99: s.p99,
      peak_rss: rss.length ? peak : Number.NaN,
      // After the first minute (or fifth) of warm-up: pools, caches and the JIT settle first.
      rss_slope: steady.length > 2 ? slope(steady) : Number.NaN,
    };
  },
  async cleanup(c: Contender) {
    await removeTargets(c, targets.get(c.id) ?? []);
    prepared.delete(c.id);
  },
};
