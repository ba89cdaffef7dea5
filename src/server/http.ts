/**
 * The server's HTTP face: webhooks (verified by signature), the JSON API (token), the live event
 * stream (SSE), a status badge, and the dashboard page. Errors answer `{"message": …}` with the
 * right status.
 */
import http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createHash, timingSafeEqual } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { BerthError, errorMessage } from '../common/index.js';
import { ArtifactNotFound } from './artifacts.js';
import { DASHBOARD_HTML } from './dashboard.js';
import type { ServerEvent, ServerService } from './service.js';
import type { ServerStore } from './store.js';
import { detectForge, isPushEvent, parsePush, verifySignature } from './webhooks.js';

const MAX_BODY = 5 * 1024 * 1024;
/** A branch a manual run may name (it reaches `git checkout`: never an option, never a range). */
const BRANCH_NAME = /^[A-Za-z0-9_][A-Za-z0-9_./-]{0,199}$/;
/**
 * Webhook bodies read at once, before their signature can be checked: each holds up to MAX_BODY,
 * from anyone who can reach the port (red-team pass 20: 80 stalled senders took the server from 62
 * to 480 MB). Past this, a delivery is answered 503 (forges retry).
 */
const MAX_HOOK_READS = 16;
/** Of those, from one address; and how long one body may take to arrive. */
const MAX_HOOK_READS_PER_SENDER = 4;
const HOOK_BODY_MS = 10_000;
/** An event stream whose client does not read is dropped past this much unsent (it reconnects and catches up). */
const MAX_SSE_BACKLOG = 1024 * 1024;
/** Event streams open at once. */
const MAX_SSE_CLIENTS = 64;

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
  });
  res.end(text);
}

async function readBody(req: IncomingMessage, deadlineMs?: number): Promise<Buffer> {
  if (Number(req.headers['content-length'] ?? 0) > MAX_BODY)
    throw new HttpError(413, 'request body too large');
  const chunks: Buffer[] = [];
  let n = 0;
  const deadline = { passed: false };
  const tooLate = () => new HttpError(408, `the body did not arrive within ${(deadlineMs ?? 0) / 1000} s`);
  const timer =
    deadlineMs === undefined
      ? undefined
      : setTimeout(() => {
          deadline.passed = true;
          req.destroy();
        }, deadlineMs);
  try {
    for await (const c of req) {
      n += (c as Buffer).length;
      if (n > MAX_BODY) throw new HttpError(413, 'request body too large');
      chunks.push(c as Buffer);
    }
  } catch (err) {
    throw deadline.passed ? tooLate() : err;
  } finally {
    clearTimeout(timer);
  }
  if (deadline.passed) throw tooLate();
  return Buffer.concat(chunks);
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const buf = await readBody(req);
  if (buf.length === 0) return {};
  try {
    const v: unknown = JSON.parse(buf.toString('utf8'));
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch {
    throw new HttpError(400, 'the body must be a JSON object');
  }
}

/**
 * Whether the request carries the token: in its Authorization header, or, for the event stream
 * only (a browser's EventSource sends no headers), as `?token=` (elsewhere a token in a URL ends up
 * in access logs for nothing).
 */
function tokenOk(req: IncomingMessage, url: URL, token: string | undefined, inQuery: boolean): boolean {
  if (!token) return true;
  const auth = req.headers.authorization ?? '';
  const given = auth.startsWith('Bearer ')
    ? auth.slice(7)
    : inQuery
      ? (url.searchParams.get('token') ?? '')
      : '';
  // Both hashed first: the compare takes the same time whatever the lengths.
  const digest = (v: string) => createHash('sha256').update(v).digest();
  return timingSafeEqual(digest(given), digest(token));
}

/** A `limit` query value: a whole number from 1 to `max` (the default when absent). */
function limitOf(url: URL, fallback: number, max: number): number {
  const v = url.searchParams.get('limit');
  if (v === null) return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1)
    throw new HttpError(400, `limit must be a whole number from 1 to ${max}, not ${v}`);
  return Math.min(n, max);
}

/** An `after` query value: a whole number from 0 (0 when absent). */
function afterOf(url: URL): number {
  const v = url.searchParams.get('after');
  if (v === null) return 0;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0)
    throw new HttpError(400, `after must be a whole number from 0, not ${v}`);
  return n;
}

/** The delivery ID a forge sends with each webhook (the same on every redelivery of it). */
function deliveryId(headers: http.IncomingHttpHeaders): string | undefined {
  for (const h of ['x-github-delivery', 'x-gitea-delivery', 'x-gitlab-event-uuid', 'x-gitlab-webhook-uuid']) {
    const v = headers[h];
    if (typeof v === 'string' && v !== '') return v.slice(0, 200);
  }
  return undefined;
}

