import type { Command } from 'commander';
import { Option } from 'commander';
import { BerthError } from '../../common/index.js';
import { DockerClient } from '../../engine/index.js';
import { listDind, purgeCache, startDind, stopDind } from '../../dind/index.js';

const collect = (v: string, prev: string[]) => [...prev, v];

function intOption(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new BerthError('BERTH_USAGE', `${flag} "${v}" is not an integer`);
  return n;
}

export function registerDind(program: Command): void {
  const dind = program.command('dind').description('nested Docker daemons in sidecar containers');
  dind
    .command('up')
    .description('start a nested dockerd; prints the DOCKER_HOST to use once the daemon answers')
    .requiredOption('--name <name>', 'name of the daemon (sidecar berth-dind-<name>)')
    .option(
      '--image <image>',
      'image with dockerd (default berth-local/dind; name docker:dind here to use it)',
    )
    .option('--cache <key>', 'keep /var/lib/docker in the volume berth-dind-cache-<key>')
    .addOption(
      new Option('--cache-busy <what>', 'when the cache is in use: wait, ephemeral or fail')
        .choices(['wait', 'ephemeral', 'fail'])
        .default('wait'),
    )
    .option('--cache-wait <seconds>', 'how long --cache-busy wait waits', '600')
    .option('--cache-max-bytes <n>', 'prune the cache on down when it is larger')
    .option('--socket-dir <dir>', 'host directory for docker.sock (default: a fresh dir)')
    .option('--tcp <port>', 'listen on TCP in the sidecar (jobs share its network namespace)')
    .option('--tls <bool>', 'with --tcp: generate TLS certificates (true) or not (false)', 'true')
    .option('--registry-mirror <url>', 'registry mirror (repeatable)', collect, [])
    .option('--insecure-registry <host>', 'insecure registry (repeatable)', collect, [])
    .option('--mtu <n>', 'MTU of the nested bridge (default: the sidecar interface MTU)')
    .option('--storage-driver <driver>', 'default: overlay2, else fuse-overlayfs, else vfs')
    .option('--network <network>', 'network of the sidecar')
    .option('--label <key=value>', 'label for the sidecar and its volumes (repeatable)', collect, [])
    .option('--timeout <seconds>', 'how long to wait for the daemon', '60')
    .option('--json', 'print JSON')
    .action(
      async (o: {
        name: string;
        image?: string;
        cache?: string;
        cacheBusy: 'wait' | 'ephemeral' | 'fail';
        cacheWait: string;
        cacheMaxBytes?: string;
        socketDir?: string;
        tcp?: string;
        tls: string;
        registryMirror: string[];
        insecureRegistry: string[];
        mtu?: string;
        storageDriver?: string;
        network?: string;
        label: string[];
        timeout: string;
        json?: boolean;
      }) => {
        if (!['true', 'false'].includes(o.tls))
          throw new BerthError('BERTH_USAGE', `--tls takes true or false, not "${o.tls}"`);
        const port = intOption('--tcp', o.tcp);
        const labels: Record<string, string> = {};
        for (const l of o.label) {
          const eq = l.indexOf('=');
          if (eq <= 0) throw new BerthError('BERTH_USAGE', `--label "${l}" is not key=value`);
          labels[l.slice(0, eq)] = l.slice(eq + 1);
        }
        using client = new DockerClient();
        const h = await startDind({
          name: o.name,
          image: o.image,
          cache: o.cache,
          cacheBusy: o.cacheBusy,
          cacheWaitMs: Number(o.cacheWait) * 1000,
          cacheMaxBytes: intOption('--cache-max-bytes', o.cacheMaxBytes),
          socketDir: o.socketDir,
          tcp: port === undefined ? undefined : { port, tls: o.tls === 'true' },
          registryMirrors: o.registryMirror,
          insecureRegistries: o.insecureRegistry,
          mtu: intOption('--mtu', o.mtu),
          storageDriver: o.storageDriver,
          network: o.network,
          labels,
          readyTimeoutMs: Number(o.timeout) * 1000,
          log: (l) => process.stderr.write(`${l}\n`),
          client,
        });
        const out = {
          name: h.name,
          dockerHost: h.dockerHost,
          jobDockerHost: h.jobDockerHost,
          socketDir: h.socketDir,
          certDir: h.certDir,
          containerId: h.containerId,
          storageDriver: h.storageDriver,
          privilegeMode: h.privilegeMode,
          cacheVolume: h.cacheVolume,
        };
        if (o.json) process.stdout.write(`${JSON.stringify(out)}\n`);
        else process.stdout.write(`${h.dockerHost}\n`);
      },
    );
  dind
    .command('down')
    .description(
      'stop a nested daemon: its containers and anonymous volumes go; the cache stays unless --purge',
    )
    .argument('<name>')
    .option('--purge', 'also remove the cache volume')
    .action(async (name: string, o: { purge?: boolean }) => {
      using client = new DockerClient();
      const r = await stopDind(client, name, {
        purge: o.purge,
        log: (l) => process.stderr.write(`${l}\n`),
      });
      process.stderr.write(
        `dind: ${r.removed ? `removed "${name}"` : `"${name}" was not running`}${r.purged ? `; purged ${r.purged}` : ''}\n`,
      );
    });
  dind
    .command('purge')
    .description('remove a kept cache volume (berth-dind-cache-<key>)')
    .argument('<key>')
    .action(async (key: string) => {
      using client = new DockerClient();
      const gone = await purgeCache(client, key);
      process.stderr.write(`dind: cache "${key}" ${gone ? 'removed' : 'did not exist'}\n`);
    });
  dind
    .command('ls')
    .description('list nested daemons')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      using client = new DockerClient();
      const list = await listDind(client);
      if (o.json) {
        process.stdout.write(`${JSON.stringify(list)}\n`);
        return;
      }
      process.stdout.write('NAME\tSTATE\tCACHE\tDOCKER_HOST\n');
      for (const d of list)
        process.stdout.write(
          `${d.name}\t${d.state}\t${d.cache ?? '-'}\t${d.socketDir ? `unix://${d.socketDir}/docker.sock` : '-'}\n`,
        );
    });
}
