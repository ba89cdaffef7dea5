/**
 * A raw HTTP/1.1 client over unix sockets for attack tests: it sends exactly the bytes it is given
 * (request line, headers in any case and order, duplicates, chunked bodies split at odd places,
 * form bodies, odd paths, oversized bodies) and parses the response (status, headers, body, with
 * chunked decoding). No normalisation happens on the way out: what the test writes is on the wire.
 */
import { connect } from 'node:net';
import assert from 'node:assert/strict';

export interface RawResponse {
  status: number;
  statusText: string;
  /** Header names lower-cased; every value kept in order. */
  headers: Record<string, string[]>;
  body: Buffer;
  /** The body as UTF-8 text. */
  text: string;
  /** The bytes exactly as received (head and body). */
  raw: Buffer;
}

/** The first value of a response header (case-insensitive). */
export function header(res: RawResponse, name: string): string | undefined {
  return res.headers[name.toLowerCase()]?.[0];
}

/** Decodes a chunked body; undefined while incomplete. */
export function decodeChunked(buf: Buffer): Buffer | undefined {
  const parts: Buffer[] = [];
  let pos = 0;
  for (;;) {
    const eol = buf.indexOf('\r\n', pos);
    if (eol < 0) return undefined;
    const size = parseInt(buf.subarray(pos, eol).toString('latin1').split(';')[0] ?? '', 16);
    if (!Number.isFinite(size)) throw new Error(`bad chunk size at ${pos}`);
    pos = eol + 2;
    if (size === 0) {
      // Trailers end with an empty line.
      const end = buf.indexOf('\r\n', pos);
      if (end < 0) return undefined;
      return Buffer.concat(parts);
    }
    if (buf.length < pos + size + 2) return undefined;
    parts.push(buf.subarray(pos, pos + size));
    pos += size + 2;
  }
}

/** Encodes `body` as a chunked body, cut into pieces of the given sizes (the rest in one chunk). */
export function chunked(body: string | Buffer, sizes: readonly number[] = []): Buffer {
  const b = Buffer.isBuffer(body) ? body : Buffer.from(body, 'utf8');
  const out: Buffer[] = [];
  let pos = 0;
  for (const s of [...sizes, b.length]) {
    if (pos >= b.length) break;
    const piece = b.subarray(pos, Math.min(b.length, pos + Math.max(1, s)));
    out.push(Buffer.from(`${piece.length.toString(16)}\r\n`, 'latin1'), piece, Buffer.from('\r\n'));
    pos += piece.length;
  }
  out.push(Buffer.from('0\r\n\r\n'));
  return Buffer.concat(out);
}

export interface RequestSpec {
  method?: string;
  /** The request target exactly as sent. */
  path: string;
  /** Header lines in order, names spelled as given; duplicates allowed. */
  headers?: readonly (readonly [string, string])[];
  body?: string | Buffer;
  /**
   * `length` (default): a Content-Length header is added unless one is given; `chunked`: the body
   * is sent with Transfer-Encoding: chunked, split at `chunks`; `none`: no framing header added.
   */
  framing?: 'length' | 'chunked' | 'none';
  chunks?: readonly number[];
  /** HTTP version on the request line (default HTTP/1.1). */
  version?: string;
}

/** Builds the bytes of a request; Host and Connection: close are added unless given. */
export function buildRequest(spec: RequestSpec): Buffer {
  const body = spec.body === undefined ? undefined : Buffer.from(spec.body);
  const headers = [...(spec.headers ?? [])];
  const has = (n: string) => headers.some(([k]) => k.toLowerCase() === n);
  if (!has('host')) headers.unshift(['Host', 'docker']);
  if (!has('connection')) headers.push(['Connection', 'close']);
  const framing = spec.framing ?? 'length';
  let payload: Buffer = body ?? Buffer.alloc(0);
  if (framing === 'chunked') {
    if (!has('transfer-encoding')) headers.push(['Transfer-Encoding', 'chunked']);
    payload = chunked(payload, spec.chunks);
  } else if (framing === 'length' && body !== undefined && !has('content-length')) {
    headers.push(['Content-Length', String(body.length)]);
  }
  const head =
    `${spec.method ?? 'GET'} ${spec.path} ${spec.version ?? 'HTTP/1.1'}\r\n` +
    headers.map(([k, v]) => `${k}: ${v}\r\n`).join('') +
    '\r\n';
  return Buffer.concat([Buffer.from(head, 'latin1'), payload]);
}

function parseHead(buf: Buffer, end: number): Omit<RawResponse, 'body' | 'text' | 'raw'> {
  const lines = buf.subarray(0, end).toString('latin1').split('\r\n');
  const m = /^HTTP\/\d\.\d (\d{3}) ?(.*)$/.exec(lines[0] ?? '');
  if (!m) throw new Error(`not an HTTP response: ${JSON.stringify(lines[0])}`);
  const headers: Record<string, string[]> = {};
  for (const line of lines.slice(1)) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    const k = line.slice(0, i).trim().toLowerCase();
    (headers[k] ??= []).push(line.slice(i + 1).trim());
  }
  return { status: Number(m[1]), statusText: m[2] ?? '', headers };
}

/**
 * Sends `bytes` (or several pieces, written `gapMs` apart so they arrive as separate reads) on the
 * unix socket and answers the parsed response. Resolves when the response is complete (by
 * Content-Length, chunked end, or the connection closing); rejects on timeout.
 */
