/** A relay onto the engine's socket that holds chosen requests: "the engine answers late", on cue. */
import { createServer, connect } from 'node:net';
import type { Socket } from 'node:net';

/**
 * A relay onto the engine's socket that holds the bytes of any request whose request line matches
 * `hold` for `ms` (and everything after it on that connection, in order). `seen` resolves when
 * such a request arrives, `answered` once the engine has answered it; `quiet(ms)` once nothing has
 * passed in either direction for that long.
 */
export async function holdingRelay(path: string, hold: RegExp, ms: number) {
  let onSeen: () => void = () => undefined;
  let onAnswered: () => void = () => undefined;
  const seen = new Promise<void>((r) => (onSeen = r));
  const answered = new Promise<void>((r) => (onAnswered = r));
  let last = Date.now();
  /** Request lines as they reached the engine, with the time they did. */
  const sent: { at: number; line: string }[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const up = connect('/var/run/docker.sock');
    sockets.add(client).add(up);
    let queue = Promise.resolve();
    let waiting = false;
    client.on('data', (d: Buffer) => {
      last = Date.now();
      const held = hold.test(d.toString('latin1'));
      if (held) onSeen();
      queue = queue.then(async () => {
        if (held) await new Promise((r) => setTimeout(r, ms));
        up.write(d);
        const line = /^[A-Z]+ \S+/.exec(d.toString('latin1'));
        if (line) sent.push({ at: Date.now(), line: line[0] });
        if (held) waiting = true;
      });
    });
    up.on('data', (d: Buffer) => {
      last = Date.now();
      client.write(d);
      if (waiting) onAnswered();
    });
    // The held bytes still go out when the guard hangs up: the engine acts on what it was sent.
    client.on('end', () => void queue.then(() => up.end()));
    client.on('close', () => void queue.then(() => up.end()));
    client.on('error', () => undefined);
    up.on('end', () => client.end());
    up.on('error', () => client.destroy());
    up.on('close', () => {
      client.destroy();
      sockets.delete(up);
    });
    client.on('close', () => sockets.delete(client));
  });
  await new Promise<void>((r) => server.listen(path, r));
  return {
    seen,
    answered,
    sent,
    quiet: async (quietMs: number) => {
      while (Date.now() - last < quietMs) await new Promise((r) => setTimeout(r, 50));
    },
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}
