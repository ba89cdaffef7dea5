/**
 * Bind sources, pinned. dockerd keeps a bind source as a path string and resolves it again at every
 * start, restart and archive call on a stopped container. A source inside a mapped job folder is
 * the tenant's to change: a folder checked at create time can be a symlink to `/` by the time the
 * container starts. So the guard never forwards such a path. It walks the source one component at
 * a time from the map's root, each step an O_PATH|O_NOFOLLOW open relative to the last (symlinks
 * are read and resolved by the walk itself, beneath the map roots), and forwards one of:
 * - the map root itself (the runner's folder: not the tenant's to swap);
 * - a pin: the walked inode bind-mounted by the guard (from its file descriptor, so no path is
 *   looked up again) onto a folder under /run/berth/pins that only root can write.
 * Where the guard cannot mount (not root, no `mount`, or dockerd does not see the guard's mounts:
 * another mount or pid namespace), only map roots are allowed. Detected once per process and engine.
 */
import { spawn } from 'node:child_process';
import {
  closeSync,
  constants,
  existsSync,
  fstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  realpathSync,
  rmSync,
  rmdirSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, posix } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { PathMap } from './contracts.js';
import { isInside, mapFor } from './policy.js';

/** Linux's O_PATH (asm-generic value: x86, arm, riscv); node:fs does not export it. */
const O_PATH = 0o10000000;
const MAX_LINKS = 40;

export const PINS_DIR = '/run/berth/pins';

export type PinMode = 'mount' | 'roots';

/** Why a bind source cannot be used; `outside` is the binds rule, the others are dockerd-style 400s. */
export class BindSourceError extends Error {
  constructor(
    readonly reason: 'outside' | 'missing' | 'loop' | 'not-a-directory' | 'not-a-root',
    message: string,
  ) {
    super(message);
  }
}

export interface Walked {
  /** O_PATH descriptor of what the source names (the caller closes it). */
  fd: number;
  /** The map root it is under (realpath), and whether it is that root itself. */
  root: string;
  atRoot: boolean;
  /** Host path as walked (for messages and inspect; never forwarded when a pin exists). */
  path: string;
  dev: number;
  ino: number;
  dir: boolean;
}

interface Place {
  root: string;
  rest: string[];
}

function components(p: string): string[] {
  return p.split('/').filter((c) => c !== '' && c !== '.');
}

/** The map (longest host root) a host path is in, with the components below its root. */
function placeHost(hostPath: string, roots: readonly string[]): Place | undefined {
  let best: string | undefined;
  for (const r of roots) if (isInside(hostPath, r) && (!best || r.length > best.length)) best = r;
  if (best === undefined) return undefined;
  return { root: best, rest: components(hostPath.slice(best.length)) };
}

function rootsOf(maps: readonly PathMap[]): { real: Map<string, string>; list: string[] } {
  const real = new Map<string, string>();
  for (const m of maps) {
    try {
      real.set(posix.normalize(m.hostPath), realpathSync(m.hostPath));
    } catch {
      // A map whose host folder does not exist holds nothing.
    }
  }
  return { real, list: [...new Set(real.values())] };
}

/** Where a job path lands: the map holding it (see mapFor), its real root, and the rest. */
function placeJob(jobPath: string, maps: readonly PathMap[], real: Map<string, string>): Place | undefined {
  const found = mapFor(jobPath, maps);
  const root = found && real.get(posix.normalize(found.map.hostPath));
  if (!found || root === undefined) return undefined;
  return { root, rest: components(found.rest) };
}

const errno = (e: unknown): string => (e as NodeJS.ErrnoException).code ?? '';

/**
 * Opens what a bind source (a job path) names, walking beneath the maps' roots and resolving
 * symlinks itself: a relative target from where it is, an absolute one as a job path (what a
 * symlink made inside the job means) or else as a host path inside a map. `..` never leaves a root.
 * With `create`, missing folders are made as dockerd makes them for `Binds` (0755).
 */
