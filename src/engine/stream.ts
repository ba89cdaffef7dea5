/**
 * The engine's multiplexed stream format (attach/logs/exec without a TTY): frames of an 8-byte
 * header [stream, 0, 0, 0, size (uint32 BE)] followed by `size` bytes of payload.
 * Also: JSON-lines progress streams (build, pull, push, load).
 */
import { Transform, Writable } from 'node:stream';
import type { Readable, TransformCallback } from 'node:stream';

export type StreamKind = 'stdin' | 'stdout' | 'stderr' | 'system';
const KINDS: readonly StreamKind[] = ['stdin', 'stdout', 'stderr', 'system'];

export interface Frame {
  stream: StreamKind;
  data: Buffer;
}

/** Incremental frame decoder: push bytes in, get whole frames out. Pure. */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const frames: Frame[] = [];
    while (this.buf.length >= 8) {
      const size = this.buf.readUInt32BE(4);
      if (this.buf.length < 8 + size) break;
      const kind = KINDS[this.buf[0] ?? 1] ?? 'stdout';
      frames.push({ stream: kind, data: this.buf.subarray(8, 8 + size) });
      this.buf = this.buf.subarray(8 + size);
    }
    return frames;
  }

  /** Bytes held back waiting for the rest of a frame. */
  get pending(): number {
    return this.buf.length;
  }
}

export function encodeFrame(stream: StreamKind, data: Buffer): Buffer {
  const header = Buffer.alloc(8);
  header[0] = KINDS.indexOf(stream);
  header.writeUInt32BE(data.length, 4);
  return Buffer.concat([header, data]);
}

/** Splits a multiplexed stream into stdout and stderr writables, honouring backpressure. */
export function demux(source: Readable, stdout: Writable, stderr: Writable): Promise<void> {
  const decoder = new FrameDecoder();
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const frames = decoder.push(chunk);
      let waiting = 0;
      let done = false;
      const finish = (): void => {
        if (!done && waiting === 0) {
          done = true;
          cb();
        }
      };
      for (const f of frames) {
        const target = f.stream === 'stderr' ? stderr : stdout;
        if (!target.write(f.data)) {
          waiting++;
          target.once('drain', () => {
            waiting--;
            finish();
          });
        }
      }
      finish();
    },
  });
  return new Promise((resolve, reject) => {
    source.on('error', reject);
    sink.on('error', reject);
    sink.on('finish', () => resolve());
    source.pipe(sink);
  });
}

/** Parses a JSON-lines stream (build/pull/push output) into objects. */
export class JsonLines extends Transform {
  private rest = '';
  constructor() {
    super({ readableObjectMode: true });
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    const text = this.rest + chunk.toString('utf8');
    const lines = text.split(/\r?\n/);
    this.rest = lines.pop() ?? '';
    for (const line of lines) this.pushLine(line);
    cb();
  }
  override _flush(cb: TransformCallback): void {
    this.pushLine(this.rest);
    cb();
  }
  private pushLine(line: string): void {
    const t = line.trim();
    if (t === '') return;
    try {
      this.push(JSON.parse(t));
    } catch {
      this.push({ stream: t });
    }
  }
}

export interface ProgressMessage {
  stream?: string;
  status?: string;
  progress?: string;
  id?: string;
  error?: string;
  errorDetail?: { message?: string; code?: number };
  aux?: { ID?: string; Digest?: string; Tag?: string };
}

/** Consumes a JSON progress stream; resolves with all messages, rejects on the first `error`. */
export async function followProgress(
  source: Readable,
  onMessage?: (m: ProgressMessage) => void,
): Promise<ProgressMessage[]> {
  const all: ProgressMessage[] = [];
  for await (const m of source.pipe(new JsonLines())) {
    const msg = m as ProgressMessage;
    all.push(msg);
    onMessage?.(msg);
    if (msg.error !== undefined) throw new Error(msg.error);
  }
  return all;
}
