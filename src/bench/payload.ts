/** Build contexts and payloads for the stream scenarios, generated as streams (never whole in memory). */
import { randomBytes } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import tar from 'tar-stream';

/** A stream of `bytes` pseudo-random bytes in 1 MiB chunks. */
export function randomStream(bytes: number): Readable {
  let left = bytes;
  const chunk = randomBytes(1024 * 1024);
  return new Readable({
    read() {
      if (left <= 0) {
        this.push(null);
        return;
      }
      const n = Math.min(left, chunk.length);
      left -= n;
      // Vary the first bytes so identical chunks cannot be deduplicated anywhere along the way.
      const out = Buffer.from(chunk.subarray(0, n));
      out.writeUInt32BE(left >>> 0, 0);
      this.push(out);
    },
  });
}

/** A tar build context: a Dockerfile plus optional files (given as sizes of random content). */
export function buildContext(dockerfile: string, files: Record<string, number> = {}): Readable {
  const pack = tar.pack();
  const addAll = async (): Promise<void> => {
    pack.entry({ name: 'Dockerfile' }, dockerfile);
    for (const [name, size] of Object.entries(files)) {
      await new Promise<void>((resolve, reject) => {
        const entry = pack.entry({ name, size }, (err) => (err ? reject(err) : resolve()));
        randomStream(size).pipe(entry);
      });
    }
    pack.finalize();
  };
  addAll().catch((err: unknown) => pack.destroy(err instanceof Error ? err : new Error(String(err))));
  // tar-stream packs are streamx streams; hand the engine client a node stream.
  const out = new PassThrough();
  pack.pipe(out);
  pack.on('error', (err: Error) => out.destroy(err));
  return out;
}

export const MiB = 1024 * 1024;