/** The dashboard's headers: no framing (its buttons act with the signed-in token), only its own script. */
const DASHBOARD_HEADERS = (() => {
  const script = /<script>([\s\S]*?)<\/script>/.exec(DASHBOARD_HTML)?.[1] ?? '';
  const hash = createHash('sha256').update(script).digest('base64');
  return {
    'Content-Type': 'text/html; charset=utf-8',
    'Cache-Control': 'no-store',
    'Content-Security-Policy': `default-src 'self'; script-src 'sha256-${hash}'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'`,
    'X-Frame-Options': 'DENY',
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
  };
})();

function badge(label: string, status: string): string {
  const color =
    status === 'succeeded'
      ? '#2ea043'
      : status === 'failed' || status === 'interrupted'
        ? '#d1242f'
        : status === 'running' || status === 'queued'
          ? '#bf8700'
          : '#6e7781';
  const lw = 6 * label.length + 12;
  const sw = 6 * status.length + 12;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${lw + sw}" height="20" role="img" aria-label="${label}: ${status}"><rect width="${lw}" height="20" fill="#555"/><rect x="${lw}" width="${sw}" height="20" fill="${color}"/><g fill="#fff" font-family="Verdana,sans-serif" font-size="11"><text x="6" y="14">${label}</text><text x="${lw + 6}" y="14">${status}</text></g></svg>`;
}

export interface HttpOptions {
  store: ServerStore;
  service: ServerService;
  token?: string;
}

