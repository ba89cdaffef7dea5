import type { Command } from 'commander';
import { resolve } from 'node:path';
import { BerthError } from '../../common/index.js';
import type { ContenderId } from '../../bench/index.js';

const CONTENDERS: readonly ContenderId[] = ['raw', 'haproxy', 'guard', 'dind-plain', 'dind-berth'];

function intOption(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0)
    throw new BerthError('BERTH_USAGE', `--${name} takes a positive whole number, not ${v}`);
  return n;
}

export function registerBench(program: Command): void {
  program
    .command('bench')
    .description(
      'measure berth against the raw socket, an HAProxy path filter and nested daemons, side by side',
    )
    .option(
      '--quick',
      'run each scenario once with small payloads; fails if anything could not be measured (checks the bench still runs)',
    )
    .option(
      '--reps <n>',
      'repetitions per scenario (a repetition is one round of every contender; the stream and API scenarios take several)',
      '5',
    )
    .option('--scenario <id...>', 'only these scenarios')
    .option('--contender <id...>', `only these contenders (${CONTENDERS.join(', ')})`)
    .option('--payload-mib <n>', 'payload size for save/cp/context (MiB)')
    .option('--soak-seconds <n>', 'how long the load scenario runs against berth guard (default 300)')
    .option('--out <dir>', 'where to write latest.md and latest.json', 'bench/results')
    .action(
      async (opts: {
        quick?: boolean;
        reps: string;
        scenario?: string[];
        contender?: string[];
        payloadMib?: string;
        soakSeconds?: string;
        out: string;
      }) => {
        const quick = opts.quick === true;
        const contenders = (opts.contender ?? []).map((c) => {
          if (!CONTENDERS.includes(c as ContenderId))
            throw new BerthError('BERTH_USAGE', `unknown contender ${c}`, {
              hint: `one of ${CONTENDERS.join(', ')}`,
            });
          return c as ContenderId;
        });
        // Loaded on use, like the server: `berth guard` and `berth run` need none of it.
        const { listProblems, runBench, writeReport } = await import('../../bench/index.js');
        const report = await runBench({
          quick,
          reps: quick ? 1 : intOption('reps', opts.reps),
          only: opts.scenario ?? [],
          contenders,
          payloadMiB: opts.payloadMib ? intOption('payload-mib', opts.payloadMib) : quick ? 16 : 256,
          logsMiB: quick ? 8 : 100,
          soakSeconds: opts.soakSeconds ? intOption('soak-seconds', opts.soakSeconds) : quick ? 10 : 300,
          loadClients: quick ? 20 : 200,
          outDir: resolve(opts.out),
          log: (line) => process.stderr.write(`${line}\n`),
        });
        const { md, json } = writeReport(report, resolve(opts.out));
        process.stdout.write(`wrote ${md} and ${json}\n`);
        // --quick is the check that the bench still runs: anything it could not measure fails it.
        if (quick && report.skipped.length > 0)
          throw new BerthError(
            'BENCH_INCOMPLETE',
            `the quick bench could not measure: ${listProblems(report.skipped)}`,
          );
      },
    );
}
