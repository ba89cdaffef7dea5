/**
 * Bulk downloads moved by the kernel. `docker save`, `export` and `cp` out through rawStream still
 * pass every byte through JavaScript: two copies across the guard (engine socket into the guard,
 * guard into the client's socket), a callback per read, and a process competing for the same CPUs
 * as dockerd and the client. Measured on this project's 2-core VM with the real docker CLI and a
 * 256 MiB payload: `docker cp` out through the JavaScript relay ran at 0.70× the raw socket, a C
 * read/write relay at 0.88×, and a splice relay (engine socket → pipe → client socket, no copy
 * through user space) at 1.0×.
 *
 * So for these answers the guard starts berth-splice (src/guard/native/berth-splice.c, compiled by
 * `npm run build` when a C compiler is there) with the client's socket as its fd 3: it sends the
 * guard's rebuilt request head to the engine, reports the answer's status, and splices the whole
 * answer onto the client. The request was fully checked before; the helper decides nothing. Where
 * the helper is missing (no compiler), the engine is not on a unix socket, the client's
 * connection is TLS, or the guard is told so (`bulkRelay: 'javascript'`), it uses rawStream.
 */
import { spawn } from 'node:child_process';
import type { Socket } from 'node:net';
import { nativeHelper } from './native.js';
import { RawStreamError } from './rawstream.js';

/** The compiled helper, or undefined when it was not built. */
export function spliceHelper(): string | undefined {
  return nativeHelper('berth-splice');
}

/** Exit codes of berth-splice (see its source). */
const NOTHING_SENT = 1;

/**
 * Sends `head` to the engine at `enginePath` and splices the whole answer onto `client`, which is
 * closed afterwards. Resolves with the answer's status; rejects (RawStreamError) only when nothing
 * was written to the client, so the caller can still answer with an error.
 */
export function spliceStream(
  helper: string,
  enginePath: string,
  head: string,
  client: Socket,
): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let status = 0;
    let out = '';
    let err = '';
    // Node stops reading the client's socket here: the helper owns it until it exits.
    const child = spawn(helper, [enginePath], { stdio: ['pipe', 'pipe', 'pipe', client] });
    // The head goes on stdin: an argument would be in the process list for every local user.
    child.stdin?.on('error', () => undefined).end(head);
    child.stdout?.setEncoding('latin1').on('data', (d: string) => {
      if (out.length < 64) out += d;
      const m = /^status (\d{3})\n/.exec(out);
      if (m) status = Number(m[1]);
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      if (err.length < 4096) err += d;
    });
    // Whoever ends first, the guard or the client, the helper goes with the connection.
    const onClose = (): void => {
      child.kill('SIGKILL');
    };
    client.once('close', onClose);
    child.once('error', (e) => {
      client.off('close', onClose);
      reject(new RawStreamError(`berth-splice: ${e.message}`));
    });
    child.once('close', (code) => {
      client.off('close', onClose);
      if (code === NOTHING_SENT && status === 0) {
        reject(new RawStreamError(err.trim().replace(/^berth-splice: /, '') || 'berth-splice failed'));
        return;
      }
      // The answer is whole (0), or its client or engine went away (2, 3, a signal): either way
      // the connection ends here; an answer cut short reads as cut short.
      if (code === 0 && !client.destroyed) client.end(() => client.destroy());
      else client.destroy();
      resolve(status);
    });
  });
}
