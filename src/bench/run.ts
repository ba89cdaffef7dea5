/**
 * The benchmark driver: starts every available contender, runs each scenario against each of them
 * in rounds (every contender once per round, in a new random order each), and writes
 * bench/results/latest.{md,json}. Each sample keeps its round, so the report compares contenders
 * round by round.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { errorMessage } from '../common/index.js';
import { DockerClient, system } from '../engine/index.js';
import { guardContender, haproxyContender, rawContender } from './contenders.js';
import { berthDindContender, plainDindContender } from './nested.js';
import type { BenchReport, MachineInfo } from './report.js';
import { toMarkdown } from './report.js';
import { reapBench } from './reap.js';
import { ALL_SCENARIOS, shuffled } from './scenarios.js';
import type { BenchOptions, Contender, ContenderId, Measurement, Scenario } from './types.js';

export type ContenderFactory = { id: ContenderId; start: () => Promise<Contender> };

/** Contenders berth knows how to start; other subsystems add theirs via `extraContenders`. */
export function defaultContenders(): ContenderFactory[] {
  return [
    { id: 'raw', start: () => Promise.resolve(rawContender()) },
    { id: 'haproxy', start: haproxyContender },
    { id: 'guard', start: guardContender },
    { id: 'dind-plain', start: plainDindContender },
    { id: 'dind-berth', start: berthDindContender },
  ];
}

export async function machineInfo(client: DockerClient): Promise<MachineInfo> {
  const [info, version] = await Promise.all([system(client).info(), system(client).version()]);
  return {
    cores: cpus().length,
    memoryGiB: totalmem() / 1024 ** 3,
    engineVersion: version.Version,
    apiVersion: version.ApiVersion,
    storageDriver: info.Driver,
    kernel: info.KernelVersion,
    node: process.version,
  };
}

