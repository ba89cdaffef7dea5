/**
 * The Engine API routes the guard knows, and path normalisation as dockerd routes. Go's net/http
 * percent-decodes the path (so `%2F` is a slash) and gorilla/mux cleans it (dot segments, `//`)
 * before matching; the guard does the same, matches on the result, and forwards a path it builds
 * itself from the match — never the bytes it received. Anything that matches no route is refused.
 * Pure.
 */

export type BodyKind = 'json' | 'stream' | 'none';

export interface Route {
  readonly id: string;
  readonly method: string;
  /** Segments; `{name}` captures one segment, `{name*}` the rest of the path (image names have slashes). */
  readonly pattern: string;
  readonly body: BodyKind;
}

const R = (method: string, pattern: string, id: string, body: BodyKind = 'none'): Route => ({
  id,
  method,
  pattern,
  body,
});

/** Known and allowed routes. Everything not here (swarm, plugins, secrets, /session, /grpc …) is refused. */
export const ROUTES: readonly Route[] = [
  R('GET', '/_ping', 'system.ping'),
  R('HEAD', '/_ping', 'system.ping'),
  R('GET', '/version', 'system.version'),
  R('GET', '/info', 'system.info'),
  R('GET', '/events', 'system.events'),
  R('GET', '/system/df', 'system.df'),
  R('POST', '/auth', 'auth', 'json'),
  R('GET', '/containers/json', 'container.list'),
  R('POST', '/containers/create', 'container.create', 'json'),
  R('POST', '/containers/prune', 'container.prune'),
  R('GET', '/containers/{id}/json', 'container.inspect'),
  R('GET', '/containers/{id}/top', 'container.top'),
  R('GET', '/containers/{id}/logs', 'container.logs'),
  R('GET', '/containers/{id}/changes', 'container.changes'),
  R('GET', '/containers/{id}/export', 'container.export'),
  R('GET', '/containers/{id}/stats', 'container.stats'),
  R('POST', '/containers/{id}/resize', 'container.resize'),
  R('POST', '/containers/{id}/start', 'container.start'),
  R('POST', '/containers/{id}/stop', 'container.stop'),
  R('POST', '/containers/{id}/restart', 'container.restart'),
  R('POST', '/containers/{id}/kill', 'container.kill'),
  R('POST', '/containers/{id}/update', 'container.update', 'json'),
  R('POST', '/containers/{id}/rename', 'container.rename'),
  R('POST', '/containers/{id}/pause', 'container.pause'),
  R('POST', '/containers/{id}/unpause', 'container.unpause'),
  R('POST', '/containers/{id}/attach', 'container.attach'),
  R('POST', '/containers/{id}/wait', 'container.wait'),
  R('DELETE', '/containers/{id}', 'container.delete'),
  R('HEAD', '/containers/{id}/archive', 'container.archive.head'),
  R('GET', '/containers/{id}/archive', 'container.archive.get'),
  R('PUT', '/containers/{id}/archive', 'container.archive.put', 'stream'),
  R('POST', '/containers/{id}/exec', 'exec.create', 'json'),
  R('POST', '/exec/{id}/start', 'exec.start', 'json'),
  R('POST', '/exec/{id}/resize', 'exec.resize'),
  R('GET', '/exec/{id}/json', 'exec.inspect'),
  R('GET', '/images/json', 'image.list'),
  R('POST', '/build', 'image.build', 'stream'),
  R('POST', '/build/prune', 'image.build-prune'),
  R('POST', '/images/create', 'image.create', 'stream'),
  R('POST', '/images/load', 'image.load', 'stream'),
  R('GET', '/images/get', 'image.get-all'),
  R('POST', '/images/prune', 'image.prune'),
  R('GET', '/images/search', 'image.search'),
  R('POST', '/commit', 'image.commit', 'json'),
  R('GET', '/images/{name*}/json', 'image.inspect'),
  R('GET', '/images/{name*}/history', 'image.history'),
  R('POST', '/images/{name*}/push', 'image.push'),
  R('POST', '/images/{name*}/tag', 'image.tag'),
  R('GET', '/images/{name*}/get', 'image.get'),
  R('DELETE', '/images/{name*}', 'image.delete'),
  R('GET', '/distribution/{name*}/json', 'image.distribution'),
  R('GET', '/volumes', 'volume.list'),
  R('POST', '/volumes/create', 'volume.create', 'json'),
  R('POST', '/volumes/prune', 'volume.prune'),
  R('GET', '/volumes/{name}', 'volume.inspect'),
  R('DELETE', '/volumes/{name}', 'volume.delete'),
  // `docker inspect NAME` tries every object type; plugins are answered as absent, not refused.
  R('GET', '/plugins/{name*}/json', 'plugin.absent'),
  R('GET', '/networks', 'network.list'),
  R('POST', '/networks/create', 'network.create', 'json'),
  R('POST', '/networks/prune', 'network.prune'),
  R('GET', '/networks/{id}', 'network.inspect'),
  R('DELETE', '/networks/{id}', 'network.delete'),
  R('POST', '/networks/{id}/connect', 'network.connect', 'json'),
  R('POST', '/networks/{id}/disconnect', 'network.disconnect', 'json'),
];

export class PathError extends Error {}

const CLEAN_PATH = /^(?:\/[^/%.\0][^/%\0]*)+$/;

