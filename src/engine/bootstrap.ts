/**
 * `berth engine up|down|status`: make sure a Docker engine answers. If one already answers at
 * DOCKER_HOST (or the default socket), use it. Otherwise, on Debian, install docker.io (and the
 * packages berth's local images need) with apt and start dockerd with its own data root, exec root
 * and pid file, detached, logging to a file; wait for /_ping. `down` stops only a daemon that
 * `up` started (recorded in a state file next to the pid file).
 */
import { spawn, spawnSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  fchmodSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { BerthError, deadline, sleep } from '../common/index.js';
import { DockerClient } from './client.js';
import type { PingResult } from './client.js';
import type { Endpoint } from './endpoint.js';
import { parseEndpoint } from './endpoint.js';

export interface EngineLayout {
  /** Where berth keeps the daemon's state: data root, log, state file. */
  stateDir: string;
  /** Run directory: pid file and exec root. */
  runDir: string;
  /** Socket the daemon listens on when berth starts it. */
  socket: string;
  dockerd: string;
}

export function defaultLayout(env: NodeJS.ProcessEnv = process.env): EngineLayout {
  return {
    stateDir: env.BERTH_ENGINE_STATE_DIR ?? '/var/lib/berth/engine',
    runDir: env.BERTH_ENGINE_RUN_DIR ?? '/run/berth',
    socket: env.BERTH_ENGINE_SOCKET ?? '/var/run/docker.sock',
    dockerd: env.BERTH_DOCKERD ?? '/usr/sbin/dockerd',
  };
}

export const APT_PACKAGES = ['docker.io', 'iptables', 'busybox-static'] as const;

export interface EnginePaths {
  dataRoot: string;
  execRoot: string;
  pidFile: string;
  logFile: string;
  stateFile: string;
}

export function enginePaths(l: EngineLayout): EnginePaths {
  return {
    dataRoot: join(l.stateDir, 'data'),
    execRoot: join(l.runDir, 'exec'),
    pidFile: join(l.runDir, 'dockerd.pid'),
    logFile: join(l.stateDir, 'dockerd.log'),
    stateFile: join(l.runDir, 'engine.json'),
  };
}

/** The dockerd command line berth uses. Pure. */
export function dockerdArgs(l: EngineLayout, extra: readonly string[] = []): string[] {
  const p = enginePaths(l);
  return [
    '--data-root',
    p.dataRoot,
    '--exec-root',
    p.execRoot,
    '--pidfile',
    p.pidFile,
    '-H',
    `unix://${l.socket}`,
    ...extra,
  ];
}

interface StartedState {
  pid: number;
  socket: string;
  startedAt: string;
  args: string[];
}

export type UpResult =
  | { action: 'existing'; endpoint: string; ping: PingResult }
  | {
      action: 'started';
      endpoint: string;
      ping: PingResult;
      pid: number;
      logFile: string;
      installed: string[];
    };

async function pingOnce(endpoint: Endpoint): Promise<PingResult | undefined> {
  const c = new DockerClient({ endpoint });
  try {
    return await c.ping();
  } catch {
    return undefined;
  } finally {
    c.close();
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function readState(file: string): StartedState | undefined {
  try {
    const s = JSON.parse(readFileSync(file, 'utf8')) as StartedState;
    return typeof s.pid === 'number' ? s : undefined;
  } catch {
    return undefined;
  }
}

function isDebian(): boolean {
  try {
    const osr = readFileSync('/etc/os-release', 'utf8');
    return /^(ID|ID_LIKE)=.*debian/m.test(osr) && existsSync('/usr/bin/apt-get');
  } catch {
    return false;
  }
}

function dpkgInstalled(pkg: string): boolean {
  const r = spawnSync('dpkg-query', ['-W', '-f=${Status}', pkg], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.includes('install ok installed');
}

/** Installs the Debian packages that are missing; answers which it installed. */
export function aptInstall(packages: readonly string[], log: (l: string) => void): string[] {
  const missing = packages.filter((p) => !dpkgInstalled(p));
  if (missing.length === 0) return [];
  if (!isDebian()) {
    throw new BerthError(
      'BOOTSTRAP_UNSUPPORTED',
      `cannot install ${missing.join(', ')}: this is not a Debian system with apt`,
      {
        hint: 'install Docker with your distribution’s packages, start it, and set DOCKER_HOST',
      },
    );
  }
  if (process.getuid?.() !== 0) {
    throw new BerthError('BOOTSTRAP_FAILED', `installing ${missing.join(', ')} needs root`, {
      hint: 'run `sudo berth engine up`',
    });
  }
  log(`installing with apt: ${missing.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const update = spawnSync('apt-get', ['update'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env,
    encoding: 'utf8',
  });
  if (update.status !== 0)
    throw new BerthError('BOOTSTRAP_FAILED', `apt-get update failed: ${update.stderr.slice(-500)}`);
  const inst = spawnSync('apt-get', ['install', '-y', '--no-install-recommends', ...missing], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env,
    encoding: 'utf8',
  });
  if (inst.status !== 0)
    throw new BerthError(
      'BOOTSTRAP_FAILED',
      `apt-get install ${missing.join(' ')} failed: ${inst.stderr.slice(-800)}`,
    );
  return missing;
}

function tail(file: string, lines = 15): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

export interface UpOptions {
  layout?: EngineLayout;
  env?: NodeJS.ProcessEnv;
  /** Extra dockerd flags (tests use --bridge none --iptables=false for a private daemon). */
  dockerdFlags?: readonly string[];
  /**
   * A command prefix for dockerd, e.g. `['unshare', '--net', '--']` to give a private test daemon
   * its own network namespace (a daemon with `--bridge none` deletes docker0 in its namespace).
   */
  launcher?: readonly string[];
  /** Extra apt packages to install alongside docker.io (e.g. what build-local needs). */
  extraPackages?: readonly string[];
  readyTimeoutMs?: number;
  log?: (line: string) => void;
}

export async function engineUp(o: UpOptions = {}): Promise<UpResult> {
  const env = o.env ?? process.env;
  const log = o.log ?? (() => undefined);
  const layout = o.layout ?? defaultLayout(env);
  const explicit = env.DOCKER_HOST !== undefined && env.DOCKER_HOST !== '';
  const endpoint = parseEndpoint(env);
  const existing = await pingOnce(endpoint);
  if (existing) return { action: 'existing', endpoint: endpoint.url, ping: existing };
  if (explicit && !(endpoint.kind === 'unix' && endpoint.socketPath === layout.socket)) {
    throw new BerthError('ENGINE_UNREACHABLE', `no engine answers at DOCKER_HOST=${env.DOCKER_HOST ?? ''}`, {
      hint: 'start that daemon, or unset DOCKER_HOST to let berth start one on the default socket',
    });
  }
  const paths = enginePaths(layout);
  const prior = readState(paths.stateFile);
  if (prior && isAlive(prior.pid)) {
    // Started earlier and still coming up: wait for it rather than start a second daemon.
    log(`dockerd ${prior.pid} (started by berth) is running; waiting for it`);
    const ping = await waitPing(layout.socket, o.readyTimeoutMs ?? 60_000, paths.logFile, prior.pid);
    return {
      action: 'started',
      endpoint: `unix://${layout.socket}`,
      ping,
      pid: prior.pid,
      logFile: paths.logFile,
      installed: [],
    };
  }
  const installed = existsSync(layout.dockerd)
    ? aptInstall(o.extraPackages ?? [], log)
    : aptInstall([...APT_PACKAGES, ...(o.extraPackages ?? [])], log);
  if (!existsSync(layout.dockerd)) {
    throw new BerthError('BOOTSTRAP_FAILED', `${layout.dockerd} is missing after installing docker.io`);
  }
  for (const d of [layout.stateDir, layout.runDir, paths.dataRoot, paths.execRoot, dirname(layout.socket)])
    mkdirSync(d, { recursive: true });
  if (existsSync(layout.socket)) rmSync(layout.socket, { force: true }); // stale: nothing answered on it
  const args = dockerdArgs(layout, o.dockerdFlags);
  // The daemon's log is root's to read (it names containers, images and registries).
  const fd = openSync(paths.logFile, 'a', 0o600);
  fchmodSync(fd, 0o600);
  // A stale pid file (from a daemon that was killed) stops dockerd from starting.
  if (existsSync(paths.pidFile)) {
    const old = Number(readFileSync(paths.pidFile, 'utf8').trim());
    if (!Number.isInteger(old) || old <= 0 || !isAlive(old)) rmSync(paths.pidFile, { force: true });
  }
  // dockerd needs many file descriptors (every attach/log stream holds several); service managers
  // raise the limit, a plain spawn inherits a small one, so raise it here.
  const launcher = o.launcher ?? ['/bin/sh', '-c', 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"'];
  const argv = [...launcher, layout.dockerd, ...args];
  const child = spawn(argv[0] ?? layout.dockerd, argv.slice(1), {
    detached: true,
    stdio: ['ignore', fd, fd],
    env: { ...process.env, ...env },
  });
  closeSync(fd);
  const pid = child.pid;
  if (pid === undefined) throw new BerthError('BOOTSTRAP_FAILED', `could not start ${layout.dockerd}`);
  child.unref();
  const state: StartedState = { pid, socket: layout.socket, startedAt: new Date().toISOString(), args };
  writeFileSync(paths.stateFile, `${JSON.stringify(state, null, 2)}\n`);
  log(`started dockerd (pid ${pid}), log: ${paths.logFile}`);
  const ping = await waitPing(layout.socket, o.readyTimeoutMs ?? 60_000, paths.logFile, pid);
  return {
    action: 'started',
    endpoint: `unix://${layout.socket}`,
    ping,
    pid,
    logFile: paths.logFile,
    installed,
  };
}

async function waitPing(socket: string, ms: number, logFile: string, pid: number): Promise<PingResult> {
  const endpoint: Endpoint = { kind: 'unix', socketPath: socket, url: `unix://${socket}` };
  const left = deadline(ms);
  for (;;) {
    const ping = await pingOnce(endpoint);
    if (ping) return ping;
    if (!isAlive(pid)) {
      throw new BerthError(
        'BOOTSTRAP_FAILED',
        `dockerd (pid ${pid}) exited before answering; last log lines (${logFile}):\n${tail(logFile)}`,
      );
    }
    if (left() <= 0) {
      throw new BerthError(
        'BOOTSTRAP_FAILED',
        `dockerd (pid ${pid}) did not answer /_ping within ${ms} ms; last log lines (${logFile}):\n${tail(logFile)}`,
      );
    }
    await sleep(100);
  }
}

export type DownResult =
  { action: 'stopped'; pid: number } | { action: 'not-started-by-berth'; detail: string };

/** Whether a running process is a dockerd (its command line's program; where /proc can tell). */
function isDockerd(pid: number): boolean {
  try {
    const argv0 = readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0')[0] ?? '';
    return argv0.endsWith('dockerd');
  } catch {
    return true; // no /proc to look in: the record is trusted, as before
  }
}

export async function engineDown(o: { layout?: EngineLayout; timeoutMs?: number } = {}): Promise<DownResult> {
  const layout = o.layout ?? defaultLayout();
  const paths = enginePaths(layout);
  const state = readState(paths.stateFile);
  if (!state)
    return {
      action: 'not-started-by-berth',
      detail: `no record in ${paths.stateFile}: berth did not start the engine, so it leaves it alone`,
    };
  if (!isAlive(state.pid) || !isDockerd(state.pid)) {
    // Gone, or the pid now names another process (a pid is reused): nothing of berth's to stop.
    rmSync(paths.stateFile, { force: true });
    return {
      action: 'not-started-by-berth',
      detail: `the dockerd berth started (pid ${state.pid}) is no longer running`,
    };
  }
  process.kill(state.pid, 'SIGTERM');
  const left = deadline(o.timeoutMs ?? 30_000);
  while (isAlive(state.pid)) {
    if (left() <= 0) {
      process.kill(state.pid, 'SIGKILL');
      break;
    }
    await sleep(100);
  }
  rmSync(paths.stateFile, { force: true });
  return { action: 'stopped', pid: state.pid };
}

export interface EngineStatus {
  endpoint: string;
  reachable: boolean;
  apiVersion: string | undefined;
  startedByBerth: { pid: number; running: boolean; logFile: string } | undefined;
}

export async function engineStatus(
  o: { layout?: EngineLayout; env?: NodeJS.ProcessEnv } = {},
): Promise<EngineStatus> {
  const layout = o.layout ?? defaultLayout(o.env);
  const endpoint = parseEndpoint(o.env ?? process.env);
  const ping = await pingOnce(endpoint);
  const paths = enginePaths(layout);
  const state = readState(paths.stateFile);
  return {
    endpoint: endpoint.url,
    reachable: ping !== undefined,
    apiVersion: ping?.apiVersion,
    startedByBerth: state
      ? { pid: state.pid, running: isAlive(state.pid), logFile: paths.logFile }
      : undefined,
  };
}