export function openBeneath(source: string, maps: readonly PathMap[], create: boolean): Walked {
  const { real, list } = rootsOf(maps);
  const start = placeJob(posix.normalize(source), maps, real);
  if (!start) throw new BindSourceError('outside', `bind source ${source} is not inside a mapped job path`);
  let root = start.root;
  let todo = start.rest;
  const stack: number[] = [openSync(root, O_PATH | constants.O_DIRECTORY)];
  const names: string[] = [];
  let links = 0;
  const reset = (place: Place) => {
    for (const fd of stack.splice(0)) closeSync(fd);
    names.length = 0;
    root = place.root;
    stack.push(openSync(root, O_PATH | constants.O_DIRECTORY));
  };
  try {
    while (todo.length > 0) {
      const c = todo[0] ?? '';
      todo = todo.slice(1);
      if (c === '..') {
        if (stack.length === 1)
          throw new BindSourceError('outside', `bind source ${source} leads out of its mapped job path`);
        closeSync(stack.pop() ?? -1);
        names.pop();
        continue;
      }
      const top = stack[stack.length - 1] ?? -1;
      if (!fstatSync(top).isDirectory())
        throw new BindSourceError(
          'not-a-directory',
          `bind source ${source}: ${names.join('/')} is not a folder`,
        );
      const at = `/proc/self/fd/${top}/${c}`;
      let fd: number;
      try {
        fd = openSync(at, O_PATH | constants.O_NOFOLLOW);
      } catch (e) {
        if (errno(e) !== 'ENOENT') throw e;
        if (!create) throw new BindSourceError('missing', `bind source path does not exist: ${source}`);
        try {
          mkdirSync(at, 0o755);
        } catch (m) {
          if (errno(m) !== 'EEXIST') throw m;
        }
        fd = openSync(at, O_PATH | constants.O_NOFOLLOW);
      }
      const st = fstatSync(fd);
      if (!st.isSymbolicLink()) {
        stack.push(fd);
        names.push(c);
        continue;
      }
      closeSync(fd);
      if (++links > MAX_LINKS)
        throw new BindSourceError('loop', `bind source ${source}: too many levels of symbolic links`);
      const target = readlinkSync(at);
      if (target.startsWith('/')) {
        const place =
          placeJob(posix.normalize(target), maps, real) ?? placeHost(posix.normalize(target), list);
        if (!place)
          throw new BindSourceError('outside', `bind source ${source} leads out of its mapped job path`);
        reset(place);
        todo = [...place.rest, ...todo];
      } else {
        todo = [...components(target), ...todo];
      }
    }
    const fd = stack.pop() ?? -1;
    for (const other of stack.splice(0)) closeSync(other);
    const st = fstatSync(fd);
    return {
      fd,
      root,
      atRoot: names.length === 0,
      path: names.length === 0 ? root : join(root, ...names),
      dev: st.dev,
      ino: st.ino,
      dir: st.isDirectory(),
    };
  } catch (e) {
    for (const fd of stack) closeSync(fd);
    throw e;
  }
}

function run(cmd: string, args: string[], fd?: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const stdio: ('ignore' | 'pipe' | number)[] = ['ignore', 'ignore', 'pipe'];
    if (fd !== undefined) stdio.push(fd);
    const child = spawn(cmd, args, { stdio });
    let err = '';
    child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')}: ${err.trim() || `exit ${code}`}`)),
    );
  });
}

/** Bind-mounts the inode behind `fd` onto `target` (made here); `mount -c` looks no path up again. */
async function mountPin(fd: number, dir: boolean, target: string): Promise<void> {
  mkdirSync(dirname(target), { recursive: true, mode: 0o700 });
  if (dir) mkdirSync(target, { mode: 0o700 });
  else writeFileSync(target, '', { mode: 0o600, flag: 'wx' });
  try {
    await run('mount', ['-c', '--bind', '/proc/self/fd/3', target], fd);
  } catch (e) {
    removeMountPoint(target);
    throw e;
  }
}

/** Removes an (unmounted) mount point; never recursive, so nothing mounted there is touched. */
function removeMountPoint(target: string): void {
  try {
    rmdirSync(target);
  } catch (e) {
    if (errno(e) === 'ENOTDIR') unlinkSync(target);
    else if (errno(e) !== 'ENOENT') throw e;
  }
}

