/**
 * Build contexts that the fast front moves to the engine itself (berth-front.c, upload()). The
 * front sends the guard the build request with a copy of its context as the body, and an
 * `x-berth-upload` header naming a channel it handed over beside it. The guard checks the request
 * and reads the copy as ever; its connection to the engine for the build goes through the channel
 * (an UploadLink), where the front writes what the guard writes (`W`), and from the context it
 * holds passes on only as many bytes as the guard says it may (`C`), or none from some point on
 * (`S`). So the context crosses the guard's JavaScript once, read, instead of read, copied and
 * written again, and the engine still gets only what the guard passed.
 */
import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';

/** The channel's name: 32 hex digits the front drew at random. */
const ID = /^[0-9a-f]{32}$/;

/** How long a channel waits for its request. */
const CHANNEL_MS = 30_000;
/**
 * How long a request waits for its channel: the front hands it over right after the request's
 * head, so only a name the client made up waits this long.
 */
const CLAIM_MS = 2_000;

/**
 * The guard's connection to the engine for one build, through the front. Usable as the socket of
 * an http.ClientRequest (`createConnection`): what the request writes goes to the engine as it is,
 * the engine's answer comes back.
 */
export class UploadLink extends Duplex {
  /** Nothing is passed before the request's head went (the front writes in the order it reads). */
  private headSent = false;
  private credits = 0;
  private halted = false;
  private stopSent = false;

  constructor(private readonly socket: Socket) {
    super();
    socket.on('data', (c: Buffer) => {
      if (!this.push(c)) socket.pause();
    });
    socket.on('end', () => this.push(null));
    socket.on('error', (err) => this.destroy(err));
    socket.on('close', () => {
      if (!this.destroyed) this.destroy();
    });
  }

  /** Whether the front was told to pass no more of the client's bytes (stop). */
  get stopped(): boolean {
    return this.halted;
  }

  /** The context's next `n` bytes (as the client sent them) may go to the engine. */
  credit(n: number): void {
    if (n <= 0 || this.halted || this.destroyed) return;
    if (!this.headSent) this.credits += n;
    else this.socket.write(`C ${n}\n`);
  }

  /** The context's next `n` bytes are to be copied to the guard (its read window grows). */
  request(n: number): void {
    if (n > 0 && !this.halted && !this.destroyed) this.socket.write(`R ${n}\n`);
  }

  /**
   * The context's next `n` bytes (after those requested) are not: a file's data the guard passes
   * unread. They go to the engine once credited, as any others.
   */
  skip(n: number): void {
    if (n > 0 && !this.halted && !this.destroyed) this.socket.write(`K ${n}\n`);
  }

  /** No more of the client's context goes to the engine: what does, the guard writes itself. */
  stop(): void {
    if (this.halted || this.destroyed) return;
    this.halted = true;
    // Credits given before still count: they go first (with the head, when it has not gone yet).
    // Without any, the front is told at once (the guard may be waiting for the body meanwhile).
    if (this.headSent || this.credits === 0) {
      this.stopSent = true;
      this.socket.write('S\n');
    }
  }

  override _read(): void {
    this.socket.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    if (this.headSent) return this.send(chunk, done);
    // The request's head is its first write, whole (upstream flushes it alone, at once): the
    // credits given meanwhile go right after it. A first write that is not a whole head is refused
    // (scanning bytes for its end missed a head over 4 KiB once: red-team pass 32).
    if (chunk.length < 4 || chunk.toString('latin1', chunk.length - 4) !== '\r\n\r\n')
      return done(new Error('the request to the engine did not begin with its whole head'));
    this.headSent = true;
    this.send(chunk, done);
    if (this.credits > 0) this.socket.write(`C ${this.credits}\n`);
    if (this.halted && !this.stopSent) this.socket.write('S\n');
    this.credits = 0;
  }

  private send(bytes: Buffer, done?: (err?: Error | null) => void): void {
    this.socket.write(`W ${bytes.length}\n`);
    this.socket.write(bytes, done);
  }

  override _final(done: (err?: Error | null) => void): void {
    this.socket.end();
    done();
  }

  override _destroy(err: Error | null, done: (err: Error | null) => void): void {
    this.socket.destroy();
    done(err);
  }
}

/** Channels the front handed over, until the request that names each claims it. */
export class UploadChannels {
  private readonly waiting = new Map<
    string,
    { socket?: Socket; claim?: (s: Socket | undefined) => void; timer: NodeJS.Timeout }
  >();

  /** A channel from the front. */
  offer(id: string, socket: Socket): void {
    if (!ID.test(id)) return void socket.destroy();
    const w = this.waiting.get(id);
    if (w?.claim) {
      clearTimeout(w.timer);
      this.waiting.delete(id);
      return w.claim(socket);
    }
    if (w) return void socket.destroy(); // a second channel of one name: neither is trusted
    const timer = setTimeout(() => {
      this.waiting.delete(id);
      socket.destroy();
    }, CHANNEL_MS);
    timer.unref();
    this.waiting.set(id, { socket, timer });
  }

  /**
   * The channel a request names, once the front handed it over (it sends it just after the
   * request's head); undefined when none comes.
   */
  claim(id: string): Promise<UploadLink | undefined> {
    if (!ID.test(id)) return Promise.resolve(undefined);
    const w = this.waiting.get(id);
    if (w?.socket) {
      clearTimeout(w.timer);
      this.waiting.delete(id);
      return Promise.resolve(new UploadLink(w.socket));
    }
    if (w) return Promise.resolve(undefined); // claimed twice
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        resolve(undefined);
      }, CLAIM_MS);
      timer.unref();
      this.waiting.set(id, { claim: (s) => resolve(s && new UploadLink(s)), timer });
    });
  }

  /** Drops every channel (the guard closes). */
  close(): void {
    for (const [, w] of this.waiting) {
      clearTimeout(w.timer);
      w.socket?.destroy();
      w.claim?.(undefined);
    }
    this.waiting.clear();
  }
}
