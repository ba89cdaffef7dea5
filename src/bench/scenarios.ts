/**
 * The benchmark scenarios. Each runs against one contender at a time; the driver measures every
 * contender once per round, in a new random order, so drift on the machine hits all of them alike
 * and the report can compare them round by round. The API round trips go further: within a round
 * the contenders take turns of about 50 ms for pings and inspects, and lists a cycle at a time
 * (`runTogether`).
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { LABEL_BENCH, benchLabels } from './reap.js';
import type { DockerClient } from '../engine/index.js';
import { containers, encodeFilters, images } from '../engine/index.js';
import { DOCKER_CLI } from '../images/index.js';
import { MiB, buildContext } from './payload.js';
import { medianDifference, summarize } from './stats.js';
import { load } from './load.js';
import { nestedReady } from './nested.js';
import { pipeline8 } from './pipeline.js';
import type { BenchOptions, Contender, ContenderId, Scenario } from './types.js';

const BUSYBOX = 'berth-local/busybox';

function labels(c: Contender, extra: Record<string, string> = {}): Record<string, string> {
  return benchLabels({ [LABEL_BENCH]: c.id, ...extra });
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
}

/** How long a stream may go without a byte before its repetition counts as failed. */
const STALL_MS = 30_000;

/**
 * Counts bytes of a stream, draining it with backpressure. A stream that stops flowing fails
 * (HAProxy once held 200 KiB of a `docker save` unread for 20 minutes): a stalled contender is a
 * result to report, not a reason for the bench to wait forever.
 */
export async function drain(stream: NodeJS.ReadableStream, stallMs = STALL_MS): Promise<number> {
  let n = 0;
  let timer: NodeJS.Timeout | undefined;
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      n += chunk.length;
      arm();
      cb();
    },
  });
  function arm(): void {
    clearTimeout(timer);
    timer = setTimeout(() => {
      sink.destroy(new Error(`stalled: no bytes for ${stallMs / 1000} s after ${n} bytes`));
    }, stallMs);
  }
  arm();
  try {
    await pipeline(stream, sink);
  } finally {
    clearTimeout(timer);
  }
  return n;
}

/**
 * An answer's head, or a failure once `stallMs` passed without one: a contender that holds the
 * request (HAProxy kept a stalled `docker cp` open upstream, and dockerd served the retry only after
 * it) fails the repetition rather than holding the bench. An answer that comes later is dropped.
 */
