/**
 * The guard's fast front (src/guard/native/berth-front.c): a small C process that listens on the
 * tenant's unix socket in the guard's place and answers the requests a job makes most (ping,
 * container inspect, container list) without a turn of the guard's event loop, and hands every
 * other connection to the guard over Node's IPC channel, unread from the first request it does
 * not answer. It answers only what the guard would answer byte for byte: an inspect or list whose
 * every container is one this guard made (the guard tells it which), a ping. See docs/guard.md,
 * "The fast front".
 *
 * Why a process of its own: what the guard adds to a small request is mostly the extra hop's
 * wake-ups of a Node event loop, not its JavaScript (see the performance notes); a thread per
 * connection blocked in the kernel answers in about the time a C proxy does.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { Socket } from 'node:net';
import { nativeHelper } from './native.js';

export interface FrontOptions {
  /** The tenant's socket path (the front makes it, 0666). */
  listen: string;
  /** The engine's unix socket path. */
  engine: string;
  tenant: string;
  /** Audit file path, `-` for stdout, or undefined for none. */
  audit: string | undefined;
  /** A connection for the guard, unread from the next request on. */
  onConnection: (socket: Socket) => void;
  /** A build context's channel (upload.ts), named by the build request that will claim it. */
  onUpload: (id: string, socket: Socket) => void;
  /** The front ended while the guard had not closed it (the guard then listens itself). */
  onExit: (why: string) => void;
}

export interface Front {
  /** A container this guard made for the tenant (the front may answer for it from now on). */
  add(id: string): void;
  /** A container gone. */
  delete(id: string): void;
  close(): Promise<void>;
}

/** Why a guard runs without the front, or undefined when it can have one. */
export function frontUnavailable(o: {
  listenUnix: boolean;
  engineUnix: boolean;
  auditStream: boolean;
}): string | undefined {
  if (process.env.BERTH_GUARD_FRONT === 'off') return 'BERTH_GUARD_FRONT=off';
  if (!o.listenUnix) return 'the guard listens on TCP';
  if (!o.engineUnix) return 'the engine is not on a unix socket';
  if (o.auditStream) return 'the audit goes to a stream';
  if (nativeHelper('berth-front') === undefined) return 'berth-front was not built (no C compiler)';
  return undefined;
}

const READY_MS = 5000;
const HEX64 = /^[0-9a-f]{64}$/;

/** Starts the front; resolves once it listens, rejects when it could not. */
export async function startFront(o: FrontOptions): Promise<Front> {
  const bin = nativeHelper('berth-front');
  if (bin === undefined) throw new Error('berth-front was not built');
  const child: ChildProcess = spawn(bin, [o.listen, o.engine, o.tenant, o.audit ?? ''], {
    stdio: ['ignore', o.audit === '-' ? 'inherit' : 'ignore', 'pipe', 'ipc'],
    serialization: 'json',
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (d: string) => {
    if (stderr.length < 4096) stderr += d;
  });
  let closing = false;
  let exited = false;
  const exit = new Promise<string>((resolve) => {
    child.once('error', (err) => {
      exited = true;
      resolve(err.message);
    });
    child.once('exit', (code, signal) => {
      exited = true;
      resolve(stderr.trim() || `berth-front exited (${signal ?? `code ${code}`})`);
    });
  });
  // A channel write to a front that just ended: its exit is what counts.
  child.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`berth-front did not start within ${READY_MS} ms`));
    }, READY_MS);
    child.on('message', function first(m: unknown) {
      if (typeof m === 'object' && m !== null && (m as { berth?: unknown }).berth === 'ready') {
        clearTimeout(timer);
        child.off('message', first);
        resolve();
      }
    });
    void exit.then((why) => {
      clearTimeout(timer);
      reject(new Error(why));
    });
  });
  child.on('message', (m: unknown, socket: unknown) => {
    if (!(socket instanceof Socket)) return;
    // As the sockets node:http's own server accepts (the guard answers a half-closed client).
    socket.allowHalfOpen = true;
    const upload = typeof m === 'object' && m !== null ? (m as { berth?: unknown; id?: unknown }) : {};
    if (closing) socket.destroy();
    else if (upload.berth === 'upload' && typeof upload.id === 'string') o.onUpload(upload.id, socket);
    else o.onConnection(socket);
  });
  void exit.then((why) => {
    if (!closing) o.onExit(why);
  });
  const tell = (m: { add: string } | { del: string }) => {
    if (!exited && child.connected) child.send(m);
  };
  return {
    add: (id) => {
      if (HEX64.test(id)) tell({ add: id });
    },
    delete: (id) => {
      if (HEX64.test(id)) tell({ del: id });
    },
    close: async () => {
      closing = true;
      if (!exited) child.kill('SIGTERM');
      await exit;
    },
  };
}
