/**
 * A build context on its way to dockerd, read as it passes. The legacy builder extracts the whole
 * context before it reads the Dockerfile and runs a step, and it stops reading at the tar's
 * end-of-archive block. The gate passes the context on as a plain tar (a gzip one decompressed),
 * holds back that end block, and sends it only once the Dockerfile (every version the archive
 * has of it, read with the scanner dockerd's extraction is matched against) passed the check. A
 * context that fails the check never ends for dockerd: the upload is cut, and no step runs.
 */
import { Transform } from 'node:stream';
import type { TransformCallback } from 'node:stream';
import { ArchiveScan, LoadScanner, landing } from './loadscan.js';

/** Landing paths dockerd reads the Dockerfile from: the `dockerfile` option, and its fallback. */
export function dockerfilePaths(option: string | null): Set<string> {
  const at = landing(option === null || option === '' ? 'Dockerfile' : option);
  const out = new Set([at]);
  // dockerd's legacy builder falls back to `dockerfile` when the default name is missing.
  if (at === 'Dockerfile') out.add('dockerfile');
  return out;
}

/**
 * Pieces smaller than this are gathered before they go on. A client sends a context of many small
 * files as many small pieces (the docker CLI writes an HTTP chunk per header and per file): each one
 * pushed on its own costs a trip through every stream to dockerd's socket.
 */
const GATHER_BYTES = 16 * 1024;

export class ContextGate extends Transform {
  private readonly scanner: LoadScanner;
  private readonly archive: ArchiveScan;
  private readonly versions: Buffer[] = [];
  private held = 0;
  /** Bytes scanned and not yet passed on: small pieces are gathered (see GATHER_BYTES). */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private passScheduled = false;
  /** Why the context was stopped; set before the stream fails. */
  refused: Error | undefined;

  /**
   * `check` gets every version of the Dockerfile the context holds and answers why the build may
   * not run (an Error to fail with), or undefined.
   */
  constructor(
    watched: ReadonlySet<string>,
    private readonly check: (dockerfiles: readonly Buffer[]) => Promise<Error | undefined>,
  ) {
    super();
    this.scanner = new LoadScanner({
      watched,
      read: (_at, data) => {
        // Each version is held until the end: a bounded number of them.
        this.held += data.length;
        if (this.versions.length >= 16 || this.held > 16 * 1024 * 1024)
          return 'the context holds its Dockerfile more than 16 times (or more than 16 MiB of it)';
        this.versions.push(data);
        return undefined;
      },
      emit: (bytes) => {
        this.pending.push(bytes);
        this.pendingBytes += bytes.length;
        // Gathered only while the reader keeps up: behind it, a piece goes on at once, so the
        // stream sees its buffer full and stops taking the upload (red-team pass 17: deferred
        // pieces left the write side unblocked, and a client sending small pieces faster than
        // dockerd read them filled the guard's memory).
        if (
          this.pendingBytes >= GATHER_BYTES ||
          this.readableLength + this.pendingBytes >= this.readableHighWaterMark
        )
          this.passPending();
        else if (!this.passScheduled) {
          this.passScheduled = true;
          setImmediate(() => {
            this.passScheduled = false;
            this.passPending();
          });
        }
      },
    });
    this.archive = new ArchiveScan(this.scanner, 'build context');
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.archive.write(chunk, () => done());
  }

  override _read(size: number): void {
    this.archive.resume();
    super._read(size);
  }

  override _flush(done: TransformCallback): void {
    void (async () => {
      try {
        const scan = await this.archive.end();
        if (scan.problem !== undefined)
          return this.stop(new Error(`berth cannot read this build context: ${scan.problem}`), done);
        const why = await this.check(this.versions);
        if (why) return this.stop(why, done);
        this.passPending();
        // The end-of-archive: two zero blocks, as Go's reader expects them (after the last entry's
        // padding, where the archive went without it).
        this.push(Buffer.alloc(this.scanner.unpadded + 1024));
        done();
      } catch (err) {
        this.stop(err instanceof Error ? err : new Error(String(err)), done);
      }
    })();
  }

  /** Passes the gathered pieces on, as one. */
  private passPending(): void {
    if (this.pending.length === 0 || this.destroyed) return;
    const out = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    // A gzip context inflates as fast as it likes: it waits while dockerd has not taken what is
    // already here (a plain one waits through the stream's own backpressure).
    if (out && !this.push(out)) this.archive.pause();
  }

  override _destroy(err: Error | null, done: (error: Error | null) => void): void {
    this.archive.destroy();
    done(err);
  }

  private stop(why: Error, done: TransformCallback): void {
    this.refused = why;
    done(why);
  }
}