export async function answered<T extends NodeJS.ReadableStream>(
  request: Promise<T>,
  stallMs = STALL_MS,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let late = false;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      late = true;
      reject(new Error(`stalled: no answer for ${stallMs / 1000} s`));
    }, stallMs);
  });
  void request.then(
    (s) => {
      if (late) (s as NodeJS.ReadableStream & { destroy?: () => void }).destroy?.();
    },
    () => undefined,
  );
  try {
    return await Promise.race([request, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function mibPerSec(bytes: number, ms: number): number {
  return bytes / MiB / (ms / 1000);
}

const state = new Map<string, string[]>();
const key = (scenario: string, c: Contender) => `${scenario}:${c.id}`;

async function removeAll(client: DockerClient, ids: readonly string[]): Promise<void> {
  for (const id of ids) await containers(client).remove(id, { force: true, volumes: true });
}

/** xs in a random order (Fisher–Yates). */
export function shuffled<T>(xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [xs[i], xs[j]] = [xs[j] as T, xs[i] as T];
  }
  return xs;
}

/**
 * `count` measurements for each of `each`, taken in turns: a contender measures until `turnMs` has
 * passed (one at least), then the next one measures, and so on round until each has its count.
 * Each round takes them in a new random order (`shuffle`): in a fixed order the raw socket always
 * came after a nested daemon's turn, which left the host's dockerd idle, and its first lists of
 * each turn were the slower for it (0.1 ms on the median, to every proxy's advantage).
 */
async function inTurns<E>(
  count: number,
  each: readonly E[],
  turnMs: number,
  measure: (e: E, k: number) => Promise<number>,
  keep: (e: E, v: number) => void,
  shuffle: <T>(xs: T[]) => T[] = shuffled,
): Promise<void> {
  const turns = each.map((e) => ({ e, done: 0 }));
  while (turns.some((t) => t.done < count))
    for (const t of shuffle([...turns])) {
      const end = performance.now() + turnMs;
      while (t.done < count) {
        keep(t.e, await measure(t.e, t.done++));
        if (performance.now() >= end) break;
      }
    }
}

/**
 * The API round trips of every contender: pings and inspects in turns of about 50 ms each, lists
 * in cycles of one request each.
 *
 * dockerd's time for a list of 50 drifts by about 0.1 ms from one second to the next, as much as
 * the target a proxy must meet: measured a contender after another, one whole block each, the
 * list's added p50 came out between −0.16 and +0.28 ms in seven runs. Turns of 50 ms share the
 * drift among contenders and still keep each one's path warm (turns of one request each raised
 * both proxies' ping and inspect by 0.03–0.05 ms, the cost of a path gone cold).
 *
 * Lists are taken a cycle at a time (one of each contender, in a new random order), and each
 * proxy's list is compared with the raw socket's of the same cycle: `list_added_p50` is the
 * median of those differences. On a 2-core VM dockerd answered a list of 50 in two humps (5–7 ms
 * and 9–12 ms, in runs of up to 50 lists), with the median between them: there a p50 moves with
 * the share of slow lists each contender happened to get, and one round's difference of p50s
 * (1000 lists each) ranged from −0.38 to +0.57 ms. Differences within a cycle, where both lists
 * met the same hump, moved 3 to 6 times less from one block of lists to the next. A path is cold
 * after dockerd's milliseconds of work whatever the turn, so cycles cost lists nothing.
 */
export async function apiTogether(
  cs: readonly Contender[],
  o: BenchOptions,
  turnMs = 50,
  shuffle: <T>(xs: T[]) => T[] = shuffled,
): Promise<Map<ContenderId, Record<string, number>>> {
  const n = o.quick ? 50 : 1000;
  const each = cs.map((c) => ({
    c,
    ids: state.get(key('api', c)) ?? [],
    filters: encodeFilters({ label: [`${LABEL_BENCH}=${c.id}`] }),
    ping: [] as number[],
    list: [] as number[],
    inspect: [] as number[],
  }));
  const list = (e: (typeof each)[number]) =>
    e.c.client.json('GET', '/containers/json', { query: { all: true, filters: e.filters } });
  const inspect = (e: (typeof each)[number], i: number) =>
    e.c.client.json('GET', `/containers/${e.ids[i % e.ids.length] ?? ''}/json`);
  // Warm-up, untimed, alike for every contender: connections opened, and a proxy's code paths
  // compiled as in a long-running process rather than measured on their first few hundred calls.
  for (let i = 0; i < (o.quick ? 20 : 300); i++)
    for (const e of each) {
      await e.c.client.ping();
      await inspect(e, i);
      if (i % 4 === 0) await list(e);
    }
  await inTurns(
    n,
    each,
    turnMs,
    (e) => timed(() => e.c.client.ping()),
    (e, v) => e.ping.push(v),
    shuffle,
  );
  await inTurns(
    Math.ceil(n / 2),
    each,
    0,
    (e) => timed(() => list(e)),
    (e, v) => e.list.push(v),
    shuffle,
  );
  await inTurns(
    n,
    each,
    turnMs,
    (e, k) => timed(() => inspect(e, k)),
    (e, v) => e.inspect.push(v),
    shuffle,
  );
  const raw = each.find((e) => e.c.id === 'raw');
  return new Map(
    each.map((e) => {
      const [p, l, s] = [summarize(e.ping), summarize(e.list), summarize(e.inspect)];
      const values: Record<string, number> = {
        ping_p50: p.median,
        ping_p99: p.p99,
        list_p50: l.median,
        list_p99: l.p99,
        inspect_p50: s.median,
        inspect_p99: s.p99,
      };
      // The k-th list of each contender was taken in cycle k.
      if (raw && e !== raw) values.list_added_p50 = medianDifference(e.list, raw.list);
      return [e.c.id, values];
    }),
  );
}

export const apiRoundTrip: Scenario = {
  id: 'api',
  roundsPerRep: 2,
  title: 'API round trip (/_ping, container list with 50 containers, inspect)',
  metrics: {
    ping_p50: { unit: 'ms', better: 'lower' },
    ping_p99: { unit: 'ms', better: 'lower' },
    list_p50: { unit: 'ms', better: 'lower' },
    list_p99: { unit: 'ms', better: 'lower' },
    list_added_p50: { unit: 'ms', better: 'lower', versus: 'raw' },
    inspect_p50: { unit: 'ms', better: 'lower' },
    inspect_p99: { unit: 'ms', better: 'lower' },
  },
  /**
   * 50 containers each, made in turns (one for each contender, then the next): with the raw
   * socket's made first, the front waited 44–130 µs longer for dockerd's first byte than the raw
   * socket's client, request by request; with the guard's made first, or the same 50 for both,
   * not at all. Made one contender after another, the later ones would pay for their place in
   * dockerd's order.
   */
  async prepareTogether(cs) {
    const failed = new Map<ContenderId, Error>();
    for (const c of cs) state.set(key('api', c), []);
    for (let i = 0; i < 50; i++)
      for (const c of cs) {
        if (failed.has(c.id)) continue;
        try {
          const r = await containers(c.client).create({
            Image: BUSYBOX,
            Cmd: ['true'],
            Labels: labels(c),
            HostConfig: { NetworkMode: 'none' },
          });
          state.get(key('api', c))?.push(r.Id);
        } catch (err) {
          failed.set(c.id, err instanceof Error ? err : new Error(String(err)));
        }
      }
    return failed;
  },
  async run(c, o) {
    return (await apiTogether([c], o)).get(c.id) ?? {};
  },
  runTogether: (cs, o) => apiTogether(cs, o),
  async cleanup(c) {
    await removeAll(c.client, state.get(key('api', c)) ?? []);
  },
};

export const lifecycle: Scenario = {
  id: 'lifecycle',
  title: 'Container create + start + wait + remove',
  metrics: { cycle: { unit: 'ms', better: 'lower' } },
  async run(c, o) {
    const times: number[] = [];
    for (let i = 0; i < (o.quick ? 2 : 8); i++) {
      times.push(
        await timed(async () => {
          const { Id } = await containers(c.client).create({
            Image: BUSYBOX,
            Cmd: ['true'],
            Labels: labels(c),
            HostConfig: { NetworkMode: 'none' },
          });
          try {
            const { exited } = await containers(c.client).waitRegistered(Id, 'next-exit');
            await containers(c.client).start(Id);
            await exited;
          } finally {
            await containers(c.client).remove(Id);
          }
        }),
      );
    }
    return { cycle: summarize(times).median };
  },
};

function payloadTag(o: BenchOptions): string {
  return `berth-bench/payload:${o.payloadMiB}m`;
}

/** Builds the payload image on the contender's daemon when missing (FROM scratch + one file). */
async function ensurePayload(c: Contender, o: BenchOptions): Promise<void> {
  const tag = payloadTag(o);
  if (await images(c.client).find(tag)) return;
  const ctx = buildContext('FROM scratch\nCOPY payload /payload\n', { payload: o.payloadMiB * MiB });
  const [repo, t] = tag.split(':') as [string, string];
  await images(c.client).build(ctx, { t: `${repo}:${t}`, rm: true, labels: JSON.stringify(labels(c)) });
}

/**
 * Rounds per repetition of the stream scenarios: one transfer's throughput varies by about a
 * fifth from the next on a 2-core VM (dockerd's own pace), so the default 5 repetitions take 20
 * pairs.
 */
const STREAM_ROUNDS = 4;

/**
 * Runs the docker CLI against a contender with its output thrown away (`/dev/null`, so no reader
 * of ours is in the path) and answers how long it took, from start to exit, in ms. Fails on a
 * non-zero exit or when it takes longer than `limitMs` (a stalled download kills it).
 */
export async function timedCli(c: Contender, args: readonly string[], limitMs = STALL_MS): Promise<number> {
  const devnull = openSync('/dev/null', 'w');
  try {
    const t0 = performance.now();
    const child = spawn(DOCKER_CLI, args, {
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        HOME: process.env.HOME ?? '/',
        DOCKER_HOST: c.dockerHost,
      },
      stdio: ['ignore', devnull, 'pipe'],
    });
    let stderr = '';
    child.stderr?.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), limitMs);
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (cd, sig) => resolve([cd, sig]));
    }).finally(() => clearTimeout(timer));
    if (code !== 0)
      throw new Error(
        signal === 'SIGKILL'
          ? `docker ${args[0]}: stalled, killed after ${limitMs / 1000} s`
          : `docker ${args[0]} exited with ${code ?? signal}: ${stderr.trim()}`,
      );
    return performance.now() - t0;
  } finally {
    closeSync(devnull);
  }
}

