import type { Command } from 'commander';
import { join } from 'node:path';
import { BerthError } from '../../common/index.js';

/**
 * The server (its SQL drivers, dashboard and queue) loads only for the commands that use it: a
 * process that runs `berth guard` keeps a small heap, and V8 collects a small heap's relay buffers
 * by cheap scavenges instead of full mark-compacts (measured: 46 mark-compacts per GiB of build
 * context with the server loaded, 2 without, and 15% more upload throughput).
 */
const serverApi = () => import('../../server/index.js');

async function openStore(data: string, db: string | undefined) {
  const { ServerStore, ensurePrivateDir, openSql } = await serverApi();
  // The same data folder `berth serve` uses: this user's own (it holds the webhook secrets).
  if (db === undefined) ensurePrivateDir(data, 'server data folder');
  return ServerStore.open(await openSql(db ?? `sqlite:${join(data, 'server.db')}`));
}

function positive(name: string, v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0)
    throw new BerthError('BERTH_USAGE', `--${name} takes a whole number, not ${v}`);
  return n;
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('the CI server: webhooks, a queue, a dashboard with live logs, history')
    .option('--port <n>', 'port to listen on', '8080')
    .option('--host <addr>', 'address to listen on', '127.0.0.1')
    .option('--data <dir>', 'where workspaces, run logs and the SQLite store live', '.berth/server')
    .option('--db <url>', 'sqlite:PATH (default <data>/server.db) or postgres://user@host/db')
    .option('--concurrency <n>', 'runs at once', '2')
    .option('--token <token>', 'API token (default: $BERTH_TOKEN); webhooks use their own signatures')
    .option('--sample-seconds <n>', 'how often a running job’s CPU and memory are sampled', '2')
    .option('--keep-artifacts <runs>', 'keep the artifacts of each project’s newest N runs (0: none)', '20')
    .option('--artifacts-max-mib <n>', 'the most MiB of artifacts one run keeps', '1024')
    .action(
      async (o: {
        port: string;
        host: string;
        data: string;
        db?: string;
        concurrency: string;
        token?: string;
        sampleSeconds: string;
        keepArtifacts: string;
        artifactsMaxMib: string;
      }) => {
        const token = o.token ?? process.env.BERTH_TOKEN;
        if (!token)
          process.stderr.write('berth serve: no --token: the API is open to anyone who can reach it\n');
        const { startServer } = await serverApi();
        const server = await startServer({
          port: positive('port', o.port),
          host: o.host,
          dataDir: o.data,
          db: o.db,
          concurrency: Math.max(1, positive('concurrency', o.concurrency)),
          token,
          sampleSeconds: Math.max(1, positive('sample-seconds', o.sampleSeconds)),
          artifacts: {
            keepRuns: positive('keep-artifacts', o.keepArtifacts),
            maxRunBytes: positive('artifacts-max-mib', o.artifactsMaxMib) * 2 ** 20,
          },
          log: (l) => process.stderr.write(`berth serve: ${l}\n`),
        });
        process.stdout.write(`berth serve: listening on ${server.url}\n`);
        await new Promise<void>((resolve) => {
          const stop = () => {
            process.stderr.write('berth serve: stopping (running runs are cancelled and cleaned up)\n');
            server.close().then(resolve, resolve);
          };
          process.once('SIGTERM', stop);
          process.once('SIGINT', stop);
        });
      },
    );

  const project = program.command('project').description('projects the server builds');
  project
    .command('add')
    .argument('<name>', 'project name')
    .requiredOption('--repo <url>', 'git URL or path')
    .requiredOption('--secret <secret>', 'webhook secret (GitHub/Gitea HMAC key, GitLab token)')
    .option('--branch <branch>', 'only build pushes to this branch')
    .option('--poll <seconds>', 'also poll the branch every N seconds (needs --branch)')
    .option(...PASS_ENV)
    .option(...ALLOW_DOCKER)
    .option('--data <dir>', 'server data dir', '.berth/server')
    .option('--db <url>', 'server store URL')
    .action(
      async (
        name: string,
        o: {
          repo: string;
          secret: string;
          branch?: string;
          poll?: string;
          passEnv: string[];
          allowDocker: string[];
          data: string;
          db?: string;
        },
      ) => {
        if (o.poll !== undefined && !o.branch) {
          throw new BerthError('BERTH_USAGE', '--poll needs --branch (the branch to watch)');
        }
        const store = await openStore(o.data, o.db);
        try {
          const p = await store.createProject({
            name,
            repoUrl: o.repo,
            secret: o.secret,
            branch: o.branch,
            pollSeconds: o.poll === undefined ? undefined : Math.max(5, positive('poll', o.poll)),
            grants: { env: o.passEnv, docker: o.allowDocker },
          });
          process.stdout.write(`project ${p.name} (${p.id}): webhook at /hooks/${p.name}\n`);
        } finally {
          await store.close();
        }
      },
    );
  project
    .command('grant')
    .description(
      "set what a project's pipelines may have beyond the defaults (replaces the project's grants; none given: nothing granted)",
    )
    .argument('<name>', 'project name')
    .option(...PASS_ENV)
    .option(...ALLOW_DOCKER)
    .option('--data <dir>', 'server data dir', '.berth/server')
    .option('--db <url>', 'server store URL')
    .action(
      async (name: string, o: { passEnv: string[]; allowDocker: string[]; data: string; db?: string }) => {
        const store = await openStore(o.data, o.db);
        try {
          const p = await store.setGrants(name, { env: o.passEnv, docker: o.allowDocker });
          process.stdout.write(`project ${p.name}: ${grantsText(p.grants)}\n`);
        } finally {
          await store.close();
        }
      },
    );
  project
    .command('ls')
    .option('--data <dir>', 'server data dir', '.berth/server')
    .option('--db <url>', 'server store URL')
    .action(async (o: { data: string; db?: string }) => {
      const store = await openStore(o.data, o.db);
      try {
        for (const p of await store.projects())
          process.stdout.write(`${p.name}\t${p.repoUrl}\t${p.branch ?? '*'}\t${grantsText(p.grants)}\n`);
      } finally {
        await store.close();
      }
    });
}

const collect = (v: string, all: string[]): string[] => [...all, ...v.split(',').filter((x) => x !== '')];

const PASS_ENV = [
  '--pass-env <name>',
  "a variable of the server's environment the project's pipelines may name in `secrets:` (repeatable; by default none: a pushed berth.yml gets nothing of the server's environment)",
  collect,
  [] as string[],
] as const;

const ALLOW_DOCKER = [
  '--allow-docker <mode>',
  "a docker mode beyond guard and none the project's jobs may use: dind or host (host is root on the server; repeatable)",
  collect,
  [] as string[],
] as const;

function grantsText(g: { env: readonly string[]; docker: readonly string[] }): string {
  return `env: ${g.env.length ? g.env.join(',') : '-'}; docker: guard,none${g.docker.length ? `,${g.docker.join(',')}` : ''}`;
}