async function unmountPin(target: string): Promise<void> {
  try {
    await run('umount', ['-c', '-l', target]);
  } catch {
    // Already gone (a reaped stale pin): nothing mounted there.
  }
  removeMountPoint(target);
}

/** Mount points under `dir`, from this process's mountinfo (octal escapes decoded). */
function mountsUnder(dir: string): string[] {
  const out: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const point = line.split(' ')[4];
    if (point === undefined) continue;
    const p = point.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (isInside(p, dir) && p !== dir) out.push(p);
  }
  return out;
}

/** The engine calls the probe needs (the proxy's upstream). */
// eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- the caller names the JSON shape it expects
export type Ask = <T>(method: string, path: string, body?: unknown) => Promise<{ status: number; json: T }>;

const modes = new Map<string, Promise<{ mode: PinMode; why: string }>>();

/**
 * Whether pins work with this engine, asked once per process and engine: the guard pins a probe
 * folder and asks dockerd to validate a bind mount of a file inside the pin (a create naming an
 * absent image: dockerd validates mounts first and creates nothing). dockerd finds the file only if
 * it sees the guard's mounts; a control path that does not exist must fail, or the answer says nothing.
 */
export function pinMode(engineKey: string, ask: Ask): Promise<{ mode: PinMode; why: string }> {
  let p = modes.get(engineKey);
  if (!p) {
    p = probe(ask);
    modes.set(engineKey, p);
  }
  return p;
}

async function probe(ask: Ask): Promise<{ mode: PinMode; why: string }> {
  if (process.platform !== 'linux' || process.getuid?.() !== 0)
    return { mode: 'roots', why: 'the guard does not run as root on Linux, so it cannot mount pins' };
  const mine = join(PINS_DIR, String(process.pid));
  const tag = randomBytes(6).toString('hex');
  const src = join(mine, `probe-src-${tag}`);
  const pin = join(mine, `probe-${tag}`);
  let fd = -1;
  try {
    mkdirSync(mine, { recursive: true, mode: 0o700 });
    await reapStale(ask);
    mkdirSync(src, { mode: 0o700 });
    writeFileSync(join(src, 'marker'), '');
    fd = openSync(src, O_PATH | constants.O_DIRECTORY);
    await mountPin(fd, true, pin);
    const image = `berth-pin-probe-${tag}:absent`;
    const tryMount = async (file: string) => {
      const r = await ask<{ Id?: string }>('POST', '/containers/create', {
        Image: image,
        NetworkDisabled: true,
        HostConfig: {
          NetworkMode: 'none',
          Mounts: [{ Type: 'bind', Source: join(pin, file), Target: '/probe', ReadOnly: true }],
        },
      });
      if (r.status < 300 && typeof r.json.Id === 'string')
        await ask('DELETE', `/containers/${r.json.Id}?force=1`);
      return r;
    };
    const seen = await tryMount('marker');
    const control = await tryMount('absent');
    await unmountPin(pin);
    if (seen.status === 404 && control.status === 400) return { mode: 'mount', why: '' };
    return {
      mode: 'roots',
      why: `the engine does not see the guard's mounts (probe ${seen.status}, control ${control.status}): another mount namespace`,
    };
  } catch (e) {
    return { mode: 'roots', why: `cannot mount pins: ${(e as Error).message}` };
  } finally {
    if (fd >= 0) closeSync(fd);
    rmSync(src, { recursive: true, force: true });
    if (existsSync(pin)) await unmountPin(pin);
  }
}

/**
 * Pins of guard processes that are gone (a crash skips their cleanup): unmounted, unless a
 * container still names them (a `--keep` guard's containers).
 */
