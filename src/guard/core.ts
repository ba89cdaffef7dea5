/**
 * What the parts of the guard's proxy share. GuardProxy (proxy.ts) holds one tenant's connection
 * to the engine and what the tenant owns; the image routes (images.ts) and the build route
 * (build.ts) reach it only through ProxyCore, which names exactly what they use of it (this module
 * imports none of them, so none of them imports another in a cycle). The helpers below read and
 * send answers the same way in every part.
 */
import type http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { errorMessage } from '../common/index.js';
import type { Transport } from '../engine/index.js';
import type { AuditRecord, PathMap, Policy, RuleName } from './contracts.js';
import { BodyError, isRecord } from './canonical.js';
import type { SchemaRoute } from './canonical.js';
import type { TenantState } from './ownership.js';
import { Refusal } from './policy.js';
import { PathError } from './routes.js';
import type { TagRecords } from './tagrecords.js';
import type { Turns } from './turns.js';
import type { UploadLink } from './upload.js';

export interface ProxyConfig {
  tenant: string;
  transport: Transport;
  maps: readonly PathMap[];
  policy: Policy;
  labels: Readonly<Record<string, string>>;
  /** Where decisions go; absent: no audit log (nothing is built per request). */
  audit?: ((r: AuditRecord) => void) | undefined;
  /**
   * Bind sources below a map root: `auto` pins them where the guard can (see pin.ts), `roots`
   * allows only the mapped folders themselves. Default `auto`.
   */
  bindPins?: 'auto' | 'roots' | undefined;
  /** Names the engine for the once-per-process pin probe (its address). */
  engineKey?: string | undefined;
  /**
   * How many created containers the guard remembers before it first forgets those the engine no
   * longer has (then twice as many as it still remembers). Default 1024.
   */
  forgetFrom?: number | undefined;
  /** Bulk downloads by the kernel (`splice`, default where possible) or through JavaScript. */
  bulkRelay?: 'splice' | 'javascript' | undefined;
}

/** A small engine answer, held whole. */
export interface SmallAnswer {
  status: number;
  raw: Buffer;
  headers: Readonly<Record<string, string | string[] | undefined>>;
}

/** A small answer with its body read as JSON (see parseAnswer). */
export interface JsonAnswer<T> extends SmallAnswer {
  json: T;
}

export interface Upstream {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: IncomingMessage;
}

/** How GuardProxy.forward sends a request and its answer. */
export interface ForwardOptions {
  body?: IncomingMessage | Buffer;
  capture?: boolean;
  headers?: http.OutgoingHttpHeaders;
  /** The answer always ends and is small (ping, inspects, lists): one lean exchange. */
  small?: boolean;
  /** Sees every piece of the answer's body as it goes to the client. */
  onData?: (chunk: Buffer) => void;
  /** A streamed answer is left open for more lines (the caller ends it). Default true. */
  end?: boolean;
}

/**
 * What the image and build routes use of the proxy, and nothing more (GuardProxy implements it).
 * The config, the tenant's state and the tag records are the proxy's own objects, shared.
 */
export interface ProxyCore {
  readonly cfg: ProxyConfig;
  /** What the tenant owns (ownership.ts). */
  readonly state: TenantState;
  /** The records of tags tenants wrote, shared by the guards on the engine (tagrecords.ts). */
  readonly records: TagRecords;
  /** The name of the tenant's own network. */
  readonly networkName: string;
  /**
   * The proxy's operations that take turns, by key: the image routes' tag writes, deletes and
   * loads (by image ID, and LOADS) share it with the proxy's creates (under keys of their own).
   */
  readonly turns: Turns;
  /** An engine's error message without the containers it names that are not the tenant's. */
  readonly hide: (message: string) => string;
  /** A request to the engine; the answer's body is the caller's to read. */
  upstream(
    method: string,
    path: string,
    opts?: {
      body?: Buffer | Readable;
      headers?: http.OutgoingHttpHeaders;
      evenStopped?: boolean;
      connection?: UploadLink | undefined;
    },
  ): Promise<Upstream>;
  /** The upload channel of a build request the fast front passed (upload.ts), if it came that way. */
  uploadLink(req: IncomingMessage): UploadLink | undefined;
  /** A small answer, whole: status, bytes and headers. */
  upstreamBytes(
    method: string,
    path: string,
    opts?: { body?: Buffer; headers?: http.OutgoingHttpHeaders; evenStopped?: boolean },
  ): Promise<SmallAnswer>;
  /** A small answer, whole, with its body read as JSON (see parseAnswer). */

