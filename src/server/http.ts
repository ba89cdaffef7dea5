/**
 * The server's HTTP face: webhooks (verified by signature), the JSON API (token), the live event
 * stream (SSE), a status badge, and the dashboard page. Errors answer `{"message": …}` with the
 * right status.
 */
import http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import { BerthError, errorMessage } from '../common/index.js';
import { DASHBOARD_HTML } from './dashboard.js';
import type { ServerEvent, ServerService } from './service.js';
import type { ServerStore } from './store.js';
import { detectForge, isPushEvent, parsePush, verifySignature } from './webhooks.js';

const MAX_BODY = 5 * 1024 * 1024;

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

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > MAX_BODY) throw new HttpError(413, 'request body too large');
    chunks.push(c as Buffer);
  }
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

function tokenOk(req: IncomingMessage, url: URL, token: string | undefined): boolean {
  if (!token) return true;
  const auth = req.headers.authorization ?? '';
  const given = auth.startsWith('Bearer ') ? auth.slice(7) : (url.searchParams.get('token') ?? '');
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

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
  const route = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://berth');
    const method = req.method ?? 'GET';
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);

    // Dashboard and badge: public.
    if (
      method === 'GET' &&
      (url.pathname === '/' ||
        url.pathname === '/index.html' ||
        parts[0] === 'runs' ||
        parts[0] === 'projects')
    ) {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
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
      const p = await store.project(parts[1]);
      const body = await readBody(req);
      if (!p) throw new HttpError(404, `no project ${parts[1]}`);
      const forge = detectForge(req.headers);
      if (!forge)
        throw new HttpError(
          400,
          'not a GitHub, Gitea or GitLab webhook (no X-GitHub-Event, X-Gitea-Event or X-Gitlab-Event header)',
        );
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
    if (!tokenOk(req, url, o.token))
      throw new HttpError(401, 'missing or wrong token (Authorization: Bearer …)');
    const [, a, b, c] = parts;

    if (method === 'GET' && a === 'events')
      return sse(req, res, service, url.searchParams.get('run') ?? undefined);
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
        return json(
          res,
          200,
          await store.runs({ projectId: p.id, limit: Number(url.searchParams.get('limit') ?? 50) }),
        );
      if (method === 'POST' && c === 'runs') {
        const body = await readJson(req);
        const run = await service.enqueue({
          projectId: p.id,
          trigger: 'manual',
          branch: typeof body.branch === 'string' ? body.branch : p.branch,
          sha: typeof body.sha === 'string' ? body.sha : null,
        });
        return json(res, 201, run);
      }
    }
    if (a === 'runs' && b === undefined && method === 'GET')
      return json(res, 200, await store.runs({ limit: Number(url.searchParams.get('limit') ?? 50) }));
    if (a === 'runs' && b !== undefined) {
      const run = await store.run(b);
      if (!run) throw new HttpError(404, `no run ${b}`);
      if (method === 'GET' && c === undefined)
        return json(res, 200, { ...run, jobs: await store.jobs(b), steps: await store.steps(b) });
      if (method === 'GET' && c === 'logs') {
        const after = Number(url.searchParams.get('after') ?? 0);
        const limit = Number(url.searchParams.get('limit') ?? 1000);
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

function sse(
  req: IncomingMessage,
  res: ServerResponse,
  service: ServerService,
  runId: string | undefined,
): void {
  res.writeHead(200, {
    'Content-Type': 'text/event-stream',
    'Cache-Control': 'no-store',
    Connection: 'keep-alive',
  });
  res.write(': berth events\n\n');
  const onEvent = (e: ServerEvent) => {
    const id = e.kind === 'run.queued' || e.kind === 'run.updated' ? e.run.id : e.runId;
    if (runId && id !== runId) return;
    res.write(`event: ${e.kind}\ndata: ${JSON.stringify(e)}\n\n`);
  };
  const ping = setInterval(() => res.write(': ping\n\n'), 15_000);
  service.events.on('event', onEvent);
  req.on('close', () => {
    clearInterval(ping);
    service.events.off('event', onEvent);
  });
}
