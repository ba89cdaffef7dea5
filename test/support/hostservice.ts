/**
 * A stand-in for a service on the host's loopback (what a tenant must never make dockerd reach):
 * an HTTP server on 127.0.0.1 that counts the requests it gets and answers each with `body`.
 */
import { createServer } from 'node:http';

export interface HostService extends AsyncDisposable {
  /** `127.0.0.1:PORT` */
  readonly addr: string;
  /** Requests served so far. */
  hits(): number;
}

export async function startHostService(
  answer: { status?: number; body?: string } = {},
): Promise<HostService> {
  let hits = 0;
  const server = createServer((_req, res) => {
    hits++;
    res.statusCode = answer.status ?? 200;
    res.end(answer.body ?? '');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const a = server.address();
  return {
    addr: `127.0.0.1:${a && typeof a === 'object' ? a.port : 0}`,
    hits: () => hits,
    [Symbol.asyncDispose]: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
