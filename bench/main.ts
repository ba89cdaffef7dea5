/**
 * `npm run bench`: every scenario against every contender (src/bench), plus the dind cache bench
 * (bench/dind.ts), into bench/results/latest.{md,json}. Arguments as `berth bench`: --quick, --reps N.
 */
import { resolve } from 'node:path';
import { benchLabels, runBench, writeReport, ALL_SCENARIOS } from '../src/bench/index.js';
import { benchDind } from './dind.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const repsArg = args[args.indexOf('--reps') + 1];
const reps = quick ? 1 : args.includes('--reps') && repsArg ? Number(repsArg) : 5;
const out = resolve(new URL('.', import.meta.url).pathname, 'results');
const log = (line: string) => process.stderr.write(`${line}\n`);

const report = await runBench(
  {
    quick,
    reps,
    only: [],
    contenders: [],
    payloadMiB: quick ? 16 : 256,
    logsMiB: quick ? 8 : 100,
    soakSeconds: quick ? 10 : 300,
    loadClients: quick ? 20 : 200,
    outDir: out,
    log,
  },
  {
    measure: (o) => benchDind({ reps: o.quick ? 1 : 5, log, labels: benchLabels() }),
    notes: [
      'This host refuses --privileged (CAP_SYS_RESOURCE is not in its bounding set): both nested daemons run with the explicit-capabilities fallback.',
      'The load scenario runs the full 5-minute soak on berth guard; the raw socket and HAProxy get a 60 s reference run under the same load.',
    ],
  },
);
const titles = [
  ...ALL_SCENARIOS,
  { id: 'dind-up', title: 'berth dind: up to ready (warm image)' },
  { id: 'dind-build', title: 'Dockerfile build: fresh dind vs warm --cache vs berth guard' },
];
const { md, json } = writeReport(report, out, titles);
process.stdout.write(`wrote ${md} and ${json}\n`);