export function rawRequest(
  socketPath: string,
  bytes: string | Buffer | readonly (string | Buffer)[],
  opts: { timeoutMs?: number; gapMs?: number } = {},
): Promise<RawResponse> {
  const pieces = (Array.isArray(bytes) ? bytes : [bytes]) as (string | Buffer)[];
  return new Promise((resolve, reject) => {
    const s = connect(socketPath);
    const chunks: Buffer[] = [];
    let done = false;
    const timer = setTimeout(
      () => finish(new Error(`no complete response within ${opts.timeoutMs ?? 30_000} ms`)),
      opts.timeoutMs ?? 30_000,
    );
    const finish = (err?: Error, res?: RawResponse) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      if (err) reject(err);
      else if (res) resolve(res);
    };
    const tryParse = (ended: boolean) => {
      const buf = Buffer.concat(chunks);
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) {
        if (ended) finish(new Error(`connection closed before a response head: ${buf.toString('latin1')}`));
        return;
      }
      let head;
      try {
        head = parseHead(buf, end);
      } catch (e) {
        finish(e as Error);
        return;
      }
      const rest = buf.subarray(end + 4);
      const te = head.headers['transfer-encoding']?.join(',').toLowerCase() ?? '';
      const cl = head.headers['content-length']?.[0];
      let body: Buffer | undefined;
      if (te.includes('chunked')) {
        try {
          body = decodeChunked(rest);
        } catch (e) {
          finish(e as Error);
          return;
        }
      } else if (cl !== undefined) {
        body = rest.length >= Number(cl) ? rest.subarray(0, Number(cl)) : undefined;
      } else if (head.status === 204 || head.status === 304) {
        body = Buffer.alloc(0);
      } else if (ended) {
        body = rest;
      }
      if (body === undefined) {
        if (ended) finish(new Error(`connection closed mid-body (status ${head.status})`));
        return;
      }
      finish(undefined, { ...head, body, text: body.toString('utf8'), raw: buf });
    };
    s.on('data', (c: Buffer) => {
      chunks.push(c);
      tryParse(false);
    });
    s.on('end', () => tryParse(true));
    s.on('close', () => tryParse(true));
    s.on('error', (e) => {
      // A server may close while we are still writing (e.g. it refused an oversized body early):
      // what it answered before closing is the answer.
      if (chunks.length) tryParse(true);
      if (!done) finish(e);
    });
    s.on('connect', () => {
      void (async () => {
        for (const [i, p] of pieces.entries()) {
          if (done || s.destroyed) return;
          if (i > 0 && (opts.gapMs ?? 0) > 0) await new Promise((r) => setTimeout(r, opts.gapMs));
          await new Promise<void>((r) => {
            if (!s.write(p)) s.once('drain', r);
            else r();
          });
        }
      })().catch(() => undefined);
    });
  });
}

/** Sends a request built from `spec` (see buildRequest). */
export function send(socketPath: string, spec: RequestSpec, opts?: { timeoutMs?: number }) {
  return rawRequest(socketPath, buildRequest(spec), opts);
}

/** POSTs a JSON text exactly as given, with the Content-Type spelled as given. */
export function postJson(
  socketPath: string,
  path: string,
  body: string | Buffer,
  contentType = 'application/json',
) {
  return send(socketPath, { method: 'POST', path, headers: [['Content-Type', contentType]], body });
}

/** The `message` of a Docker-style JSON error body, or undefined if the body is not one. */
export function messageOf(res: RawResponse): string | undefined {
  try {
    const v = JSON.parse(res.text) as unknown;
    if (typeof v === 'object' && v !== null && typeof (v as { message?: unknown }).message === 'string')
      return (v as { message: string }).message;
  } catch {
    /* not JSON */
  }
  return undefined;
}

/** Asserts a refusal: the status and a JSON `{"message":"berth: <rule>: …"}`. */
export function expectRefused(res: RawResponse, rule: string, what = '', status = 403): void {
  const ctx = `${what ? `${what}: ` : ''}HTTP ${res.status} ${res.text.slice(0, 300)}`;
  assert.equal(res.status, status, ctx);
  assert.match(header(res, 'content-type') ?? '', /application\/json/i, ctx);
  const msg = messageOf(res);
  assert.ok(msg !== undefined, `${ctx}: not a Docker-style JSON error`);
  assert.ok(msg.startsWith(`berth: ${rule}: `), `${ctx}: expected "berth: ${rule}: …"`);
}

/** Asserts a 404 whose message names the reference like dockerd's `No such <kind>: <ref>`. */
export function expectAbsent(res: RawResponse, what = ''): void {
  const ctx = `${what ? `${what}: ` : ''}HTTP ${res.status} ${res.text.slice(0, 300)}`;
  assert.equal(res.status, 404, ctx);
  assert.match(messageOf(res) ?? '', /no such|not found/i, ctx);
}

/** `POST /build` of a plain tar context over a unix socket (the guard's or the engine's). */
export function postBuild(
  socketPath: string,
  context: Buffer,
  query = '',
  opts: number | { timeoutMs?: number; framing?: 'length' | 'chunked'; chunks?: readonly number[] } = {},
) {
  const {
    timeoutMs = 120_000,
    framing = 'length',
    chunks,
  } = typeof opts === 'number' ? { timeoutMs: opts } : opts;
  return send(
    socketPath,
    {
      method: 'POST',
      path: `/v1.41/build?${query}`,
      headers: [['Content-Type', 'application/x-tar']],
      body: context,
      framing,
      ...(chunks ? { chunks } : {}),
    },
    { timeoutMs },
  );
}
