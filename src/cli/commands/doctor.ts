import type { Command } from 'commander';
import { DockerClient } from '../../engine/index.js';
import { reportRows, runDoctor } from '../../doctor/index.js';
import { paint, table } from '../output.js';

export function registerDoctor(program: Command): void {
  program
    .command('doctor')
    .description(
      'report what this host can do: engine, storage, cgroups, privileges, runtimes, iptables, berth modes',
    )
    .option('--json', 'print the report as JSON')
    .action(async (o: { json?: boolean }) => {
      using client = new DockerClient();
      const report = await runDoctor(client);
      if (o.json) {
        process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
      } else {
        const rows = reportRows(report).map(([k, v, d]) => {
          const color = /^(yes|available)$/.test(v) ? 'green' : /^(no|unavailable)$/.test(v) ? 'red' : 'cyan';
          return [k, paint(v, color), d];
        });
        process.stdout.write(`${table(['check', 'result', 'details'], rows)}\n`);
      }
      if (!report.engine.reachable) process.exitCode = 69;
    });
}
