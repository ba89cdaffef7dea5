import type { Command } from 'commander';
import { engineDown, engineStatus, engineUp } from '../../engine/index.js';

export function registerEngine(program: Command): void {
  const engine = program
    .command('engine')
    .description('make sure a Docker engine answers (install and start one on Debian if needed)');
  engine
    .command('up')
    .description(
      'use the engine at DOCKER_HOST or the default socket; otherwise install docker.io and start dockerd',
    )
    .option('--with-image-tools', 'also install what `berth images build-local` needs (debootstrap)')
    .option('--timeout <seconds>', 'how long to wait for /_ping', '60')
    .action(async (o: { withImageTools?: boolean; timeout: string }) => {
      const log = (l: string) => process.stderr.write(`${l}\n`);
      const extra = o.withImageTools ? ['debootstrap', 'busybox-static'] : [];
      const r = await engineUp({ extraPackages: extra, readyTimeoutMs: Number(o.timeout) * 1000, log });
      if (r.action === 'existing') {
        process.stdout.write(`engine: using the daemon at ${r.endpoint} (API ${r.ping.apiVersion})\n`);
      } else {
        process.stdout.write(
          `engine: dockerd started by berth (pid ${r.pid}) at ${r.endpoint} (API ${r.ping.apiVersion}); log: ${r.logFile}\n`,
        );
      }
    });
  engine
    .command('down')
    .description('stop the dockerd that `berth engine up` started (and nothing else)')
    .action(async () => {
      const r = await engineDown();
      process.stdout.write(
        r.action === 'stopped'
          ? `engine: stopped dockerd (pid ${r.pid})\n`
          : `engine: nothing to stop — ${r.detail}\n`,
      );
    });
  engine
    .command('status')
    .description('where the engine is and whether berth started it')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const s = await engineStatus();
      if (o.json) {
        process.stdout.write(`${JSON.stringify(s)}\n`);
        return;
      }
      process.stdout.write(
        `endpoint: ${s.endpoint}\nreachable: ${s.reachable ? `yes (API ${s.apiVersion ?? '?'})` : 'no'}\n`,
      );
      process.stdout.write(
        s.startedByBerth
          ? `started by berth: pid ${s.startedByBerth.pid} (${s.startedByBerth.running ? 'running' : 'gone'}), log ${s.startedByBerth.logFile}\n`
          : 'started by berth: no\n',
      );
      if (!s.reachable) process.exitCode = 1;
    });
}
