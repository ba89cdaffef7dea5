/**
 * A small typed client for the Docker Engine API: JSON calls, raw streaming calls and hijacked
 * (attach / exec) connections, with API version negotiation. Docker semantics live here and in the
 * helpers below; bytes on the wire live in transport.ts.
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { Readable } from 'node:stream';
import type { Endpoint, EndpointEnv } from './endpoint.js';
import { parseEndpoint } from './endpoint.js';
import { EngineError } from './errors.js';
import type { FailedRequest } from './errors.js';
import { createTransport } from './transport.js';
import type { Transport } from './transport.js';

/** The newest API version this client speaks; older daemons are met at their own version. */
export const MAX_API_VERSION = '1.45';
/** The oldest API version berth supports (Docker 20.10, Debian bookworm's engine, speaks 1.41). */
export const MIN_API_VERSION = '1.40';

export type QueryValue = string | number | boolean | undefined | null | readonly string[];
export type Query = Record<string, QueryValue>;

export interface RequestOptions {
  method?: string;
  /** Path without version prefix, e.g. `/containers/json`. */
  path: string;
  query?: Query;
  /** A JSON-serialisable value, a Buffer, a string, or a stream to send as-is. */
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /** Send the path without the `/vX.Y` prefix (e.g. `/_ping`). */
  unversioned?: boolean;
  /** Fail when no response headers arrive within this many ms. */
  timeoutMs?: number;
}

export interface PingResult {
  apiVersion: string;
  osType: string | undefined;
  builderVersion: string | undefined;
  dockerExperimental: boolean;
}

export interface ClientOptions {
  endpoint?: Endpoint;
  env?: EndpointEnv & { DOCKER_API_VERSION?: string | undefined };
  /** Pin the API version (as DOCKER_API_VERSION does); otherwise negotiated on first use. */
  apiVersion?: string;
}

export function compareApiVersions(a: string, b: string): number {
  const [am = 0, an = 0] = a.split('.').map(Number);
  const [bm = 0, bn = 0] = b.split('.').map(Number);
  return am !== bm ? am - bm : an - bn;
}

export function buildQuery(query: Query | undefined): string {
  if (!query) return '';
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v === undefined || v === null) continue;
    if (typeof v === 'object') for (const item of v) params.append(k, item);
    else params.append(k, String(v));
  }
  const s = params.toString();
  return s === '' ? '' : `?${s}`;
}

export class DockerClient {
  readonly endpoint: Endpoint;
  private readonly transport: Transport;
  private negotiated: Promise<string> | undefined;

  constructor(options: ClientOptions = {}) {
    const env = options.env ?? process.env;
    this.endpoint = options.endpoint ?? parseEndpoint(env);
    this.transport = createTransport(this.endpoint);
    const pinned = options.apiVersion ?? (env.DOCKER_API_VERSION || undefined);
    if (pinned) this.negotiated = Promise.resolve(pinned);
  }

  /** The DOCKER_HOST value that reaches this client's engine. */
  get dockerHost(): string {
    return this.endpoint.url;
  }

  /** The API version in use: the lower of the daemon's and MAX_API_VERSION. */
  apiVersion(): Promise<string> {
    this.negotiated ??= this.ping().then(
      (p) => (compareApiVersions(p.apiVersion, MAX_API_VERSION) < 0 ? p.apiVersion : MAX_API_VERSION),
      (err: unknown) => {
        this.negotiated = undefined;
        throw err;
      },
    );
    return this.negotiated;
  }

  async ping(signal?: AbortSignal): Promise<PingResult> {
    const res = await this.request({ path: '/_ping', unversioned: true, signal, timeoutMs: 10_000 });
    // Read to its end before the next request goes, so that request reuses this connection instead
    // of opening a second one (and leaving this one idle in the pool).
    await readAll(res);
    const h = res.headers;
    const header = (name: string): string | undefined => {
      const v = h[name];
      return Array.isArray(v) ? v[0] : v;
    };
    return {
      apiVersion: header('api-version') ?? MIN_API_VERSION,
      osType: header('ostype'),
      builderVersion: header('builder-version'),
      dockerExperimental: header('docker-experimental') === 'true',
    };
  }

  /** A request whose answer is JSON (or empty); errors become EngineError. */
  async json<T = unknown>(
    method: string,
    path: string,
    opts: Omit<RequestOptions, 'method' | 'path'> = {},
  ): Promise<T> {
    const res = await this.request({ ...opts, method, path });
    const text = await readAll(res);
    if (text.length === 0) return undefined as T;
    try {
      return JSON.parse(text.toString('utf8')) as T;
    } catch (cause) {
      throw new EngineError('ENGINE_PROTOCOL', this.failed(method, path), { cause });
    }
  }