/** Whether the download scenarios can also time the docker CLI here. */
function haveCli(): boolean {
  return existsSync(DOCKER_CLI);
}

export const save: Scenario = {
  id: 'save',
  roundsPerRep: STREAM_ROUNDS,
  title: 'docker save of an image with a large payload',
  metrics: {
    throughput: { unit: 'MiB/s', better: 'higher' },
    cli_throughput: { unit: 'MiB/s', better: 'higher' },
  },
  prepare: ensurePayload,
  async run(c, o) {
    const t0 = performance.now();
    const res = await answered(c.client.request({ path: '/images/get', query: { names: [payloadTag(o)] } }));
    const bytes = await drain(res);
    const out = { throughput: mibPerSec(bytes, performance.now() - t0) };
    // The same archive through `docker save` (to stdout, thrown away): the CLI's own requests and
    // reads, the client the users run.
    if (!haveCli()) return out;
    return { ...out, cli_throughput: mibPerSec(bytes, await timedCli(c, ['save', payloadTag(o)])) };
  },
};

export const copyOut: Scenario = {
  id: 'cp',
  roundsPerRep: STREAM_ROUNDS,
  title: 'docker cp of a large file out of a container',
  metrics: {
    throughput: { unit: 'MiB/s', better: 'higher' },
    cli_throughput: { unit: 'MiB/s', better: 'higher' },
  },
  async prepare(c, o) {
    await ensurePayload(c, o);
    const { Id } = await containers(c.client).create({
      Image: payloadTag(o),
      Cmd: ['/payload'],
      Labels: labels(c),
      HostConfig: { NetworkMode: 'none' },
    });
    state.set(key('cp', c), [Id]);
  },
  async run(c) {
    const id = state.get(key('cp', c))?.[0] ?? '';
    const t0 = performance.now();
    const res = await answered(containers(c.client).getArchive(id, '/payload'));
    const bytes = await drain(res);
    const out = { throughput: mibPerSec(bytes, performance.now() - t0) };
    // `docker cp ID:/payload -` writes the same tar to stdout (thrown away).
    if (!haveCli()) return out;
    return { ...out, cli_throughput: mibPerSec(bytes, await timedCli(c, ['cp', `${id}:/payload`, '-'])) };
  },
  async cleanup(c) {
    await removeAll(c.client, state.get(key('cp', c)) ?? []);
  },
};