export async function runBench(
  o: BenchOptions,
  extra: {
    contenders?: ContenderFactory[];
    scenarios?: Scenario[];
    notes?: string[];
    /** Measurements taken outside the contender loop (e.g. the dind cache bench). */
    measure?: (o: BenchOptions) => Promise<Measurement[]>;
  } = {},
): Promise<BenchReport> {
  const factories = [...defaultContenders(), ...(extra.contenders ?? [])].filter(
    (f) => o.contenders.length === 0 || o.contenders.includes(f.id),
  );
  const scenarios = [...ALL_SCENARIOS, ...(extra.scenarios ?? [])].filter(
    (s) => o.only.length === 0 || o.only.includes(s.id),
  );
  const probe = new DockerClient();
  const machine = await machineInfo(probe);
  const reaped = await reapBench(probe);
  if (reaped.containers + reaped.networks + reaped.volumes > 0)
    o.log(
      `removed leftovers of an earlier bench: ${reaped.containers} containers, ${reaped.networks} networks, ${reaped.volumes} volumes`,
    );
  for (const e of reaped.errors) o.log(`could not remove a leftover ${e}`);
  for (const n of reaped.notes) o.log(n);

  const started: Contender[] = [];
  const stopAll = async (): Promise<void> => {
    for (const c of started.splice(0).reverse()) {
      try {
        await c.stop();
      } catch (err) {
        o.log(`stopping ${c.id} failed: ${errorMessage(err)}`);
      }
    }
  };
  // Ctrl-C or a TERM mid-run: stop the contenders, remove what this bench made, exit 130/143.
  // A second signal exits at once (the next bench reaps what is left, by owner pid).
  let shutdown: Promise<void> | undefined;
  const stopping = (): boolean => shutdown !== undefined;
  const onInterrupt = (sig: NodeJS.Signals): void => {
    if (shutdown) process.exit(sig === 'SIGINT' ? 130 : 143);
    o.log(`${sig}: stopping the contenders and removing this bench's objects`);
    shutdown = (async () => {
      await stopAll();
      const r = await reapBench(probe, { includeOwn: true }).catch(() => undefined);
      if (r) o.log(`removed ${r.containers} containers, ${r.networks} networks, ${r.volumes} volumes`);
      process.exit(sig === 'SIGINT' ? 130 : 143);
    })();
  };
  process.on('SIGINT', onInterrupt);
  process.on('SIGTERM', onInterrupt);
  const skipped: { id: string; reason: string }[] = [];
  const retried: { id: string; reason: string }[] = [];
  const measurements: Measurement[] = [];
  let done: { id: ContenderId; title: string }[] = [];
  try {
    for (const f of factories) {
      try {
        o.log(`starting contender ${f.id}`);
        started.push(await f.start());
      } catch (err) {
        skipped.push({ id: f.id, reason: errorMessage(err) });
        o.log(`contender ${f.id} unavailable: ${errorMessage(err)}`);
      }
    }
    for (const sc of scenarios) {
      if (stopping()) break;
      const targets = started.filter((c) => sc.applies?.(c) ?? true);
      o.log(`scenario ${sc.id}: ${sc.title} (${targets.map((c) => c.id).join(', ')})`);
      const ready: Contender[] = [];
      const unprepared = sc.prepareTogether
        ? await sc.prepareTogether(targets, o)
        : new Map<ContenderId, Error>();
      for (const c of targets) {
        try {
          const failed = unprepared.get(c.id);
          if (failed) throw failed;
          await sc.prepare?.(c, o);
          ready.push(c);
        } catch (err) {
          skipped.push({ id: `${sc.id}/${c.id}`, reason: errorMessage(err) });
          o.log(`  ${c.id}: prepare failed: ${errorMessage(err)}`);
          // What a prepare made for it before it failed goes now, not at the bench's end.
          if (unprepared.has(c.id)) await sc.cleanup?.(c, o).catch(() => undefined);
        }
      }
      const samples = await measureRounds(sc, ready, o, { stopping, retried, skipped });
      for (const c of ready) {
        for (const [metric, spec] of Object.entries(sc.metrics)) {
          const s = samples.get(c.id)?.get(metric);
          if (s?.values.length)
            measurements.push({
              scenario: sc.id,
              metric,
              unit: spec.unit,
              better: spec.better,
              contender: c.id,
              samples: s.values,
              rounds: s.rounds,
              ...(spec.versus ? { versus: spec.versus } : {}),
            });
        }
        try {
          // Interrupted: the handler's reap removes what the scenario made.
          if (!stopping()) await sc.cleanup?.(c, o);
        } catch (err) {
          o.log(`  ${c.id}: cleanup failed: ${errorMessage(err)}`);
        }
      }
    }
    if (extra.measure && !stopping()) {
      try {
        measurements.push(...(await extra.measure(o)));
      } catch (err) {
        skipped.push({ id: 'extra', reason: errorMessage(err) });
      }
    }
  } finally {
    // Interrupted: the signal handler stops everything, reaps and exits; no partial report is written.
    if (shutdown) await shutdown;
    const contenders = started.map((c) => ({ id: c.id, title: c.title }));
    await stopAll();
    process.off('SIGINT', onInterrupt);
    process.off('SIGTERM', onInterrupt);
    probe.close();
    done = contenders;
  }
  return {
    date: new Date().toISOString(),
    machine,
    mode: o.quick ? 'quick' : 'full',
    reps: o.reps,
    contenders: done,
    skipped,
    retried,
    measurements,
    notes: extra.notes ?? [],
  };
}

export function writeReport(
  report: BenchReport,
  outDir: string,
  scenarios: readonly Pick<Scenario, 'id' | 'title'>[] = ALL_SCENARIOS,
): { md: string; json: string } {
  mkdirSync(outDir, { recursive: true });
  const titles = Object.fromEntries(scenarios.map((s) => [s.id, s.title]));
  const md = join(outDir, 'latest.md');
  const json = join(outDir, 'latest.json');
  writeFileSync(md, toMarkdown(report, titles));
  writeFileSync(json, `${JSON.stringify(report, null, 2)}\n`);
  return { md, json };
}

