/** `berth run`, `berth ls`, `berth logs`, `berth reap`: the runner's commands. */
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { Option } from 'commander';
import { BerthError } from '../../common/index.js';
import { DockerClient } from '../../engine/index.js';
import {
  DOCKER_MODES,
  defaultStoreDir,
  formatDuration,
  formatEvent,
  loadRunSpec,
  openStore,
  parseDuration,
  reap,
  reapTenant,
  runPipeline,
} from '../../runner/index.js';
import type { DockerMode, JobStatus, ReapResult, RunEvent } from '../../runner/index.js';
import { paint, table, useColor } from '../output.js';
import type { Color } from '../output.js';

const collect = (v: string, prev: string[] = []) => [...prev, v];

/** The run store in `dir`; an error (not a new empty store) when there is none. */
function existingStore(dir: string | undefined) {
  const path = resolve(dir ?? defaultStoreDir('.'));
  if (!existsSync(join(path, 'berth.db'))) {
    throw new BerthError('RUN_NOT_FOUND', `no run store in ${path}`, {
      hint: 'run this in the folder of the pipeline file (each workspace has its own store), or pass --store DIR',
    });
  }
  return openStore(path);
}

function keyValues(list: readonly string[] | undefined, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of list ?? []) {
    const i = kv.indexOf('=');
    if (i <= 0) throw new BerthError('BERTH_USAGE', `${what} "${kv}" is not KEY=VALUE`);
    out[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return out;
}

const STATUS_COLOR: Record<JobStatus, Color> = {
  queued: 'gray',
  running: 'cyan',
  passed: 'green',
  failed: 'red',
  skipped: 'gray',
  timed_out: 'red',
  cancelled: 'yellow',
};
const JOB_COLORS: Color[] = ['cyan', 'magenta', 'blue', 'yellow', 'green'];

interface RunFlags {
  job?: string[];
  docker?: string;
  var?: string[];
  parallel?: string;
  json?: boolean;
  label?: string[];
  store?: string;
  grace?: string;
  registry?: string;
}

export function registerRun(program: Command): void {
  program
    .command('run')
    .description('run a berth.yml pipeline locally, each job in its own container, exactly as CI runs it')
    .argument('[file]', 'the pipeline file', 'berth.yml')
    .option('--job <name>', 'run only this job and what it needs (repeatable)', collect)
    .addOption(new Option('--docker <mode>', 'docker mode for every job').choices([...DOCKER_MODES]))
    .option('--var <K=V>', 'an environment variable for every step (repeatable)', collect)
    .option('--parallel <n>', 'jobs run at once (default: CPU count)')
    .option('--json', 'print one JSON event per line')
    .option(
      '--registry <host:port>',
      'an image registry jobs push to, as BERTH_REGISTRY (default: $BERTH_REGISTRY)',
    )
    .option('--grace <duration>', 'time between SIGTERM and SIGKILL when stopping', '10s')
    .addOption(
      new Option('--label <K=V>', 'extra label on every object (tests)').argParser(collect).hideHelp(),
    )
    .addOption(
      new Option('--store <dir>', "the run store folder (default: the workspace's, outside it)").hideHelp(),
    )
    .action(async (file: string, o: RunFlags) => {
      const spec = loadRunSpec(file);
      const parallel = o.parallel === undefined ? undefined : Number(o.parallel);
      if (parallel !== undefined && (!Number.isInteger(parallel) || parallel < 1)) {
        throw new BerthError('BERTH_USAGE', `--parallel takes a positive whole number, not "${o.parallel}"`);
      }
      for (const j of o.job ?? []) {
        if (!spec.jobs.some((x) => x.name === j)) {
          throw new BerthError('BERTH_USAGE', `--job ${j}: no such job in ${spec.file}`, {
            hint: `jobs: ${spec.jobs.map((x) => x.name).join(', ')}`,
          });
        }
      }
      const graceMs = parseDuration(o.grace ?? '10s');
      if (graceMs === undefined)
        throw new BerthError('BERTH_USAGE', `--grace "${o.grace}" is not a duration`);
      const color = !o.json && useColor(process.stdout);
      const jobColor = new Map(
        spec.jobs.map((j, i) => [j.name, JOB_COLORS[i % JOB_COLORS.length] ?? 'cyan']),
      );
      const width = Math.max(...spec.jobs.map((j) => j.name.length));
      const print = (e: RunEvent) => {
        if (o.json) {
          process.stdout.write(`${JSON.stringify(e)}\n`);
          return;
        }
        if (e.kind === 'run.finished' || e.kind === 'job.queued') return;
        let text = formatEvent(e);
        if ('job' in e && e.job !== undefined) {
          const prefix = `${e.job.padEnd(width)} |`;
          const body = text.replace(/^\[[^\]]*\] ?/, '');
          const step =
            e.kind === 'log' && e.step !== undefined ? `${e.step + 1}` : e.kind === 'log' ? '#' : '*';
          text = `${paint(prefix, jobColor.get(e.job) ?? 'cyan', color)} ${paint(step, 'gray', color)} ${
            e.kind === 'warning'
              ? paint(body, 'yellow', color)
              : e.kind === 'job.finished'
                ? paint(body, STATUS_COLOR[e.status], color)
                : body
          }`;
        } else if (e.kind === 'warning') {
          text = paint(text, 'yellow', color);
        }
        (e.kind === 'warning' ? process.stderr : process.stdout).write(`${text}\n`);
      };
      const cancel = new AbortController();
      const force = new AbortController();
      const onSignal = () => {
        if (!cancel.signal.aborted) {
          process.stderr.write('berth: stopping (running steps get SIGTERM); press Ctrl-C again to force\n');
          cancel.abort();
        } else if (!force.signal.aborted) {
          process.stderr.write('berth: forcing stop\n');
          force.abort();
        }
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      try {
        const outcome = await runPipeline({
          spec,
          jobs: o.job,
          docker: o.docker as DockerMode | undefined,
          vars: keyValues(o.var, '--var'),
          parallel,
          labels: keyValues(o.label, '--label'),
          storeDir: o.store === undefined ? undefined : resolve(o.store),
          signal: cancel.signal,
          forceSignal: force.signal,
          graceMs,
          registry: o.registry ?? (process.env.BERTH_REGISTRY || undefined),
          // Tests that kill runners on purpose turn this off so one test's run does not reap
          // another test's victim before it looks at it.
          reapFirst: process.env.BERTH_NO_REAP_ON_START !== '1',
          onEvent: print,
        });
        if (!o.json) {
          const rows = outcome.jobs.map((j) => [
            j.job,
            paint(j.status, STATUS_COLOR[j.status], color),
            formatDuration(j.durationMs),
            j.exitCode === undefined ? '-' : String(j.exitCode),
          ]);
          process.stdout.write(`\n${table(['job', 'status', 'duration', 'exit'], rows)}\n`);
          process.stdout.write(
            `run ${outcome.runId} ${outcome.status}; logs in ${outcome.storeDir}/runs/${outcome.runId}/\n`,
          );
        }
        process.exitCode = outcome.exitCode;
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    });

  program
    .command('ls')
    .description('list recent runs from the run store')
    .option('--store <dir>', "the run store folder (default: this folder's, as berth run stores it)")
    .option('-n, --limit <n>', 'how many runs', '20')
    .option('--json', 'print JSON')
    .action((o: { store?: string; limit: string; json?: boolean }) => {
      using store = existingStore(o.store);
      const runs = store.listRuns(Number(o.limit) || 20);
      if (o.json) {
        process.stdout.write(
          `${JSON.stringify(
            runs.map((r) => ({ ...r, jobs: store.jobs(r.id) })),
            null,
            2,
          )}\n`,
        );
        return;
      }
      const rows = runs.map((r) => {
        const jobs = store.jobs(r.id);
        const dur = r.finished_at
          ? formatDuration(Date.parse(r.finished_at) - Date.parse(r.started_at))
          : '-';
        return [
          r.id,
          r.pipeline,
          r.status,
          r.started_at.replace('T', ' ').slice(0, 19),
          dur,
          `${jobs.filter((j) => j.status === 'passed').length}/${jobs.length}`,
          r.commit_sha?.slice(0, 8) ?? '-',
        ];
      });
      process.stdout.write(
        `${table(['run', 'pipeline', 'status', 'started (UTC)', 'duration', 'jobs passed', 'commit'], rows)}\n`,
      );
    });

  program
    .command('logs')
    .description('print the saved logs of a run (or one job of it); RUN may be an id prefix or "last"')
    .argument('<run>', 'run id, unique prefix, or last')
    .argument('[job]', 'only this job')
    .option('--store <dir>', "the run store folder (default: this folder's, as berth run stores it)")
    .action((runRef: string, job: string | undefined, o: { store?: string }) => {
      using store = existingStore(o.store);
      const run = store.resolveRun(runRef);
      const jobs = store.jobs(run.id);
      if (job !== undefined && !jobs.some((j) => j.name === job)) {
        throw new BerthError('RUN_NOT_FOUND', `run ${run.id} has no job "${job}"`, {
          hint: `jobs: ${jobs.map((j) => j.name).join(', ')}`,
        });
      }
      for (const j of jobs) {
        if (job !== undefined && j.name !== job) continue;
        if (job === undefined)
          process.stdout.write(`=== ${j.name} (${j.status}${j.reason ? `: ${j.reason}` : ''})\n`);
        process.stdout.write(store.readLog(run.id, j.name));
      }
    });

  program
    .command('reap')
    .description(
      'remove leftovers (containers, networks, volumes) of runs whose runner died, or a kept environment with --tenant',
    )
    .option('--run <id>', 'only this run')
    .option('--force', 'with --run: remove even if its runner looks alive')
    .option(
      '--tenant <name>',
      'remove every container, network and volume of this tenant instead (a kept environment such as env/production)',
    )
    .option('--store <dir>', "also mark dead runs in this store as abandoned (default: this folder's)")
    .addOption(new Option('--label <K=V>', 'only objects with this label').argParser(collect).hideHelp())
    .action(
      async (o: { run?: string; force?: boolean; tenant?: string; store?: string; label?: string[] }) => {
        using client = new DockerClient();
        if (o.tenant !== undefined && (o.run !== undefined || o.force))
          throw new BerthError(
            'BERTH_USAGE',
            '--tenant removes a whole environment; it takes no --run or --force',
          );
        const counts = (x: ReapResult) =>
          `${x.containers} container(s), ${x.networks} network(s), ${x.volumes} volume(s)`;
        let r;
        if (o.tenant !== undefined) {
          r = await reapTenant(client, o.tenant, o.label);
          process.stdout.write(`removed tenant ${o.tenant}: ${counts(r)}\n`);
        } else {
          const storeDir = resolve(o.store ?? defaultStoreDir('.'));
          const store = existsSync(join(storeDir, 'berth.db')) ? openStore(storeDir) : undefined;
          try {
            r = await reap(client, { runId: o.run, force: o.force, store, labelFilter: o.label });
          } finally {
            store?.close();
          }
          process.stdout.write(
            `reaped ${r.runs.length} run(s)${r.runs.length ? ` (${r.runs.join(', ')})` : ''}: ${counts(r)}\n`,
          );
        }
        for (const e of r.errors) process.stderr.write(`berth: ${e}\n`);
        if (r.errors.length) process.exitCode = 1;
      },
    );
}
