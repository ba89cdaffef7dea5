/** `berth serve`: store + service + HTTP, started together and stopped cleanly. */
import { join, resolve } from 'node:path';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createHttpServer } from './http.js';
import { ServerService } from './service.js';
import type { ServiceOptions } from './service.js';
import { ensurePrivateDir, openSql } from './sql.js';
import { ServerStore } from './store.js';

export interface ServeOptions {
  port: number;
  host?: string;
  dataDir: string;
  /** `sqlite:PATH` (default `<data>/server.db`) or `postgres://…`. */
  db?: string;
  concurrency: number;
  token?: string;
  labels?: Record<string, string>;
  /** How often a running job's CPU and memory are sampled (seconds; default 2). */
  sampleSeconds?: number;
  /** How often leftovers of dead runners are looked for (seconds; default 600). */
  reapSeconds?: number;
  /** What is kept of runs' artifacts (see ServiceOptions). */
  artifacts?: ServiceOptions['artifacts'];
  log?: (line: string) => void;
}

export interface ServerHandle {
  url: string;
  store: ServerStore;
  service: ServerService;
  http: Server;
  close(): Promise<void>;
}

export async function startServer(o: ServeOptions): Promise<ServerHandle> {
  const dataDir = resolve(o.dataDir);
  // Workspaces (checked-out code), artifacts and the store: this user's only.
  ensurePrivateDir(dataDir, 'server data folder');
  const store = await ServerStore.open(await openSql(o.db ?? `sqlite:${join(dataDir, 'server.db')}`));
  const service = new ServerService({
    store,
    dataDir,
    concurrency: o.concurrency,
    labels: o.labels,
    sampleSeconds: o.sampleSeconds,
    artifacts: o.artifacts,
    log: o.log,
  });
  await service.recover();
  const http = createHttpServer({ store, service, token: o.token });
  await new Promise<void>((res, rej) => {
    http.once('error', rej);
    http.listen(o.port, o.host ?? '127.0.0.1', () => res());
  });
  const addr = http.address() as AddressInfo;
  void service.tick();
  service.startPolling();
  service.startReaping((o.reapSeconds ?? 600) * 1000);
  return {
    url: `http://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}`,
    store,
    service,
    http,
    close: async () => {
      http.closeAllConnections();
      await new Promise<void>((res) => http.close(() => res()));
      await service.stop();
      await store.close();
    },
  };
}