export const buildContextUpload: Scenario = {
  id: 'context',
  roundsPerRep: STREAM_ROUNDS,
  title: 'Build context upload',
  metrics: { throughput: { unit: 'MiB/s', better: 'higher' } },
  async run(c, o) {
    const bytes = o.payloadMiB * MiB;
    const t0 = performance.now();
    const ctx = buildContext('FROM scratch\nCOPY Dockerfile /Dockerfile\n', { big: bytes });
    const { imageId } = await images(c.client).build(ctx, { rm: true, labels: JSON.stringify(labels(c)) });
    const ms = performance.now() - t0;
    if (imageId) await images(c.client).remove(imageId, true);
    return { throughput: mibPerSec(bytes, ms) };
  },
};

export const logs: Scenario = {
  id: 'logs',
  roundsPerRep: STREAM_ROUNDS,
  title: 'docker logs of a large output',
  metrics: { throughput: { unit: 'MiB/s', better: 'higher' } },
  async prepare(c, o) {
    const { Id } = await containers(c.client).create({
      Image: BUSYBOX,
      Cmd: [
        'sh',
        '-c',
        `yes 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde | head -c ${o.logsMiB * MiB}`,
      ],
      Labels: labels(c),
      HostConfig: { NetworkMode: 'none' },
    });
    const { exited } = await containers(c.client).waitRegistered(Id, 'next-exit');
    await containers(c.client).start(Id);
    await exited;
    state.set(key('logs', c), [Id]);
  },
  async run(c) {
    const id = state.get(key('logs', c))?.[0] ?? '';
    const t0 = performance.now();
    const res = await answered(containers(c.client).logs(id, { follow: false }));
    const bytes = await drain(res);
    return { throughput: mibPerSec(bytes, performance.now() - t0) };
  },
  async cleanup(c) {
    await removeAll(c.client, state.get(key('logs', c)) ?? []);
  },
};

const BUILD_DOCKERFILE = [
  `FROM ${BUSYBOX}`,
  'RUN dd if=/dev/urandom of=/blob bs=1048576 count=32 2>/dev/null',
  'RUN sha256sum /blob > /blob.sum',
  'COPY Dockerfile /Dockerfile',
  'RUN for i in 1 2 3 4 5 6 7 8; do echo step $i >> /steps; done',
  'CMD ["cat", "/blob.sum"]',
  '',
].join('\n');

export const buildCache: Scenario = {
  id: 'build',
  title: 'Dockerfile build, cold and warm cache',
  metrics: { cold: { unit: 'ms', better: 'lower' }, warm: { unit: 'ms', better: 'lower' } },
  async run(c) {
    const tag = `berth-bench/build:${c.id}`;
    // The previous repetition's image goes first (untimed): a no-cache build makes a new image
    // each time, and the old one would be left untagged.
    await images(c.client)
      .remove(tag)
      .catch(() => false);
    const cold = await timed(() =>
      images(c.client).build(buildContext(BUILD_DOCKERFILE), {
        t: tag,
        nocache: true,
        rm: true,
        labels: JSON.stringify(labels(c)),
      }),
    );
    const warm = await timed(() =>
      images(c.client).build(buildContext(BUILD_DOCKERFILE), {
        t: tag,
        rm: true,
        labels: JSON.stringify(labels(c)),
      }),
    );
    return { cold, warm };
  },
  async cleanup(c) {
    await images(c.client).remove(`berth-bench/build:${c.id}`, true);
  },
};

export const ALL_SCENARIOS: readonly Scenario[] = [
  apiRoundTrip,
  lifecycle,
  save,
  copyOut,
  buildContextUpload,
  logs,
  buildCache,
  load,
  nestedReady,
  pipeline8,
];
