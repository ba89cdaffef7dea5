/**
 * A private image registry for one test file: Debian's `docker-registry` on a free loopback port
 * with its own storage. Tests never share the example's 127.0.0.1:5000 — one file stopping it, or
 * tidying its tags, would pull the ground from under another file running at the same time.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import type { Socket } from 'node:net';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import { join } from 'node:path';

export interface TestRegistry extends AsyncDisposable {
  /** host:port, on 127.0.0.1 */
  readonly addr: string;
  close(): Promise<void>;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (a && typeof a === 'object' ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

/** Starts a registry whose storage lives under `dir`; answers once `/v2/` does. */
export async function startRegistry(dir: string): Promise<TestRegistry> {
  const addr = `127.0.0.1:${await freePort()}`;
  const data = join(dir, 'registry-data');
  mkdirSync(data, { recursive: true });
  const config = join(dir, 'registry.yml');
  writeFileSync(
    config,
    [
      'version: 0.1',
      'log:',
      '  level: error',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${data}`,
      '  delete:',
      '    enabled: true',
      'http:',
      `  addr: ${addr}`,
      '',
    ].join('\n'),
  );
  const child = spawn('docker-registry', ['serve', config], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let spawnError: Error | undefined;
  child.once('error', (err) => (spawnError = err));
  const close = async () => {
    if (child.exitCode === null && child.signalCode === null && !spawnError) {
      child.kill('SIGTERM');
      await exited;
    }
  };
  for (let i = 0; i < 100; i++) {
    if (spawnError) throw new Error(`docker-registry did not start: ${spawnError.message}`);
    const up = await fetch(`http://${addr}/v2/`, { signal: AbortSignal.timeout(2000) }).then(
      (r) => r.ok,
      () => false,
    );
    if (up) return { addr, close, [Symbol.asyncDispose]: close };
    await new Promise((r) => setTimeout(r, 100));
  }
  await close();
  throw new Error(`docker-registry did not answer on ${addr} within 10 s`);
}

/**
 * The example's own registry, started the way a user starts it (examples/setup.sh) but on a free
 * port and with its own storage, so concurrent test files never share one.
 */
export async function startExampleRegistry(stateDir: string, root: string): Promise<TestRegistry> {
  const addr = `127.0.0.1:${await freePort()}`;
  const env = { ...process.env, BERTH_EXAMPLE_REGISTRY: addr, BERTH_EXAMPLE_STATE: stateDir };
  const setup = join(root, 'examples/setup.sh');
  const sh = (args: string[]) =>
    new Promise<{ code: number; out: string }>((resolve) => {
      const child = spawn('sh', [setup, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (b: Buffer) => (out += b.toString()));
      child.stderr.on('data', (b: Buffer) => (out += b.toString()));
      child.once('close', (code) => resolve({ code: code ?? 1, out }));
    });
  const up = await sh([]);
  if (up.code !== 0) throw new Error(`examples/setup.sh failed (${up.code}): ${up.out}`);
  if (!/registry: started on/.test(up.out))
    throw new Error(`examples/setup.sh did not start its own registry on ${addr}: ${up.out}`);
  const close = async () => {
    await sh(['stop']);
  };
  return { addr, close, [Symbol.asyncDispose]: close };
}

export interface GatedRegistry extends TestRegistry {
  /**
   * Holds the next requests whose path matches `path` until `release()`: `reached` settles when
   * the first arrives. For making a pull slow at a chosen point, to run something beside it.
   */
  hold(path: RegExp): { reached: Promise<void>; release(): void };
}

/** A plain HTTP relay in front of a registry (its own repository names, `addr/...`) that can hold requests. */
export async function gatedRegistry(upstream: string): Promise<GatedRegistry> {
  const [host = '127.0.0.1', port = '0'] = upstream.split(':');
  let gate: { path: RegExp; arrived: () => void; open: Promise<void> } | undefined;
  const sockets = new Set<Socket>();
  const server = createHttpServer((req, res) => {
    const forward = () => {
      const up = httpRequest(
        { host, port: Number(port), method: req.method, path: req.url, headers: req.headers },
        (r) => {
          res.writeHead(r.statusCode ?? 502, r.headers);
          r.pipe(res);
        },
      );
      up.on('error', () => res.destroy());
      req.pipe(up);
    };
    const g = gate;
    if (g && g.path.test(req.url ?? '')) {
      g.arrived();
      void g.open.then(forward);
    } else forward();
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  const p = await freePort();
  await new Promise<void>((resolve) => server.listen(p, '127.0.0.1', resolve));
  const close = async () => {
    gate = undefined;
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return {
    addr: `127.0.0.1:${p}`,
    hold(path) {
      let arrived: () => void = () => undefined;
      let release: () => void = () => undefined;
      const reached = new Promise<void>((r) => (arrived = r));
      const open = new Promise<void>((r) => (release = r));
      gate = { path, arrived, open };
      return {
        reached,
        release: () => {
          gate = undefined;
          release();
        },
      };
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
