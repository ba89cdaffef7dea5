/**
 * Bulk downloads (`docker save`, `export`, `cp` out, `logs`) byte for byte.
 *
 * Through node:http every piece of an answer is a fresh Buffer; a 128 MiB `docker save` arrives
 * as thousands of reads, and the garbage they leave (external memory) sets off a full mark-compact
 * every few MiB — measured here: about 20 collections and as much CPU in V8's worker threads as in
 * the relay itself. For these answers the guard opens its own connection to the engine with
 * `Connection: close`, reads it into a small pool of reused buffers (`onread`), and writes the
 * answer — status line, headers and body with its chunked framing — unchanged onto the client's
 * socket, which closes with it (the engine's answer says `Connection: close`, so the client does
 * not reuse the connection). A buffer goes back to the pool when its write has been flushed; with
 * the pool empty the engine socket is paused: backpressure end to end.
 *
 * Only answers the guard does not need to read go this way; their requests are fully checked
 * before (the route, the container's owner), and the path is the guard's own rebuilt path.
 */
import type { OnReadOpts, Socket } from 'node:net';
import type { Duplex } from 'node:stream';

export type RawConnect = (onread: OnReadOpts) => Socket;

const POOL = 4;
const SIZE = 256 * 1024;

export class RawStreamError extends Error {}

/**
 * Sends `head` (a complete request head) on a new engine connection and relays the whole answer
 * onto `client`. Resolves with the answer's status once the client socket is done; rejects only
 * when nothing was written to the client yet (the caller can still answer with an error).
 */
export function rawStream(connect: RawConnect, head: string, client: Duplex): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const free: Uint8Array[] = [];
    let allocated = 0;
    let inFlight = 0;
    let status = 0;
    let started = false;
    let settled = false;
    const done = (err?: Error): void => {
      if (settled) return;
      settled = true;
      if (err && !started) reject(err);
      else resolve(status);
    };
    const up = connect({
      buffer: () => {
        const b = free.pop();
        if (b) return b;
        allocated++;
        return new Uint8Array(SIZE);
      },
      callback: (n, buf) => {
        if (!started) {
          started = true;
          const line = Buffer.from(buf.buffer, buf.byteOffset, Math.min(n, 64)).toString('latin1');
          status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(line)?.[1] ?? 0);
        }
        inFlight++;
        client.write(Buffer.from(buf.buffer, buf.byteOffset, n), () => {
          inFlight--;
          free.push(buf);
          if (up.isPaused() && !client.destroyed) up.resume();
        });
        if (inFlight >= POOL && allocated >= POOL) up.pause();
        return true;
      },
    });
    up.on('connect', () => up.write(head));
    up.on('end', () => {
      if (!started) return done(new RawStreamError('the engine closed the connection without an answer'));
      client.end();
    });
    up.on('error', (err) => {
      if (started) client.destroy();
      done(err);
    });
    client.on('close', () => {
      up.destroy();
      done();
    });
    client.on('finish', () => done());
  });
}

/** A request head for the engine: the method, the guard's rebuilt path, and `Connection: close`. */
export function requestHead(method: string, target: string, headers: Record<string, string> = {}): string {
  let h = `${method} ${target} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n`;
  for (const [k, v] of Object.entries(headers)) {
    if (/[\r\n]/.test(k) || /[\r\n]/.test(v)) throw new RawStreamError(`header ${k} has a line break`);
    h += `${k}: ${v}\r\n`;
  }
  return `${h}\r\n`;
}