/** Percent-decodes and cleans a request path as Go's net/http + gorilla/mux would. */
export function normalizePath(rawPath: string): string {
  // Already clean (every segment non-empty, none a dot segment, nothing encoded): as it is.
  if (CLEAN_PATH.test(rawPath)) return rawPath;
  let decoded: string;
  try {
    decoded = decodeURIComponent(rawPath);
  } catch {
    throw new PathError(`invalid percent-encoding in ${JSON.stringify(rawPath)}`);
  }
  if (decoded.includes('\0')) throw new PathError('NUL in path');
  if (!decoded.startsWith('/')) decoded = `/${decoded}`;
  const out: string[] = [];
  for (const seg of decoded.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') out.pop();
    else out.push(seg);
  }
  return `/${out.join('/')}`;
}

export interface Matched {
  route: Route;
  params: Record<string, string>;
  apiVersion: string | undefined;
  path: string;
}

/** Splits an optional `/vX.Y` prefix off a normalised path. */
export function splitVersion(path: string): { apiVersion: string | undefined; rest: string } {
  const m = /^\/v([0-9][0-9.]*)(\/.*|$)/.exec(path);
  if (!m) return { apiVersion: undefined, rest: path };
  return { apiVersion: m[1], rest: m[2] === '' || m[2] === undefined ? '/' : m[2] };
}

interface Compiled {
  route: Route;
  /** The pattern's segments. */
  p: readonly string[];
  /** Where its `{name*}` segment is, or -1. */
  star: number;
}

const compile = (route: Route): Compiled => {
  const p = route.pattern.split('/').filter(Boolean);
  return { route, p, star: p.findIndex((x) => x.endsWith('*}')) };
};

/**
 * The routes by method and first segment, in ROUTES order (every pattern starts with a literal
 * segment, so a path can match only the routes filed under its own first segment).
 */
const BY_HEAD = new Map<string, Compiled[]>();
for (const route of ROUTES) {
  const c = compile(route);
  const head = c.p[0] ?? '';
  if (head.startsWith('{')) throw new Error(`route ${route.pattern} must start with a literal segment`);
  const key = `${route.method} ${head}`;
  const list = BY_HEAD.get(key) ?? [];
  list.push(c);
  BY_HEAD.set(key, list);
}

function matchPattern(c: Compiled, s: readonly string[]): Record<string, string> | undefined {
  const { p, star } = c;
  const params: Record<string, string> = {};
  // `{name*}` takes as many segments as leave the rest of the pattern matching.
  if (star >= 0) {
    const after = p.length - star - 1;
    if (s.length < p.length) return undefined;
    for (let i = 0; i < star; i++) if (!seg(p[i] as string, s[i] as string, params)) return undefined;
    for (let i = 0; i < after; i++) {
      if (!seg(p[star + 1 + i] as string, s[s.length - after + i] as string, params)) return undefined;
    }
    params[(p[star] as string).slice(1, -2)] = s.slice(star, s.length - after).join('/');
    return params;
  }
  if (p.length !== s.length) return undefined;
  for (let i = 0; i < p.length; i++) if (!seg(p[i] as string, s[i] as string, params)) return undefined;
  return params;
}

function seg(pat: string, val: string, params: Record<string, string>): boolean {
  if (pat.startsWith('{') && pat.endsWith('}')) {
    params[pat.slice(1, -1)] = val;
    return val !== '';
  }
  return pat === val;
}

/** Finds the route of a normalised path; undefined when none (refused as unknown). */
export function matchRoute(method: string, normalized: string): Matched | undefined {
  const { apiVersion, rest } = splitVersion(normalized);
  const m = method.toUpperCase();
  const segs = rest.split('/').filter(Boolean);
  for (const c of BY_HEAD.get(`${m} ${segs[0] ?? ''}`) ?? []) {
    const params = matchPattern(c, segs);
    if (params) return { route: c.route, params, apiVersion, path: rest };
  }
  return undefined;
}

/** Builds the path to forward: the route's pattern with (resolved) params, percent-encoded. */
export function buildPath(
  route: Route,
  params: Record<string, string>,
  apiVersion: string | undefined,
): string {
  const body = route.pattern
    .split('/')
    .map((s) => {
      if (!s.startsWith('{')) return s;
      const name = s.endsWith('*}') ? s.slice(1, -2) : s.slice(1, -1);
      const v = params[name] ?? '';
      return s.endsWith('*}') ? v.split('/').map(encodeURIComponent).join('/') : encodeURIComponent(v);
    })
    .join('/');
  return apiVersion ? `/v${apiVersion}${body}` : body;
}

/**
 * Splits a request target into the raw path and query the way Go's url.ParseRequestURI reads a
 * request line: a target starting with `/` is a path even when it starts with `//` (WHATWG
 * `new URL(target, base)` would read `//v1.41/...` as a host and fail or drop the version);
 * an absolute-form target (`http://host/path?q`) yields its path. Returns undefined for anything
 * else (`*`, authority-form), which must be refused.
 */
export function splitTarget(target: string): { path: string; search: string } | undefined {
  let t = target;
  if (!t.startsWith('/')) {
    const m = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/[^/?]*/.exec(t);
    if (!m) return undefined;
    t = t.slice(m[0].length);
    if (!t.startsWith('/')) t = `/${t}`;
  }
  const q = t.indexOf('?');
  return q < 0 ? { path: t, search: '' } : { path: t.slice(0, q), search: t.slice(q + 1) };
}
