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

/**
 * Where the context's bytes go when the fast front holds them (an UploadLink, upload.ts): the gate
 * passes them by count, and says when it passes no more of them.
 */
export interface ContextPassage {
  /** The next n bytes may go to the engine. */
  credit(n: number): void;
  /** No more of the client's bytes go to the engine by count (the gate pushes what passes). */
  stop(): void;
  /** The next n bytes are to be copied to the gate. */
  request(n: number): void;
  /** The next n bytes (after those requested) are not: a file's data the gate passes unread. */
  skip(n: number): void;
}

/** How far ahead of the gate's reading the front may copy the context. */
const WINDOW = 1024 * 1024;
/** A file's data is passed unread when at least this much of it lies beyond the window. */
const SKIP_MIN = 256 * 1024;

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

  /** Whether the passage (when there is one) still takes the context's bytes by count. */
  private passing: boolean;
  /** Body offsets: of the next byte the gate reads, and the end of what the passage was told of. */
  private consumed = 0;
  private requested = 0;
  /** Bytes the passage skips, from body offset `at` (the copy goes on after them). */
  private skipping: { at: number; len: number } | undefined;

  /**
   * `check` gets every version of the Dockerfile the context holds and answers why the build may
   * not run (an Error to fail with), or undefined.
   *
   * With a passage, a plain context's bytes are passed by count and not pushed: the front holds
   * them and sends them to the engine. A compressed context (the gate passes it inflated) and the
   * bytes after the scanner stopped are not the front's to send: the passage is told to stop, and
   * the gate pushes what passes itself.
   */
  constructor(
    watched: ReadonlySet<string>,
    private readonly check: (dockerfiles: readonly Buffer[]) => Promise<Error | undefined>,
    private readonly passage?: ContextPassage,
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
        if (this.passing && this.archive.compression === 'none') return this.passage?.credit(bytes.length);
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
    this.passing = passage !== undefined;
    this.plan();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    const skip = this.skipping;
    if (skip !== undefined && this.consumed + chunk.length > skip.at) {
      // The copy goes on after bytes the passage skips: what comes before them is read (a plain
      // archive is read at once), then the copy's rest, which follows them.
      const before = skip.at - this.consumed;
      this.archive.write(chunk.subarray(0, before), () => undefined);
      this.consumed = skip.at;
      this.reachSkip();
      // The rest (even none of it) is read below, and what the passage is told next with it.
      return this._transform(chunk.subarray(before), _enc, done);
    }
    this.archive.write(chunk, () => {
      this.consumed += chunk.length;
      this.reachSkip();
      this.plan();
      done();
    });
  }

  /**
   * Once the gate has read up to bytes the passage skips, they are passed over (and passed on) at
   * once: the front sends them to the engine only as they are credited, and the copy goes on only
   * after them. The caller then plans what comes next.
   */
  private reachSkip(): void {
    const skip = this.skipping;
    if (skip === undefined || this.consumed !== skip.at) return;
    this.scanner.skip(skip.len);
    this.passage?.credit(skip.len);
    this.consumed += skip.len;
    this.skipping = undefined;
  }

  /**
   * What the passage is told next: to stop, once nothing more of the client's bytes passes by
   * count; to skip the rest of a large file's data beyond the window; to copy more of it.
   */
  private plan(): void {
    if (!this.passing) return;
    const kind = this.archive.compression;
    if ((kind !== undefined && kind !== 'none') || this.scanner.stopped || this.archive.broken) {
      this.passing = false;
      this.passage?.stop();
      return;
    }
    if (this.skipping === undefined && kind === 'none') {
      const end = this.consumed + this.scanner.skippable;
      if (end - this.requested >= SKIP_MIN) {
        this.skipping = { at: this.requested, len: end - this.requested };
        this.passage?.skip(this.skipping.len);
        this.requested = end;
      }
    }
    const ahead = this.requested - this.consumed - (this.skipping?.len ?? 0);
    if (ahead < WINDOW / 2) {
      this.passage?.request(WINDOW - ahead);
      this.requested += WINDOW - ahead;
    }
  }

  override _read(size: number): void {
    this.archive.resume();
    super._read(size);
  }

  override _flush(done: TransformCallback): void {
    void (async () => {
      try {
        const scan = await this.archive.end();
        // The copy ended before bytes the passage was to skip: the archive ends inside a file.
        if (this.skipping !== undefined)
          return this.stop(
            new Error('berth cannot read this build context: the archive ends in the middle of an entry'),
            done,
          );
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
