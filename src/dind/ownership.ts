/**
 * Whether an object or a host path found by name or label is really one berth's dind made. Names
 * (`berth-dind-*`) and `io.berth.*` labels are not proof on a shared engine: a guard tenant can
 * create objects with those names and labels, but everything it creates names its tenant in
 * `io.berth.tenant`, which berth's own dind objects never do.
 */
import { lstatSync, realpathSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname } from 'node:path';
import { LABEL_DIND, LABEL_DIND_CACHE, LABEL_ROLE, tenantOf } from '../common/index.js';
import { names } from './config.js';

type Labels = Record<string, string> | null | undefined;

/** Prefix of the socket dirs startDind makes itself (mkdtemp under socketDirBases()). */
export const OWN_SOCKET_DIR_PREFIX = 'berth-dind-';

/** Where startDind makes its own socket dirs: $XDG_RUNTIME_DIR when set, else the temp dir. */
export function socketDirBase(): string {
  return process.env.XDG_RUNTIME_DIR || tmpdir();
}

/** The bases a socket dir of berth's may live in (the runtime dir of whoever started it may differ). */
function socketDirBases(): string[] {
  return [...new Set([process.env.XDG_RUNTIME_DIR, tmpdir()].filter((b): b is string => !!b))];
}

function real(path: string): string | undefined {
  try {
    return realpathSync(path);
  } catch {
    return undefined;
  }
}

/**
 * The real path of `path` when it is a socket dir startDind makes itself — a directory (not a
 * symlink) named `berth-dind-*` directly in $XDG_RUNTIME_DIR or the temp dir — else undefined.
 * Only such a dir may be removed recursively on the word of a label.
 */
export function ownSocketDir(path: string, bases: readonly string[] = socketDirBases()): string | undefined {
  if (!path.startsWith('/')) return undefined;
  try {
    if (!lstatSync(path).isDirectory()) return undefined;
  } catch {
    return undefined;
  }
  const r = real(path);
  if (r === undefined || !basename(r).startsWith(OWN_SOCKET_DIR_PREFIX)) return undefined;
  const parent = dirname(r);
  return bases.some((b) => real(b) === parent) ? r : undefined;
}

/** Whether `path` is a socket dir startDind makes itself (see ownSocketDir). */
export function isOwnSocketDir(path: string, bases?: readonly string[]): boolean {
  return ownSocketDir(path, bases) !== undefined;
}

/** Whether a container is the sidecar berth made for the daemon `name`. */
export function isOwnSidecar(labels: Labels, name: string): boolean {
  return tenantOf(labels) === undefined && labels?.[LABEL_ROLE] === 'dind' && labels[LABEL_DIND] === name;
}

/**
 * The daemon name of a listed container when that container is itself a sidecar berth made: its
 * own name is `berth-dind-<io.berth.dind>` and it passes isOwnSidecar. Labels alone are not
 * enough: a guard tenant's build step container carries its Dockerfile's `io.berth.*` labels and
 * no tenant label, so a label may only describe the container it is on, never point at another.
 */
export function ownSidecarName(c: {
  Names?: readonly string[] | null | undefined;
  Labels?: Labels;
}): string | undefined {
  const name = c.Labels?.[LABEL_DIND];
  if (name === undefined || name === '' || !isOwnSidecar(c.Labels, name)) return undefined;
  const want = names.sidecar(name);
  return (c.Names ?? []).some((n) => n.replace(/^\//, '') === want) ? name : undefined;
}

/** Whether an object berth made for the cache `key` in the given role (no tenant named). */
function isOwnCacheObject(labels: Labels, key: string, role: string): boolean {
  return tenantOf(labels) === undefined && labels?.[LABEL_ROLE] === role && labels[LABEL_DIND_CACHE] === key;
}

/** Whether a container is a cache lock berth made for the cache `key`. */
export function isOwnCacheLock(labels: Labels, key: string): boolean {
  return isOwnCacheObject(labels, key, 'dind-cache-lock');
}

/** Whether a volume is the cache volume berth made for the cache `key`. */
export function isOwnCacheVolume(labels: Labels, key: string): boolean {
  return isOwnCacheObject(labels, key, 'dind-cache');
}
