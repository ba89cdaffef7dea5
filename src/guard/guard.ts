/**
 * createGuard: one tenant's guarded socket (unix or TCP+TLS) onto the upstream engine. Several
 * guards can live in one process; each has its own listener and tenant state.
 */
import http from 'node:http';
import https from 'node:https';
import { chmodSync, createWriteStream, existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Writable } from 'node:stream';
import { BerthError, LABEL_TENANT, errorMessage } from '../common/index.js';
import { createTransport, parseEndpoint } from '../engine/index.js';
import type { AuditRecord, PathMap, Policy } from './contracts.js';
import { loadPolicyFile } from './policy-file.js';
import { defaultPolicy } from './policy.js';
import { frontUnavailable, startFront } from './front.js';
import type { Front } from './front.js';
import { GuardProxy } from './proxy.js';

export interface GuardOptions {
  tenant: string;
  /** A socket path (or unix://path), or tcp://host:port. */
  listen: string;
  /** DOCKER_HOST-style upstream; default: the environment's engine. */
  upstream?: string;
  maps?: readonly PathMap[];
  /** A policy file path, or a Policy. */
  policy?: string | Policy;
  /** Audit destination: a file path, `-` for stdout, or a stream. */
  audit?: string | Writable;
  keep?: boolean;
  /** Labels added to everything the tenant creates (the tenant label is always added). */
  labels?: Record<string, string>;
  /** For tcp:// listeners: server certificate, key and the CA that signs client certificates. */
  tls?: { cert: string; key: string; ca: string };
  insecureTcp?: boolean;
  /**
   * Bind sources below a mapped folder: `auto` (default) pins each one where the guard can (root,
   * and the engine sees the guard's mounts), so the tenant cannot swap it for a symlink later;
   * `roots` allows only the mapped folders themselves.
   */
  bindPins?: 'auto' | 'roots';
  /** How long a close waits for requests in flight before the cleanup's first pass (default 10 s). */
  drainMs?: number;
  /**
   * How much longer it waits, after that first pass, for requests still in flight, to clean up
   * what they made (default 120 s); past that, what they make is left to the reaper (labels).
   */
  lateMs?: number;
  /**
   * How bulk downloads (save, export, cp out, logs) reach the client: `splice` (default) has the
   * kernel move them with the berth-splice helper where it was built and both ends allow it;
   * `javascript` always relays them through the guard's own code (see bulksplice.ts).
   */
  bulkRelay?: 'splice' | 'javascript';
  /**
   * The fast front (front.ts): `auto` (default) starts it where it can run (a unix socket on both
   * ends, berth-front built, the audit a file or stdout); `off` has the guard answer every request.
   */
  front?: 'auto' | 'off';
}

export interface GuardHandle {
  /** DOCKER_HOST value that reaches this guard. */
  readonly address: string;
  readonly tenant: string;
  close(opts?: { cleanup?: boolean }): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

export const TENANT_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_./-]{0,127}$/;

function auditSink(audit: GuardOptions['audit']): { write: (r: AuditRecord) => void; close: () => void } {
  if (audit === undefined) return { write: () => undefined, close: () => undefined };
  if (audit === '-')
    return { write: (r) => process.stdout.write(`${JSON.stringify(r)}\n`), close: () => undefined };
  if (typeof audit === 'string') {
    mkdirSync(dirname(audit), { recursive: true });
    const s = createWriteStream(audit, { flags: 'a' });
    return { write: (r) => s.write(`${JSON.stringify(r)}\n`), close: () => s.end() };
  }
  return { write: (r) => audit.write(`${JSON.stringify(r)}\n`), close: () => undefined };
}

