/**
 * The contenders: the raw socket (DooD), HAProxy as a path-filtering socket proxy (the common
 * choice), berth guard, a nested daemon started the plain way (TCP, as a stock docker:dind), and
 * berth dind. Each is started here and stopped after the run.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BerthError, deadline, sleep } from '../common/index.js';
import { DockerClient, parseEndpoint } from '../engine/index.js';
import type { Contender, ContenderId } from './types.js';
import { LABEL_BENCH, benchLabels } from './reap.js';

export function rawContender(): Contender {
  const client = new DockerClient();
  return {
    id: 'raw',
    title: 'raw socket (DooD)',
    dockerHost: client.dockerHost,
    client,
    shared: true,
    stop: () => {
      client.close();
      return Promise.resolve();
    },
  };
}

/**
 * HAProxy configured the way path-filtering socket proxies are: sections of the API allowed by
 * path prefix (containers, images, exec, build, networks, volumes, events, info/version/ping,
 * POST allowed), everything else refused. It inspects nothing but the URL.
 */
export function haproxyConfig(socket: string, upstreamSocket: string): string {
  const allowed = [
    '_ping',
    'version',
    'info',
    'events',
    'containers',
    'images',
    'exec',
    'build',
    'networks',
    'volumes',
    'system',
    'distribution',
    'commit',
    'auth',
  ];
  return [
    'global',
    '  maxconn 4096',
    '',
    'defaults',
    '  mode http',
    '  timeout connect 5s',
    '  timeout client 10m',
    '  timeout server 10m',
    '  timeout tunnel 1h',
    '',
    'frontend docker',
    `  bind unix@${socket} mode 666`,
    '  http-request set-var(txn.api) path,regsub(^/v[0-9.]+/,/)',
    `  acl allowed var(txn.api) -m reg ^/(${allowed.join('|')})(/|$)`,
    '  http-request deny unless allowed',
    '  default_backend engine',
    '',
    'backend engine',
    `  server engine ${upstreamSocket}`,
    '',
  ].join('\n');
}

export async function haproxyContender(): Promise<Contender> {
  const bin = ['/usr/sbin/haproxy', '/usr/bin/haproxy'].find((p) => existsSync(p));
  if (!bin)
    throw new BerthError('BERTH_CONFIG', 'haproxy is not installed', { hint: 'apt-get install haproxy' });
  const upstream = parseEndpoint();
  if (upstream.kind !== 'unix')
    throw new BerthError('BERTH_CONFIG', 'the haproxy contender needs a unix-socket engine');
  const dir = mkdtempSync(join(tmpdir(), 'berth-bench-haproxy-'));
  const socket = join(dir, 'docker.sock');
  const cfg = join(dir, 'haproxy.cfg');
  writeFileSync(cfg, haproxyConfig(socket, upstream.socketPath));
  return proxyProcess('haproxy', 'HAProxy path filter', dir, socket, bin, ['-db', '-f', cfg], 20_000);
}

export async function waitReady(
  client: DockerClient,
  child: ChildProcess | undefined,
  log: () => string,
  ms = 20_000,
): Promise<void> {
  const left = deadline(ms);
  for (;;) {
    if (child && child.exitCode !== null) {
      throw new BerthError('BERTH_INTERNAL', `contender exited with ${child.exitCode}: ${log().slice(-500)}`);
    }
    try {
      await client.ping();
      return;
    } catch (err) {
      if (left() <= 0) throw err;
      await sleep(50);
    }
  }
}

export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/**
 * Resident set size in bytes (Linux) of a process and every process under it (the guard's is the
 * Node process and its C front), or undefined when the process is gone.
 */
export function rssOf(pid: number): number | undefined {
  const own = vmRss(pid);
  if (own === undefined) return undefined;
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const ppid = parentOf(Number(entry));
    if (ppid === undefined) continue;
    const siblings = children.get(ppid);
    if (siblings) siblings.push(Number(entry));
    else children.set(ppid, [Number(entry)]);
  }
  let total = own;
  const todo = [...(children.get(pid) ?? [])];
  for (let p = todo.pop(); p !== undefined; p = todo.pop()) {
    total += vmRss(p) ?? 0;
    todo.push(...(children.get(p) ?? []));
  }
  return total;
}

function vmRss(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** A process's parent pid from /proc/PID/stat (its name, in parentheses, may hold anything). */
function parentOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    return Number.isInteger(ppid) ? ppid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The built berth CLI, run as users run it: plain node on dist/, whatever runs the bench. A
 * TypeScript loader in the guard's process would change what is measured: it grows the heap, and
 * at that size V8 collects the relay's upload buffers with full mark-compacts (see
 * cli/commands/serve.ts). `npm run bench` builds first.
 */
export function berthCommand(): string[] {
  const fromSource = import.meta.url.endsWith('.ts');
  const main = fileURLToPath(
    new URL(fromSource ? '../../dist/cli/main.js' : '../cli/main.js', import.meta.url),
  );
  if (!existsSync(main))
    throw new BerthError('BERTH_USAGE', `the bench runs the built CLI, and ${main} does not exist`, {
      hint: 'run npm run build (npm run bench does)',
    });
  return [process.execPath, main];
}

/** berth guard as a separate process (so its memory can be read), one tenant, on a unix socket. */
export async function guardContender(): Promise<Contender> {
  const dir = mkdtempSync(join(tmpdir(), 'berth-bench-guard-'));
  const socket = join(dir, 'docker.sock');
  const [node = process.execPath, ...args] = berthCommand();
  return proxyProcess(
    'guard',
    'berth guard',
    dir,
    socket,
    node,
    [
      ...args,
      'guard',
      '--tenant',
      `bench-${process.pid}`,
      '--listen',
      socket,
      // The labels the scenarios put on what they make: the guard's own, so the tenant may repeat
      // them (labels under io.berth. are berth's).
      ...Object.entries(benchLabels({ [LABEL_BENCH]: 'guard' })).flatMap(([k, v]) => [
        '--label',
        `${k}=${v}`,
      ]),
    ],
    60_000,
  );
}

/** A proxy contender running as its own process on a unix socket in `dir` (removed on stop). */
async function proxyProcess(
  id: ContenderId,
  title: string,
  dir: string,
  socket: string,
  bin: string,
  args: string[],
  readyMs: number,
): Promise<Contender> {
  const child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const client = new DockerClient({ env: { DOCKER_HOST: `unix://${socket}` } });
  await waitReady(client, child, () => stderr, readyMs);
  return {
    id,
    title,
    dockerHost: `unix://${socket}`,
    client,
    shared: true,
    pid: child.pid,
    stop: async () => {
      client.close();
      await stopChild(child);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
