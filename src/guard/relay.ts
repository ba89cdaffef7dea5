/**
 * Body relay for the guard's streams (save, export, cp, logs, build contexts, load).
 *
 * dockerd sends a large answer in thousands of small pieces (a 128 MiB `docker save` arrives as
 * about 6000 chunked-encoding frames, many under 1 KiB), and a plain `pipe()` turns each into its
 * own write and frame: the per-write cost then exceeds the cost of the bytes, and on a busy host the
 * proxy's CPU becomes the limit. The relay reads whatever has arrived, writes it as one piece, and
 * keeps backpressure (the source is not read while the destination is full) and teardown both
 * ways (the destination closing early destroys the source; a source error destroys the destination).
 */
import type { Readable, Writable } from 'node:stream';

export interface RelayOptions {
  /** End the destination when the source ends (default true). */
  end?: boolean;
  /** Called with every piece written (for watchers such as the build's image-ID scan). */
  onData?: (chunk: Buffer) => void;
  /**
   * What to do with the rest of the source when the destination closes first: `destroy` it (an
   * answer whose client went away), or `discard` it (an upload the daemon stopped reading after
   * answering early: the client must still be able to read that answer). Default `destroy`.
   */
  onEarlyClose?: 'destroy' | 'discard';
}

/** Relays `src` into `dst`; resolves when the source ended (and, with `end`, the destination finished) or either side failed or closed. */
export function relay(src: Readable, dst: Writable, opts: RelayOptions = {}): Promise<void> {
  const end = opts.end ?? true;
  return new Promise<void>((resolve) => {
    let settled = false;
    let waiting = false;
    const settle = (): void => {
      if (settled) return;
      settled = true;
      src.off('readable', pump);
      src.off('end', onEnd);
      src.off('error', onSrcError);
      dst.off('drain', onDrain);
      dst.off('close', onDstClose);
      dst.off('error', onDstError);
      dst.off('finish', settle);
      resolve();
    };
    function pump(): void {
      if (waiting) return;
      const parts: Buffer[] = [];
      let n = 0;
      for (let c = src.read() as Buffer | null; c !== null; c = src.read() as Buffer | null) {
        parts.push(c);
        n += c.length;
      }
      if (n === 0) return;
      const piece = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, n);
      opts.onData?.(piece);
      if (!dst.write(piece)) waiting = true;
    }
    function onDrain(): void {
      waiting = false;
      pump();
    }
    function onEnd(): void {
      if (end) dst.end();
      else settle();
    }
    function onSrcError(err: Error): void {
      dst.destroy(err);
      settle();
    }
    function onDstClose(): void {
      if (!src.readableEnded) {
        if (opts.onEarlyClose === 'discard') {
          settle();
          src.resume();
          return;
        }
        src.destroy();
      }
      settle();
    }
    function onDstError(): void {
      src.destroy();
      settle();
    }
    src.on('readable', pump);
    src.on('end', onEnd);
    src.on('error', onSrcError);
    dst.on('drain', onDrain);
    dst.on('close', onDstClose);
    dst.on('error', onDstError);
    dst.on('finish', settle);
  });
}