  /**
   * A raw request: resolves with the response once headers arrive and the status is < 400; the
   * caller consumes (or resumes) the body. Errors (status >= 400) are read and thrown as EngineError.
   */
  async request(opts: RequestOptions): Promise<IncomingMessage> {
    const method = opts.method ?? 'GET';
    const fullPath = await this.fullPath(opts);
    const failed = this.failed(method, opts.path);
    return new Promise<IncomingMessage>((resolve, reject) => {
      const { headers, body } = encodeBody(opts.body, opts.headers);
      const base = this.transport.requestOptions();
      const req = this.transport.request({
        ...base,
        method,
        path: fullPath,
        headers: { ...(base.headers as Record<string, string> | undefined), ...headers },
        signal: opts.signal,
      });
      let timer: NodeJS.Timeout | undefined;
      if (opts.timeoutMs !== undefined) {
        timer = setTimeout(
          () => req.destroy(new Error(`no answer within ${opts.timeoutMs} ms`)),
          opts.timeoutMs,
        );
      }
      req.on('error', (cause) => {
        clearTimeout(timer);
        reject(new EngineError('ENGINE_UNREACHABLE', failed, { cause }));
      });
      req.on('response', (res) => {
        clearTimeout(timer);
        const status = res.statusCode ?? 0;
        if (status < 400) {
          resolve(res);
          return;
        }
        readAll(res).then(
          (buf) => reject(httpError(failed, status, buf)),
          (cause: unknown) => reject(new EngineError('ENGINE_PROTOCOL', failed, { cause })),
        );
      });
      sendBody(req, body);
    });
  }

  /**
   * A hijacked connection (attach, exec start): sends `Upgrade: tcp` and resolves with the raw
   * socket once the daemon switches protocols. Writes go to the process's stdin; `socket.end()`
   * half-closes it (stdin EOF) while output keeps flowing.
   */
  async hijack(opts: RequestOptions): Promise<{ socket: Duplex; head: Buffer; response: IncomingMessage }> {
    const method = opts.method ?? 'POST';
    const fullPath = await this.fullPath(opts);
    const failed = this.failed(method, opts.path);
    return new Promise((resolve, reject) => {
      const { headers, body } = encodeBody(opts.body, opts.headers);
      const base = this.transport.requestOptions();
      const req = this.transport.request({
        ...base,
        agent: false,
        method,
        path: fullPath,
        headers: {
          ...(base.headers as Record<string, string> | undefined),
          ...headers,
          Connection: 'Upgrade',
          Upgrade: 'tcp',
        },
        signal: opts.signal,
      });
      req.on('error', (cause) => reject(new EngineError('ENGINE_UNREACHABLE', failed, { cause })));
      req.on('upgrade', (response, socket, head) => resolve({ socket, head, response }));
      req.on('response', (res) => {
        const status = res.statusCode ?? 0;
        readAll(res).then(
          (buf) =>
            reject(
              status >= 400
                ? httpError(failed, status, buf)
                : new EngineError('ENGINE_PROTOCOL', failed, {
                    statusCode: status,
                    message: `engine did not upgrade ${method} ${opts.path} (status ${status})`,
                  }),
            ),
          (cause: unknown) => reject(new EngineError('ENGINE_PROTOCOL', failed, { cause })),
        );
      });
      sendBody(req, body);
    });
  }

  /** Closes idle keep-alive connections so the process can exit. */
  close(): void {
    this.transport.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  private async fullPath(opts: RequestOptions): Promise<string> {
    const q = buildQuery(opts.query);
    if (opts.unversioned) return `${opts.path}${q}`;
    const v = await this.apiVersion();
    return `/v${v}${opts.path}${q}`;
  }

  private failed(method: string, path: string): FailedRequest {
    return { method, path, endpoint: this.endpoint.url };
  }
}

type Body = undefined | Buffer | Readable;

function encodeBody(
  body: unknown,
  extra: Record<string, string> | undefined,
): { headers: Record<string, string>; body: Body } {
  const headers: Record<string, string> = {};
  let out: Body;
  if (body === undefined) {
    out = undefined;
  } else if (body instanceof Readable) {
    out = body;
    headers['Content-Type'] = 'application/x-tar';
  } else if (Buffer.isBuffer(body)) {
    out = body;
    headers['Content-Type'] = 'application/octet-stream';
    headers['Content-Length'] = String(body.length);
  } else {
    out = Buffer.from(JSON.stringify(body));
    headers['Content-Type'] = 'application/json';
    headers['Content-Length'] = String(out.length);
  }
  return { headers: { ...headers, ...extra }, body: out };
}

function sendBody(req: import('node:http').ClientRequest, body: Body): void {
  if (body === undefined) req.end();
  else if (Buffer.isBuffer(body)) req.end(body);
  else {
    body.on('error', (err) => req.destroy(err));
    body.pipe(req);
  }
}

export async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function httpError(request: FailedRequest, status: number, buf: Buffer): EngineError {
  const text = buf.toString('utf8').trim();
  let daemonMessage = text;
  try {
    const parsed = JSON.parse(text) as { message?: unknown };
    if (typeof parsed.message === 'string') daemonMessage = parsed.message;
  } catch {
    /* not JSON: keep the text */
  }
  return new EngineError('ENGINE_HTTP', request, { statusCode: status, daemonMessage });
}