export function createHttpServer(o: HttpOptions): http.Server {
  const { store, service } = o;
  let hookReads = 0;
  const hookReadsFrom = new Map<string, number>();
  const open = { streams: 0 };
  const route = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    let url: URL;
    try {
      // An absolute-form target is parsed as it is: `http://[::1` is no URL at all.
      url = new URL(req.url ?? '/', 'http://berth');
    } catch {
      throw new HttpError(400, 'malformed request target');
    }
    const method = req.method ?? 'GET';
    const parts = url.pathname
      .split('/')
      .filter(Boolean)
      .map((p) => {
        try {
          return decodeURIComponent(p);
        } catch {
          throw new HttpError(400, `malformed percent-encoding in ${url.pathname}`);
        }
      });

    // Dashboard and badge: public.
    if (
      method === 'GET' &&
      (url.pathname === '/' ||
        url.pathname === '/index.html' ||
        parts[0] === 'runs' ||
        parts[0] === 'projects')
    ) {
      res.writeHead(200, DASHBOARD_HEADERS);
      res.end(DASHBOARD_HTML);
      return;
    }
    if (method === 'GET' && parts[0] === 'badge' && parts[1]) {
      const name = parts[1].replace(/\.svg$/, '');
      const p = await store.project(name);
      if (!p) throw new HttpError(404, `no project ${name}`);
      const last = (await store.runs({ projectId: p.id, limit: 1 }))[0];
      res.writeHead(200, { 'Content-Type': 'image/svg+xml', 'Cache-Control': 'no-cache' });
      res.end(badge(p.name, last?.status ?? 'none'));
      return;
    }
    // Webhooks: authenticated by their signature, not the token.
    if (method === 'POST' && parts[0] === 'hooks' && parts[1] && parts.length === 2) {
      // Everything that needs no body is checked before the body is read (red-team pass 20).
      const p = await store.project(parts[1]);
      if (!p) throw new HttpError(404, `no project ${parts[1]}`);
      const forge = detectForge(req.headers);
      if (!forge)
        throw new HttpError(
          400,
          'not a GitHub, Gitea or GitLab webhook (no X-GitHub-Event, X-Gitea-Event or X-Gitlab-Event header)',
        );
      // Slots for bodies being read: a few per sender, and each body has seconds to arrive
      // (red-team pass 21: 16 slow senders held every slot, and real pushes got 503 for minutes).
      const from = req.socket.remoteAddress ?? '';
      const mine = hookReadsFrom.get(from) ?? 0;
      if (hookReads >= MAX_HOOK_READS || mine >= MAX_HOOK_READS_PER_SENDER) {
        res.setHeader('Retry-After', '5');
        throw new HttpError(503, 'too many webhook deliveries arriving at once; send it again');
      }
      hookReads++;
      hookReadsFrom.set(from, mine + 1);
      let body: Buffer;
      try {
        body = await readBody(req, HOOK_BODY_MS);
      } finally {
        hookReads--;
        const left = (hookReadsFrom.get(from) ?? 1) - 1;
        if (left > 0) hookReadsFrom.set(from, left);
        else hookReadsFrom.delete(from);
      }
      const verdict = verifySignature(forge, req.headers, body, p.secret);
      if (!verdict.ok) throw new HttpError(401, `webhook rejected: ${verdict.reason}`);
      if (!isPushEvent(forge, req.headers))
        return json(res, 202, { message: 'event ignored: only push events start runs' });
      let push;
      try {
        push = parsePush(forge, body);
      } catch (err) {
        throw new HttpError(400, errorMessage(err));
      }
      if (push.deleted) return json(res, 202, { message: `ref ${push.ref} was deleted: nothing to build` });
      if (p.branch && push.branch !== p.branch)
        return json(res, 202, { message: `push to ${push.ref} ignored: the project builds ${p.branch}` });
      // A signed delivery is good forever: whoever saw one (a proxy's log, the forge's delivery
      // page) could send it again and run (deploy) that old commit again. Each is taken once.
      // The delivery header is not signed, so the signed body is what is taken once (red-team
      // pass 21: the same body under a new delivery ID ran again); the ID too, where there is one.
      const delivery = deliveryId(req.headers);
      const bodyKey = `body:${createHash('sha256').update(body).digest('hex')}`;
      const firstBody = await store.firstDelivery(p.id, bodyKey);
      const firstId = delivery === undefined || (await store.firstDelivery(p.id, delivery));
      if (!firstBody || !firstId)
        throw new HttpError(
          409,
          `this delivery was taken already${delivery === undefined ? '' : ` (${delivery})`}: a replay, or the forge sent it again; to build that commit again, re-run its run`,
        );
      const run = await service.enqueue({
        projectId: p.id,
        trigger: 'webhook',
        ref: push.ref,
        branch: push.branch ?? null,
        sha: push.sha,
        message: push.message ?? null,
      });
      return json(res, 201, run);
    }
    if (parts[0] !== 'api') throw new HttpError(404, `no such page: ${url.pathname}`);
    if (!tokenOk(req, url, o.token, method === 'GET' && parts[1] === 'events'))
      throw new HttpError(401, 'missing or wrong token (Authorization: Bearer …)');
    const [, a, b, c] = parts;

    if (method === 'GET' && a === 'events')
      return sse(res, service, url.searchParams.get('run') ?? undefined, open);
    if (a === 'projects' && b === undefined) {
      if (method === 'GET')
        return json(
          res,
          200,
          (await store.projects()).map(({ secret: _s, ...p }) => p),
        );
      if (method === 'POST') {
        const body = await readJson(req);
        const p = await store.createProject({
          name: typeof body.name === 'string' ? body.name : '',
          repoUrl:
            typeof body.repoUrl === 'string' ? body.repoUrl : typeof body.repo === 'string' ? body.repo : '',
          secret: typeof body.secret === 'string' ? body.secret : '',
          branch: typeof body.branch === 'string' ? body.branch : undefined,
          pollSeconds: typeof body.pollSeconds === 'number' ? body.pollSeconds : undefined,
          grants: grantsOf(body.grants),
        });
        const { secret: _s, ...pub } = p;
        return json(res, 201, pub);
      }
    }
    if (a === 'projects' && b !== undefined) {
      const p = await store.project(b);
      if (!p) throw new HttpError(404, `no project ${b}`);
      if (method === 'GET' && c === undefined) {
        const { secret: _s, ...pub } = p;
        return json(res, 200, pub);
      }
      if (method === 'GET' && c === 'runs')
        return json(res, 200, await store.runs({ projectId: p.id, limit: limitOf(url, 50, 1000) }));
      if (method === 'POST' && c === 'runs') {
        const body = await readJson(req);
        const sha = body.sha === undefined ? null : body.sha;
        const branch = body.branch === undefined ? p.branch : body.branch;
        if (sha !== null && (typeof sha !== 'string' || !/^[0-9a-f]{7,40}$/.test(sha)))
          throw new HttpError(400, 'sha must be a commit ID (7 to 40 lowercase hex digits)');
        if (
          branch !== null &&
          (typeof branch !== 'string' || !BRANCH_NAME.test(branch) || branch.includes('..'))
        )
          throw new HttpError(
            400,
            'branch must be a branch name (letters, digits, / _ . -, not starting with - or /)',
          );
        const run = await service.enqueue({ projectId: p.id, trigger: 'manual', branch, sha });
        return json(res, 201, run);
      }
    }
    if (a === 'runs' && b === undefined && method === 'GET')
      return json(res, 200, await store.runs({ limit: limitOf(url, 50, 1000) }));
    if (a === 'runs' && b !== undefined) {
      const run = await store.run(b);
      if (!run) throw new HttpError(404, `no run ${b}`);
      if (method === 'GET' && c === undefined)
        return json(res, 200, { ...run, jobs: await store.jobs(b), steps: await store.steps(b) });
      if (method === 'GET' && c === 'logs') {
        const after = afterOf(url);
        const limit = limitOf(url, 1000, 10_000);
        return json(
          res,
          200,
          await store.logs(b, { job: url.searchParams.get('job') ?? undefined, after, limit }),
        );
      }
      if (method === 'GET' && c === 'samples') {
        const job = url.searchParams.get('job');
        if (!job) throw new HttpError(400, 'samples need ?job=NAME');
        return json(res, 200, await store.samples(b, job));
      }
      if (method === 'GET' && c === 'artifacts') {
        const [job, ...path] = parts.slice(4);
        if (job === undefined) return json(res, 200, await service.artifacts.list(b));
        return sendArtifact(res, service, b, job, path);
      }
      if (method === 'POST' && c === 'cancel') return json(res, 200, await service.cancel(b));
      if (method === 'POST' && c === 'rerun') return json(res, 201, await service.rerun(b));
    }
    throw new HttpError(404, `no such endpoint: ${method} ${url.pathname}`);
  };

  return http.createServer((req, res) => {
    route(req, res).catch((err: unknown) => {
      const status = err instanceof HttpError ? err.status : err instanceof BerthError ? err.status : 500;
      if (res.headersSent) res.destroy();
      else json(res, status, { message: errorMessage(err) });
    });
  });
}

