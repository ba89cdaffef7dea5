/**
 * The nested-daemon contenders: a daemon started the plain way (dockerd on TCP without TLS,
 * published on loopback, as a stock docker:dind sidecar is used), and berth dind. Both get the
 * images the scenarios need by `docker save` from the host engine and `docker load` into them.
 */
import { performance } from 'node:perf_hooks';
import { randomBytes } from 'node:crypto';
import { errorMessage } from '../common/index.js';
import { DockerClient, containers, images } from '../engine/index.js';
import { benchLabels } from './reap.js';
import type { DockerClient as Client } from '../engine/index.js';
import { fallbackHostConfig, probePrivileges } from '../doctor/index.js';
import { startDind } from '../dind/index.js';
import { waitReady } from './contenders.js';
import type { Contender, Scenario } from './types.js';

const NESTED_IMAGE = 'berth-local/dind';

/** Copies images from one engine into another (save → load), streamed. */
export async function copyImages(from: Client, to: Client, names: readonly string[]): Promise<void> {
  const missing: string[] = [];
  for (const n of names) if (!(await images(to).find(n))) missing.push(n);
  if (missing.length === 0) return;
  const saved = await from.request({ path: '/images/get', query: { names: missing } });
  const res = await to.request({
    method: 'POST',
    path: '/images/load',
    query: { quiet: 1 },
    body: saved,
    headers: { 'Content-Type': 'application/x-tar' },
  });
  res.resume();
  await new Promise((r) => res.on('end', r));
}

interface PlainDaemon {
  id: string;
  client: DockerClient;
  readyMs: number;
}

/** Starts dockerd on TCP :2375 without TLS in a container, published on a loopback port. */
async function startPlain(host: Client): Promise<PlainDaemon> {
  const priv = await probePrivileges(host);
  const hc = priv.privileged.ok
    ? { Privileged: true }
    : fallbackHostConfig(priv.privileged.missingCapabilities);
  const t0 = performance.now();
  const { Id } = await containers(host).create({
    Image: NESTED_IMAGE,
    Cmd: ['dockerd', '--host=tcp://0.0.0.0:2375', '--tls=false'],
    Labels: benchLabels(),
    ExposedPorts: { '2375/tcp': {} },
    HostConfig: { ...hc, PortBindings: { '2375/tcp': [{ HostIp: '127.0.0.1', HostPort: '' }] } },
  });
  try {
    await containers(host).start(Id);
    const info = await containers(host).inspect(Id);
    const ports =
      (info.NetworkSettings as unknown as { Ports?: Record<string, { HostPort: string }[] | null> }).Ports ??
      {};
    const port = ports['2375/tcp']?.[0]?.HostPort;
    if (!port) throw new Error('the plain daemon got no published port');
    const client = new DockerClient({ env: { DOCKER_HOST: `tcp://127.0.0.1:${port}` } });
    await waitReady(client, undefined, () => '', 60_000);
    await client.json('GET', '/info');
    return { id: Id, client, readyMs: performance.now() - t0 };
  } catch (err) {
    await containers(host).remove(Id, { force: true });
    throw err;
  }
}

export async function plainDindContender(): Promise<Contender> {
  const host = new DockerClient();
  const d = await startPlain(host);
  await copyImages(host, d.client, ['berth-local/busybox']);
  return {
    id: 'dind-plain',
    title: 'nested dockerd, plain (TCP, no TLS)',
    dockerHost: d.client.dockerHost,
    client: d.client,
    shared: false,
    readyMs: d.readyMs,
    stop: async () => {
      d.client.close();
      await containers(host).remove(d.id, { force: true, volumes: true });
      host.close();
    },
  };
}

export async function berthDindContender(): Promise<Contender> {
  const host = new DockerClient();
  const t0 = performance.now();
  const h = await startDind({
    name: `bench-${randomBytes(3).toString('hex')}`,
    labels: benchLabels(),
  });
  const readyMs = performance.now() - t0;
  const client = new DockerClient({ env: { DOCKER_HOST: h.dockerHost } });
  await copyImages(host, client, ['berth-local/busybox']);
  return {
    id: 'dind-berth',
    title: 'berth dind',
    dockerHost: h.dockerHost,
    client,
    shared: false,
    readyMs,
    stop: async () => {
      client.close();
      await h.close({ purge: true });
      host.close();
    },
  };
}

/** Time from start to a daemon that answers /_ping and /info, fresh each repetition. */
export const nestedReady: Scenario = {
  id: 'ready',
  title: 'Nested daemon: time from start to ready (warm image)',
  applies: (c) => !c.shared,
  metrics: { ready: { unit: 'ms', better: 'lower' } },
  async run(c) {
    const host = new DockerClient();
    try {
      if (c.id === 'dind-plain') {
        const d = await startPlain(host);
        d.client.close();
        await containers(host).remove(d.id, { force: true, volumes: true });
        return { ready: d.readyMs };
      }
      const t0 = performance.now();
      const h = await startDind({
        name: `bench-ready-${randomBytes(3).toString('hex')}`,
        labels: benchLabels(),
      });
      const ms = performance.now() - t0;
      await h.close({ purge: true });
      return { ready: ms };
    } catch (err) {
      throw new Error(`starting a nested daemon failed: ${errorMessage(err)}`);
    } finally {
      host.close();
    }
  },
};