  upstreamJson<T = unknown>(method: string, path: string, body?: unknown): Promise<JsonAnswer<T>>;
  /** Forwards a request and pipes the answer back. With `capture`, JSON answers are also returned. */
  forward(
    req: IncomingMessage,
    res: ServerResponse,
    method: string,
    target: string,
    opts?: ForwardOptions,
  ): Promise<{ status: number; json: unknown } | undefined>;
  /** Writes a decision to the audit log, if there is one. */
  audit(
    method: string,
    path: string,
    decision: AuditRecord['decision'],
    extra?: { rule?: RuleName; status?: number; message?: string },
  ): void;
  /** A request's JSON body, decoded as dockerd decodes it (canonical.ts). */
  body(id: SchemaRoute, body: Buffer | undefined): Record<string, unknown>;
  /** The ID of the tenant's own network, which is made on first use. */
  ensureNetwork(): Promise<string>;
  /** A container of the tenant's, by any name dockerd takes; 404 for any other. */
  resolveContainer(ref: string): Promise<{ id: string; name: string; user: string }>;
  /** How many containers the tenant has (0 where the policy does not limit them). */
  ownedContainerCount(): Promise<number>;
  /** Runs a container create after the tenant's creates before it, where the policy limits them. */
  oneCreateAtATime<T>(create: () => Promise<T>): Promise<T>;
}

export class NotFound extends Refusal {
  constructor(message: string) {
    super('ownership', message, 404);
  }
  override decision() {
    return { allow: false as const, status: 404 as const, rule: this.rule, message: this.why };
  }
}

/** An engine answer's JSON; a body that is not JSON becomes `{ message }` (as the engine's plain-text errors). */
export function parseAnswer(raw: Buffer): unknown {
  const text = raw.toString('utf8');
  if (text === '') return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return { message: text };
  }
}

/**
 * An engine's error answer with the containers it names that are not the tenant's hidden (see
 * hideForeignContainers); any other answer as it is.
 */
export function hidden(status: number, raw: Buffer, hide: ((message: string) => string) | undefined): Buffer {
  if (hide === undefined || status < 400 || raw.length > 64 * 1024) return raw;
  const json = parseAnswer(raw);
  if (!isRecord(json) || typeof json.message !== 'string') return raw;
  const message = hide(json.message);
  return message === json.message ? raw : Buffer.from(JSON.stringify({ ...json, message }));
}

export function send(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

/** Headers of one connection, not of the answer. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection']);

/** An engine answer's headers for the client: the hop-by-hop ones dropped, the framing left to set. */
export function answerHeaders(
  engine: Readonly<Record<string, string | string[] | undefined>>,
): http.OutgoingHttpHeaders {
  const out: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(engine)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
  return out;
}

/**
 * Sends JSON bytes as they are (an engine answer the guard checked and did not change), with the
 * engine's own headers (Api-Version, Ostype, Server, …) but this connection's framing.
 */
export function sendJsonBytes(
  res: ServerResponse,
  status: number,
  raw: Buffer,
  engineHeaders: Readonly<Record<string, string | string[] | undefined>> = {},
  hide?: (message: string) => string,
): void {
  const bytes = hidden(status, raw, hide);
  const out = answerHeaders(engineHeaders);
  out['content-type'] = 'application/json';
  out['content-length'] = bytes.length;
  res.writeHead(status, out);
  res.end(bytes);
}

/** dockerd's httputils.BoolValue: anything but "", 0, no, false and none (any case, trimmed) is true. */
export function goBool(v: string | null): boolean {
  const s = (v ?? '').trim().toLowerCase();
  return !['', '0', 'no', 'false', 'none'].includes(s);
}

/**
 * Runs the pure rules on a request. They throw Refusals for what they refuse; anything else they
 * throw (a field of a type they did not expect: `"Mounts":[null]`) is the request's shape, answered
 * 400 malformed, not a 502 that would blame the engine.
 */
export function onRequest<T>(rules: () => T): T {
  try {
    return rules();
  } catch (e) {
    if (e instanceof Refusal || e instanceof BodyError || e instanceof PathError) throw e;
    throw new BodyError(`the request has an unexpected shape (${errorMessage(e)})`);
  }
}

/** A query as the end of a target: `?` and the query, or nothing when it is empty. */
export function querySuffix(qs: URLSearchParams): string {
  return qs.toString() === '' ? '' : `?${qs.toString()}`;
}