/** Samples of one scenario: contender -> metric -> values, each with the round it was taken in. */
export type RoundSamples = Map<string, Map<string, { values: number[]; rounds: number[] }>>;

/**
 * Runs a scenario's rounds over the contenders that are ready: every contender once per round, in
 * a new random order each round (`shuffle`), or all at once where the scenario measures them
 * together. A failed unit is run once more in the same round; failures go to `retried` (the first)
 * and `skipped` (the second). A contender that fails two rounds in a row (both tries of each) gets
 * no more rounds of this scenario: HAProxy, once a `docker cp` stalled in it, held every later
 * one of that container too, and each round then cost a minute of waiting for nothing.
 */
export async function measureRounds(
  sc: Scenario,
  ready: readonly Contender[],
  o: BenchOptions,
  run: {
    stopping: () => boolean;
    retried: { id: string; reason: string }[];
    skipped: { id: string; reason: string }[];
    shuffle?: <T>(xs: T[]) => T[];
  },
): Promise<RoundSamples> {
  const samples: RoundSamples = new Map();
  const shuffle = run.shuffle ?? shuffled;
  const rounds = sc.once ? 1 : o.reps * (o.quick ? 1 : (sc.roundsPerRep ?? 1));
  const failedInARow = new Map<string, number>();
  let left = [...ready];
  // The round's units: all the contenders at once where the scenario measures them together,
  // else one contender each.
  const together = sc.runTogether?.bind(sc);
  type Unit = { who?: string; measure: () => Promise<Map<string, Record<string, number>>> };
  for (let round = 0; round < rounds && left.length > 0; round++) {
    // A new random order each round: no contender always runs first (warm caches, drift), and
    // none always follows the same other (a nested daemon's turn leaves the host's idle).
    const order = shuffle([...left]);
    const units: Unit[] = together
      ? [{ measure: () => together(order, o) }]
      : order.map((c) => ({ who: c.id, measure: async () => new Map([[c.id, await sc.run(c, o)]]) }));
    for (const u of units) {
      let measured = false;
      let lastError = '';
      // Interrupted: the cleanup is under way and the contenders are going; measure nothing more.
      for (let attempt = 1; attempt <= 2 && !run.stopping(); attempt++) {
        try {
          for (const [id, values] of await u.measure()) keep(samples, id, values, round);
          measured = true;
          break;
        } catch (err) {
          lastError = errorMessage(err);
          const again = attempt === 1 ? ', running it again' : '';
          o.log(`  ${u.who ? `${u.who}: ` : ''}round ${round + 1} failed: ${lastError}${again}`);
          const id = `${sc.id}${u.who ? `/${u.who}` : ''}#${round + 1}`;
          (attempt === 1 ? run.retried : run.skipped).push({ id, reason: lastError });
        }
      }
      if (u.who === undefined || run.stopping()) continue;
      const who = u.who;
      const inARow = measured ? 0 : (failedInARow.get(who) ?? 0) + 1;
      failedInARow.set(who, inARow);
      if (inARow < 2) continue;
      left = left.filter((c) => c.id !== who);
      const reason = `failed two rounds in a row (last: ${lastError}); no more rounds of it`;
      o.log(`  ${who}: ${reason}`);
      run.skipped.push({ id: `${sc.id}/${who}`, reason });
    }
  }
  return samples;
}

/** Adds one contender's values of a round to `samples`. */
function keep(samples: RoundSamples, id: string, values: Record<string, number>, round: number): void {
  const mine = samples.get(id) ?? new Map<string, { values: number[]; rounds: number[] }>();
  samples.set(id, mine);
  for (const [metric, v] of Object.entries(values)) {
    const s = mine.get(metric) ?? { values: [], rounds: [] };
    s.values.push(v);
    s.rounds.push(round);
    mine.set(metric, s);
  }
}
