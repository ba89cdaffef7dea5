import type { Command } from 'commander';
import { BerthError } from '../../common/index.js';
import { startGuardThread } from '../../guard/index.js';

function collect(v: string, prev: string[]): string[] {
  return [...prev, v];
}

/** `--label KEY=VALUE`: a label the guard puts on everything the tenant creates. */
export function parseLabel(spec: string): [string, string] {
  const i = spec.indexOf('=');
  if (i <= 0) throw new BerthError('BERTH_USAGE', `--label ${spec}: expected KEY=VALUE`);
  const key = spec.slice(0, i);
  if (key === 'io.berth.tenant')
    throw new BerthError('BERTH_USAGE', `--label ${spec}: the tenant label is the guard's (--tenant)`);
  return [key, spec.slice(i + 1)];
}

export function parseMap(spec: string): { jobPath: string; hostPath: string } {
  const i = spec.indexOf('=');
  const jobPath = spec.slice(0, i);
  const hostPath = spec.slice(i + 1);
  if (i <= 0 || !jobPath.startsWith('/') || !hostPath.startsWith('/')) {
    throw new BerthError('BERTH_USAGE', `--map ${spec}: expected JOBPATH=HOSTPATH, both absolute`);
  }
  return { jobPath, hostPath };
}

export function registerGuard(program: Command): void {
  program
    .command('guard')
    .description('serve a guarded Docker API socket for one tenant (foreground; SIGTERM cleans up)')
    .requiredOption(
      '--tenant <name>',
      'the tenant (a CI job, or a persistent environment like env/production)',
    )
    .requiredOption('--listen <address>', 'socket path, or tcp://HOST:PORT')
    .option('--upstream <address>', 'the engine (default: DOCKER_HOST or the default socket)')
    .option(
      '--map <JOBPATH=HOSTPATH>',
      'translate bind sources from the job’s view to the host’s (repeatable)',
      collect,
      [],
    )
    .option(
      '--policy <file>',
      'a policy file: rules loosened for trusted tenants, limits, allowed registries (docs/guard.md)',
    )
    .option(
      '--label <KEY=VALUE>',
      'a label the guard puts on everything the tenant creates (repeatable; the tenant may repeat it)',
      collect,
      [],
    )
    .option('--audit <file|->', 'write one JSON line per decision')
    .option('--keep', 'keep the tenant’s objects when the guard stops')
    .option('--insecure-tcp', 'allow tcp:// without TLS client certificates')
    .option(
      '--bind-pins <mode>',
      'bind sources below a mapped folder: auto (pin them where possible) or roots (mapped folders only)',
      'auto',
    )
    .option(
      '--bulk-relay <mode>',
      'save, export, cp out and logs: splice (moved by the kernel where the helper was built) or javascript',
      'splice',
    )
    .option('--tls-cert <file>', 'server certificate (tcp://)')
    .option('--tls-key <file>', 'server key (tcp://)')
    .option('--tls-ca <file>', 'CA for client certificates (tcp://)')
    .action(
      async (o: {
        tenant: string;
        listen: string;
        upstream?: string;
        map: string[];
        label: string[];
        policy?: string;
        audit?: string;
        keep?: boolean;
        insecureTcp?: boolean;
        bindPins: string;
        bulkRelay: string;
        tlsCert?: string;
        tlsKey?: string;
        tlsCa?: string;
      }) => {
        const tls =
          o.tlsCert && o.tlsKey && o.tlsCa ? { cert: o.tlsCert, key: o.tlsKey, ca: o.tlsCa } : undefined;
        if (o.bindPins !== 'auto' && o.bindPins !== 'roots')
          throw new BerthError('BERTH_USAGE', `--bind-pins ${o.bindPins}: expected auto or roots`);
        if (o.bulkRelay !== 'splice' && o.bulkRelay !== 'javascript')
          throw new BerthError('BERTH_USAGE', `--bulk-relay ${o.bulkRelay}: expected splice or javascript`);
        // The guard runs in a worker thread of its own, as the runner's do: its heap then holds the
        // guard alone. In this thread, next to the CLI's modules, a guard that had served a few
        // thousand API requests collected with a full mark-compact every 20 MB of build context
        // streamed through it, and uploaded about 10% slower (docs/guard.md, "Performance notes").
        const guard = await startGuardThread({
          tenant: o.tenant,
          listen: o.listen,
          upstream: o.upstream,
          maps: o.map.map(parseMap),
          labels: Object.fromEntries(o.label.map(parseLabel)),
          policy: o.policy,
          audit: o.audit,
          keep: o.keep === true,
          tls,
          insecureTcp: o.insecureTcp === true,
          bindPins: o.bindPins,
          bulkRelay: o.bulkRelay,
        });
        process.stderr.write(`berth guard: tenant ${o.tenant} ready at ${guard.address}\n`);
        process.stdout.write(`DOCKER_HOST=${guard.address}\n`);
        await new Promise<void>((resolve) => {
          let stopping = false;
          const stop = (sig: string) => {
            if (stopping) return;
            stopping = true;
            process.stderr.write(
              `berth guard: ${sig}: ${o.keep ? 'keeping' : 'removing'} the tenant's objects\n`,
            );
            guard.close({ cleanup: !o.keep }).then(resolve, (err: unknown) => {
              process.stderr.write(`berth guard: cleanup failed: ${String(err)}\n`);
              process.exitCode = 1;
              resolve();
            });
          };
          process.once('SIGTERM', () => stop('SIGTERM'));
          process.once('SIGINT', () => stop('SIGINT'));
        });
      },
    );
}