async function reapStale(ask: Ask): Promise<void> {
  let dirs: string[];
  try {
    dirs = readdirSync(PINS_DIR).filter((d) => /^\d+$/.test(d) && d !== String(process.pid));
  } catch {
    return;
  }
  const dead = dirs.filter((d) => !existsSync(`/proc/${d}`));
  if (dead.length === 0) return;
  const used = new Set<string>();
  const r = await ask<{ Mounts?: { Source?: string }[] }[]>('GET', '/containers/json?all=1');
  if (r.status !== 200 || !Array.isArray(r.json)) return;
  for (const c of r.json) for (const m of c.Mounts ?? []) if (m.Source) used.add(m.Source);
  for (const d of dead) {
    const dir = join(PINS_DIR, d);
    const points = mountsUnder(dir);
    const keep = points.filter((p) => used.has(p));
    for (const p of points) if (!used.has(p)) await unmountPin(p);
    if (keep.length > 0) continue;
    // Mount points of pins that were never mounted (a crash between mkdir and mount).
    for (const name of readdirSync(dir)) removeMountPoint(join(dir, name));
    removeMountPoint(dir);
  }
}

interface Pin {
  path: string;
  refs: number;
  ready: Promise<void>;
}

let pinSeq = 0;

/**
 * One guard's pins, by inode (every bind of the same folder shares one), counted by the containers
 * (and creates in flight) that use them; unmounted when the last goes.
 */
export class BindPins {
  private readonly pins = new Map<string, Pin>();
  private readonly byContainer = new Map<string, string[]>();

  constructor(
    private readonly maps: readonly PathMap[],
    private readonly mode: () => Promise<{ mode: PinMode; why: string }>,
  ) {}

  /** Containers holding pins (for the sweep of containers that removed themselves). */
  get holders(): IterableIterator<string> {
    return this.byContainer.keys();
  }

  get holderCount(): number {
    return this.byContainer.size;
  }

  /**
   * The path to forward for a bind source, and the pin key it holds (release or attach it), or a
   * BindSourceError. `create`: missing folders are made (dockerd's `Binds`); else they are an error
   * (`Mounts`).
   */
  async resolve(source: string, create: boolean): Promise<{ forward: string; key?: string }> {
    const w = openBeneath(source, this.maps, create);
    try {
      if (w.atRoot) return { forward: w.root };
      const { mode, why } = await this.mode();
      if (mode === 'roots')
        throw new BindSourceError(
          'not-a-root',
          `bind source ${source} is below a mapped job path; only the mapped folder itself can be bound here (${why})`,
        );
      const key = `${w.dev}:${w.ino}`;
      let pin = this.pins.get(key);
      if (!pin) {
        const path = join(PINS_DIR, String(process.pid), `p${++pinSeq}-${randomBytes(4).toString('hex')}`);
        const made: Pin = { path, refs: 0, ready: mountPin(w.fd, w.dir, path) };
        this.pins.set(key, made);
        made.ready.catch(() => this.pins.delete(key));
        pin = made;
      }
      pin.refs++;
      try {
        await pin.ready;
      } catch (e) {
        pin.refs--;
        throw e;
      }
      return { forward: pin.path, key };
    } finally {
      closeSync(w.fd);
    }
  }

  attach(container: string, keys: readonly string[]): void {
    if (keys.length === 0) return;
    this.byContainer.set(container, [...(this.byContainer.get(container) ?? []), ...keys]);
  }

  async release(keys: readonly string[]): Promise<void> {
    for (const key of keys) {
      const pin = this.pins.get(key);
      if (!pin || --pin.refs > 0) continue;
      this.pins.delete(key);
      await unmountPin(pin.path);
    }
  }

  /** The container is gone: its pins are released. */
  async detach(container: string): Promise<void> {
    const keys = this.byContainer.get(container);
    if (!keys) return;
    this.byContainer.delete(container);
    await this.release(keys);
  }

  /** Every pin unmounted (the guard closes after its cleanup). */
  async releaseAll(): Promise<void> {
    this.byContainer.clear();
    const all = [...this.pins.values()];
    this.pins.clear();
    for (const p of all) {
      await p.ready.catch(() => undefined);
      await unmountPin(p.path);
    }
    // The process's folder goes too once empty (red-team pass 19: one was left per guard process).
    // Another guard of this process still pinning keeps it; one pinning later makes it again.
    try {
      rmdirSync(join(PINS_DIR, String(process.pid)));
    } catch {
      // not empty (another guard's pins), or not there
    }
  }
}