export async function createGuard(o: GuardOptions): Promise<GuardHandle> {
  if (!TENANT_NAME.test(o.tenant)) {
    throw new BerthError('BERTH_USAGE', `tenant name ${JSON.stringify(o.tenant)} is not valid`, {
      hint: 'letters, digits, . _ - / (max 128), starting with a letter or digit',
    });
  }
  const upstream = parseEndpoint(o.upstream ? { DOCKER_HOST: o.upstream } : process.env);
  const transport = createTransport(upstream);
  const policy =
    typeof o.policy === 'string' ? loadPolicyFile(o.policy, o.tenant) : (o.policy ?? defaultPolicy());
  const sink = auditSink(o.audit);
  const proxy = new GuardProxy({
    tenant: o.tenant,
    transport,
    maps: (o.maps ?? []).map((m) => ({ jobPath: m.jobPath, hostPath: m.hostPath })),
    policy,
    labels: { ...o.labels, [LABEL_TENANT]: o.tenant },
    audit: o.audit === undefined ? undefined : sink.write,
    bindPins: o.bindPins,
    engineKey: upstream.url,
    bulkRelay: o.bulkRelay,
  });
  // Requests still being handled when the guard closes must land before the cleanup looks.
  const inflight = new Set<Promise<unknown>>();
  const track = (p: Promise<unknown>) => {
    inflight.add(p);
    void p.finally(() => inflight.delete(p));
  };
  // Requests a client pipelines on one connection are handled one after another, so their answers
  // go in order; and none after an answer that closes the connection (a bulk download's, which
  // the guard hands to a relay) is handled at all: the client sends it again on a new connection,
  // and nothing it asked for happened meanwhile (RFC 9112, 9.6).
  const last = new WeakMap<object, { done: Promise<unknown>; settled: boolean; res: http.ServerResponse }>();
  /** Connections whose last answer closes them: nothing more sent on them is handled. */
  const closing = new WeakSet<object>();
  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const socket = req.socket;
    const before = last.get(socket);
    const run = (): Promise<void> => {
      if (closing.has(socket) || (before !== undefined && !before.res.shouldKeepAlive)) {
        closing.add(socket);
        return Promise.resolve();
      }
      return proxy.handle(req, res);
    };
    const p = before === undefined || before.settled ? run() : before.done.then(run);
    const entry = { done: p.catch(() => undefined), settled: false, res };
    void entry.done.then(() => (entry.settled = true));
    last.set(req.socket, entry);
    track(p);
    p.catch((err: unknown) => {
      if (!res.headersSent) {
        res.writeHead(500, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ message: `berth: internal: ${errorMessage(err)}` }));
      } else res.destroy();
    });
  };
  let server: http.Server;
  let address: string;
  const tcp = /^tcp:\/\/([^:]+|\[[^\]]+\]):(\d+)$/.exec(o.listen);
  if (tcp) {
    if (o.tls) {
      server = https.createServer(
        {
          cert: readFileSync(o.tls.cert),
          key: readFileSync(o.tls.key),
          ca: readFileSync(o.tls.ca),
          requestCert: true,
          rejectUnauthorized: true,
        },
        handler,
      );
    } else if (o.insecureTcp) {
      server = http.createServer(handler);
    } else {
      throw new BerthError('BERTH_USAGE', `listening on ${o.listen} needs TLS client certificates`, {
        hint: 'pass --tls-cert, --tls-key and --tls-ca, or --insecure-tcp on a network nobody else shares',
      });
    }
    address = o.listen;
  } else {
    server = http.createServer(handler);
    address = `unix://${o.listen.replace(/^unix:\/\//, '')}`;
  }
  let closed = false;
  server.on('upgrade', (req: http.IncomingMessage, socket, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    track(proxy.upgrade(req, socket, head));
  });
  server.on('clientError', (_err, socket) => {
    if (socket.writable)
      socket.end(
        'HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{"message":"berth: malformed: bad HTTP request"}',
      );
  });
  // Logs -f, events, attach and builds may be idle for a long time.
  // A client that half-closes after its request still gets its answer (Node drops it otherwise).
  (server as unknown as { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
  server.requestTimeout = 0;
  server.timeout = 0;
  server.headersTimeout = 60_000;
  server.keepAliveTimeout = 30_000;

  const socketPath = o.listen.replace(/^unix:\/\//, '');
  /** Removes a socket left at the path (a link is removed itself, never followed). */
  const clearPath = () => {
    if (existsSync(socketPath) && statSync(socketPath).isSocket()) rmSync(socketPath);
  };
  /**
   * The guard's own listener, on its socket path (when there is no front). `chmod`: made the job's
   * to use (0666) by path, which is safe only while no job can reach the folder (before it starts):
   * the job could put a link there meanwhile and have the guard chmod whatever it names.
   */
  const listenHere = (chmod: boolean): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      if (tcp) {
        server.listen(Number(tcp[2]), (tcp[1] ?? '').replace(/^\[|\]$/g, ''), () => resolve());
      } else {
        clearPath();
        server.listen(socketPath, () => {
          // Job containers may run as any user: the socket is the job's to use.
          if (chmod) chmodSync(socketPath, 0o666);
          resolve();
        });
      }
    });
  if (!tcp) mkdirSync(dirname(socketPath), { recursive: true });
  let front: Front | undefined;
  const noFront =
    o.front === 'off'
      ? 'front: off'
      : frontUnavailable({
          listenUnix: !tcp,
          engineUnix: upstream.kind === 'unix',
          auditStream: o.audit !== undefined && typeof o.audit !== 'string',
        });
  const warn = (what: string) => process.emitWarning(`berth guard ${o.tenant}: ${what}`);
  /** Front restarts left: a front that keeps dying is not started again and again. */
  let restarts = 3;
  /** Starts the front (it makes the socket 0666 at bind, by its umask: nothing is chmodded by path). */
  const frontHere = async (engine: string): Promise<Front> => {
    clearPath();
    const f = await startFront({
      listen: socketPath,
      engine,
      tenant: o.tenant,
      audit: typeof o.audit === 'string' ? o.audit : undefined,
      onConnection: (socket) => server.emit('connection', socket),
      onUpload: (id, socket) => proxy.uploads.offer(id, socket),
      onExit: (why) => {
        // Its own connections are cut; those it handed over stay.
        front = undefined;
        proxy.state.containers.watch(undefined);
        if (closed) return;
        // The job may be running: the guard's own listener is not chmodded by path (see
        // listenHere), and only the socket's owner can use it from then on.
        const alone = (what: string) => {
          warn(`${what}; the guard listens itself`);
          listenHere(false).catch((e: unknown) => warn(`cannot listen on ${socketPath}: ${errorMessage(e)}`));
        };
        if (restarts-- <= 0) return alone(`the fast front ended (${why}) again`);
        warn(`the fast front ended (${why}); starting it again`);
        frontHere(engine).then(
          (g) => {
            if (closed) void g.close();
            else front = g;
          },
          (err: unknown) => alone(`the fast front could not start again (${errorMessage(err)})`),
        );
      },
    });
    proxy.state.containers.watch(f);
    return f;
  };
  if (noFront === undefined && upstream.kind === 'unix') {
    try {
      front = await frontHere(upstream.socketPath);
      // node:http tracks its connections' header timeouts from its 'listening' on.
      server.emit('listening');
    } catch (err) {
      warn(`no fast front (${errorMessage(err)})`);
      front = undefined;
    }
  }
  if (!front) await listenHere(true);
  proxy.start();
  const sockets = new Set<import('node:net').Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  const close = async (opts: { cleanup?: boolean } = {}): Promise<void> => {
    if (closed) return;
    closed = true;
    // The front first: no connection comes from it after this.
    await front?.close();
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const s of sockets) s.destroy();
    });
    proxy.stop();
    // The timer is not unref'd: requests that never settle hold no handle, and in a worker thread
    // an event loop with nothing else on it would end before the cleanup ran.
    const drained = async (ms: number) => {
      let timer: NodeJS.Timeout | undefined;
      try {
        return await Promise.race([
          Promise.allSettled([...inflight]).then(() => true),
          new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms))),
        ]);
      } finally {
        clearTimeout(timer);
      }
    };
    const cleanup = opts.cleanup ?? !o.keep;
    // Requests in flight get `drainMs` to land before the cleanup looks. One that lands later (an
    // engine slow to answer a create) is met by a second pass once it has; none can start a new
    // create meanwhile (proxy.stop()).
    const settled = await drained(o.drainMs ?? 10_000);
    if (cleanup) await proxy.cleanup();
    // Once more after that, whether or not everything landed: a request that never settles must
    // not keep the second pass from removing what a late one made.
    if (cleanup && !settled) {
      await drained(o.lateMs ?? 120_000);
      await proxy.cleanup();
    }
    // Pins stay while kept containers may start again (a later guard process reaps them).
    if (cleanup) await proxy.pins.releaseAll();
    transport.close();
    sink.close();
    if (!tcp) rmSync(socketPath, { force: true });
  };
  return { address, tenant: o.tenant, close, [Symbol.asyncDispose]: () => close() };
}