/**
 * One artifact, as a download: never rendered by a browser (an artifact is whatever a pushed job
 * wrote, HTML included), streamed, and cut off if the client goes.
 */
async function sendArtifact(
  res: ServerResponse,
  service: ServerService,
  runId: string,
  job: string,
  path: string[],
): Promise<void> {
  let file;
  try {
    file = await service.artifacts.open(runId, job, path);
  } catch (err) {
    if (err instanceof ArtifactNotFound) throw new HttpError(404, err.message);
    throw err;
  }
  const name = path[path.length - 1] ?? 'artifact';
  const ascii = name.replace(/[^\x20-\x7e]|["\\]/g, '_');
  res.writeHead(200, {
    'Content-Type': 'application/octet-stream',
    'Content-Length': file.size,
    'Content-Disposition': `attachment; filename="${ascii}"; filename*=UTF-8''${encodeURIComponent(name)}`,
    'X-Content-Type-Options': 'nosniff',
    'Content-Security-Policy': "default-src 'none'; sandbox",
    'Cache-Control': 'no-store',
  });
  await pipeline(file.stream, res).catch(() => {
    file.stream.destroy();
    res.destroy();
  });
}

function sse(
  res: ServerResponse,
  service: ServerService,
  runId: string | undefined,
  open: { streams: number },
): void {
  if (open.streams >= MAX_SSE_CLIENTS)
    throw new HttpError(503, `already ${MAX_SSE_CLIENTS} event streams open`);
  open.streams++;
  res.writeHead(200, {
    'Content-Type': 'text/event-stream',
    'Cache-Control': 'no-store',
    Connection: 'keep-alive',
  });
  res.write(': berth events\n\n');
  const onEvent = (e: ServerEvent) => {
    const id = e.kind === 'run.queued' || e.kind === 'run.updated' ? e.run.id : e.runId;
    if (runId && id !== runId) return;
    // A client that does not read is not buffered for without end (red-team pass 20: ten of them
    // held 1.3 GB during a 28 MB log): it is dropped, and its EventSource reconnects and catches up
    // from the logs API.
    if (res.writableLength > MAX_SSE_BACKLOG) {
      res.destroy();
      return;
    }
    res.write(`event: ${e.kind}\ndata: ${JSON.stringify(e)}\n\n`);
  };
  const ping = setInterval(() => res.write(': ping\n\n'), 15_000);
  service.events.on('event', onEvent);
  res.on('close', () => {
    clearInterval(ping);
    service.events.off('event', onEvent);
    open.streams--;
  });
}

function grantsOf(v: unknown): { env?: unknown; docker?: unknown } | undefined {
  if (v === undefined) return undefined;
  if (typeof v === 'object' && v !== null && !Array.isArray(v)) return v;
  throw new HttpError(400, 'grants must be an object: {"env": [names], "docker": [modes]}');
}
