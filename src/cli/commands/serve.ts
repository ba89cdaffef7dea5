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
  const { ServerStore, openSql } = await serverApi();
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
    .action(
      async (o: {
        port: string;
        host: string;
        data: string;
        db?: string;
        concurrency: string;
        token?: string;
        sampleSeconds: string;
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
    .option('--data <dir>', 'server data dir', '.berth/server')
    .option('--db <url>', 'server store URL')
    .action(
      async (
        name: string,
        o: { repo: string; secret: string; branch?: string; poll?: string; data: string; db?: string },
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
          });
          process.stdout.write(`project ${p.name} (${p.id}): webhook at /hooks/${p.name}\n`);
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
          process.stdout.write(`${p.name}\t${p.repoUrl}\t${p.branch ?? '*'}\n`);
      } finally {
        await store.close();
      }
    });
}
