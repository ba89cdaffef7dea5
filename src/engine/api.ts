/**
 * Typed helpers over DockerClient for the calls berth itself makes (doctor, images, dind, runner).
 * The guard does not use these: it forwards raw requests through the transport.
 */
import { PassThrough } from 'node:stream';
import type { Readable, Writable } from 'node:stream';
import type { DockerClient, Query } from './client.js';
import { readAll } from './client.js';
import { isNotFound } from './errors.js';
import { demux, followProgress } from './stream.js';
import type { ProgressMessage } from './stream.js';

export type Filters = Record<string, readonly string[] | string | undefined>;

/** Encodes the engine's `filters` query parameter. */
export function encodeFilters(filters: Filters | undefined): string | undefined {
  if (!filters) return undefined;
  const out: Record<string, string[]> = {};
  for (const [k, v] of Object.entries(filters)) {
    if (v === undefined) continue;
    out[k] = typeof v === 'string' ? [v] : [...v];
  }
  return Object.keys(out).length === 0 ? undefined : JSON.stringify(out);
}

export interface ContainerSummary {
  Id: string;
  Names: string[];
  Image: string;
  State: string;
  Status: string;
  Labels: Record<string, string> | null;
}

export interface ContainerInspect {
  Id: string;
  Name: string;
  Image: string;
  State: {
    Status: string;
    Running: boolean;
    ExitCode: number;
    Pid: number;
    Error: string;
    OOMKilled: boolean;
  };
  Config: { Labels: Record<string, string> | null; Image: string; Env: string[] | null; Tty?: boolean };
  HostConfig: Record<string, unknown>;
  NetworkSettings: { Networks: Record<string, { IPAddress: string; NetworkID: string }> | null };
  Mounts: { Type: string; Name?: string; Source: string; Destination: string }[];
}

export interface CreateContainerBody {
  Image: string;
  Cmd?: string[];
  Entrypoint?: string[] | null;
  Env?: string[];
  Labels?: Record<string, string>;
  WorkingDir?: string;
  User?: string;
  Tty?: boolean;
  OpenStdin?: boolean;
  StdinOnce?: boolean;
  AttachStdin?: boolean;
  AttachStdout?: boolean;
  AttachStderr?: boolean;
  Hostname?: string;
  ExposedPorts?: Record<string, Record<string, never>>;
  Healthcheck?: Record<string, unknown>;
  StopSignal?: string;
  HostConfig?: Record<string, unknown>;
  NetworkingConfig?: { EndpointsConfig?: Record<string, { Aliases?: string[] }> };
}

export interface ExecResult {
  exitCode: number;
}

export function containers(c: DockerClient) {
  return {
    list: (opts: { all?: boolean; filters?: Filters } = {}) =>
      c.json<ContainerSummary[]>('GET', '/containers/json', {
        query: { all: opts.all ?? true, filters: encodeFilters(opts.filters) },
      }),
    create: (body: CreateContainerBody, name?: string) =>
      c.json<{ Id: string; Warnings: string[] | null }>('POST', '/containers/create', {
        query: { name },
        body,
      }),
    start: (id: string) => c.json('POST', `/containers/${encodeURIComponent(id)}/start`),
    stop: (id: string, t?: number) =>
      c.json('POST', `/containers/${encodeURIComponent(id)}/stop`, { query: { t } }),
    kill: (id: string, signal?: string) =>
      c.json('POST', `/containers/${encodeURIComponent(id)}/kill`, { query: { signal } }),
    wait: (id: string, condition?: 'not-running' | 'next-exit' | 'removed', signal?: AbortSignal) =>
      c.json<{ StatusCode: number; Error?: { Message: string } | null }>(
        'POST',
        `/containers/${encodeURIComponent(id)}/wait`,
        { query: { condition }, signal },
      ),
    /**
     * Registers a wait and answers once the engine has it (the answer's headers arrived), as the
     * docker CLI does before it starts a container; `exited` then settles with the exit. A wait that
     * is merely sent can reach the engine after a short-lived container has already exited, and
     * `next-exit` then waits forever.
     */
    waitRegistered: async (
      id: string,
      condition: 'not-running' | 'next-exit' | 'removed' = 'next-exit',
      signal?: AbortSignal,
    ): Promise<{ exited: Promise<{ StatusCode: number; Error?: { Message: string } | null }> }> => {
      const res = await c.request({
        method: 'POST',
        path: `/containers/${encodeURIComponent(id)}/wait`,
        query: { condition },
        signal,
      });
      const exited = readAll(res).then(
        (b) => JSON.parse(b.toString('utf8')) as { StatusCode: number; Error?: { Message: string } | null },
      );
      exited.catch(() => undefined); // observed by the caller; never an unhandled rejection
      return { exited };
    },
    inspect: (id: string) => c.json<ContainerInspect>('GET', `/containers/${encodeURIComponent(id)}/json`),
    /** Inspect that answers undefined instead of throwing when the container does not exist. */
    find: async (id: string): Promise<ContainerInspect | undefined> => {
      try {
        return await c.json<ContainerInspect>('GET', `/containers/${encodeURIComponent(id)}/json`);
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    },
    remove: async (id: string, opts: { force?: boolean; volumes?: boolean } = {}): Promise<boolean> => {
      try {
        await c.json('DELETE', `/containers/${encodeURIComponent(id)}`, {
          query: { force: opts.force ?? true, v: opts.volumes ?? true },
        });
        return true;
      } catch (err) {
        if (isNotFound(err)) return false;
        throw err;
      }
    },
    logs: (id: string, q: Query = {}) =>
      c.request({
        path: `/containers/${encodeURIComponent(id)}/logs`,
        query: { stdout: true, stderr: true, ...q },
      }),
    /** Uploads a tar archive and extracts it at `path` in the container. */
    putArchive: async (id: string, path: string, tar: Readable | Buffer) => {
      const res = await c.request({
        method: 'PUT',
        path: `/containers/${encodeURIComponent(id)}/archive`,
        query: { path },
        body: tar,
        headers: { 'Content-Type': 'application/x-tar' },
      });
      res.resume();
    },
    /** A tar stream of `path` in the container. */
    getArchive: (id: string, path: string) =>
      c.request({ path: `/containers/${encodeURIComponent(id)}/archive`, query: { path } }),
  };
}

export function exec(c: DockerClient) {
  return {
    /**
     * Runs a command in a running container to completion, streaming its output, and answers its
     * exit code. `stdin`, when given, is piped in and closed (EOF) when it ends.
     */
    run: async (
      containerId: string,
      cmd: string[],
      opts: {
        env?: string[];
        workdir?: string;
        user?: string;
        tty?: boolean;
        stdin?: Readable;
        stdout?: Writable;
        stderr?: Writable;
        signal?: AbortSignal;
      } = {},
    ): Promise<ExecResult & { execId: string }> => {
      const created = await c.json<{ Id: string }>(
        'POST',
        `/containers/${encodeURIComponent(containerId)}/exec`,
        {
          body: {
            Cmd: cmd,
            Env: opts.env,
            WorkingDir: opts.workdir,
            User: opts.user,
            Tty: opts.tty ?? false,
            AttachStdin: opts.stdin !== undefined,
            AttachStdout: true,
            AttachStderr: true,
          },
        },
      );
      const { socket, head } = await c.hijack({
        path: `/exec/${created.Id}/start`,
        body: { Detach: false, Tty: opts.tty ?? false },
        signal: opts.signal,
      });
      const out = opts.stdout ?? new PassThrough().resume();
      const err = opts.stderr ?? new PassThrough().resume();
      if (opts.stdin) {
        opts.stdin.pipe(socket, { end: false });
        opts.stdin.on('end', () => socket.end());
      } else {
        socket.end();
      }
      const source = new PassThrough();
      if (head.length) source.write(head);
      socket.pipe(source);
      if (opts.tty) {
        source.pipe(out, { end: false });
        await new Promise<void>((resolve, reject) => {
          source.on('end', resolve);
          source.on('error', reject);
        });
      } else {
        const sinkOut = passTo(out);
        const sinkErr = passTo(err);
        await demux(source, sinkOut, sinkErr);
      }
      const info = await c.json<{ ExitCode: number | null; Running: boolean }>(
        'GET',
        `/exec/${created.Id}/json`,
      );
      return { exitCode: info.ExitCode ?? -1, execId: created.Id };
    },
  };
}

/** A writable that forwards to `target` without ending it. */
function passTo(target: Writable): Writable {
  const p = new PassThrough();
  p.pipe(target, { end: false });
  return p;
}

export interface ImageInspect {
  Id: string;
  RepoTags: string[] | null;
  RepoDigests?: string[] | null;
  Created: string;
  Size: number;
  Config: { Labels: Record<string, string> | null } | null;
}

export function images(c: DockerClient) {
  return {
    inspect: (name: string) => c.json<ImageInspect>('GET', `/images/${encodeURIComponent(name)}/json`),
    find: async (name: string): Promise<ImageInspect | undefined> => {
      try {
        return await c.json<ImageInspect>('GET', `/images/${encodeURIComponent(name)}/json`);
      } catch (err) {
        if (isNotFound(err)) return undefined;
        throw err;
      }
    },
    list: (filters?: Filters) =>
      c.json<
        {
          Id: string;
          RepoTags: string[] | null;
          RepoDigests?: string[] | null;
          Labels: Record<string, string> | null;
        }[]
      >('GET', '/images/json', { query: { filters: encodeFilters(filters) } }),
    tag: (name: string, repo: string, tag: string) =>
      c.json('POST', `/images/${encodeURIComponent(name)}/tag`, { query: { repo, tag } }),
    remove: async (name: string, force = false): Promise<boolean> => {
      try {
        await c.json('DELETE', `/images/${encodeURIComponent(name)}`, { query: { force } });
        return true;
      } catch (err) {
        if (isNotFound(err)) return false;
        throw err;
      }
    },
    /** Builds from a tar context stream (legacy builder); resolves with the progress messages. */
    build: async (
      context: Readable | Buffer,
      query: Query,
      onMessage?: (m: ProgressMessage) => void,
    ): Promise<{ imageId: string | undefined; messages: ProgressMessage[] }> => {
      const res = await c.request({
        method: 'POST',
        path: '/build',
        query,
        body: context,
        headers: { 'Content-Type': 'application/x-tar' },
      });
      const messages = await followProgress(res, onMessage);
      let imageId: string | undefined;
      for (const m of messages) {
        if (m.aux?.ID) imageId = m.aux.ID;
        const s = m.stream ? /Successfully built ([0-9a-f]+)/.exec(m.stream) : null;
        if (s && !imageId) imageId = s[1];
      }
      return { imageId, messages };
    },
    /** `docker import`: creates an image from a rootfs tarball. */
    importTar: async (tar: Readable, repo: string, tag: string, changes: string[] = []) => {
      const res = await c.request({
        method: 'POST',
        path: '/images/create',
        query: { fromSrc: '-', repo, tag, changes },
        body: tar,
        headers: { 'Content-Type': 'application/x-tar' },
      });
      return followProgress(res);
    },
  };
}

export interface NetworkInspect {
  Id: string;
  Name: string;
  Labels: Record<string, string> | null;
  Containers?: Record<string, { Name: string }>;
}

export function networks(c: DockerClient) {
  return {
    list: (filters?: Filters) =>
      c.json<NetworkInspect[]>('GET', '/networks', { query: { filters: encodeFilters(filters) } }),
    create: (body: {
      Name: string;
      Labels?: Record<string, string>;
      Internal?: boolean;
      Options?: Record<string, string>;
      Driver?: string;
    }) => c.json<{ Id: string }>('POST', '/networks/create', { body: { CheckDuplicate: true, ...body } }),
    inspect: (id: string) => c.json<NetworkInspect>('GET', `/networks/${encodeURIComponent(id)}`),
    connect: (id: string, container: string, aliases?: string[]) =>
      c.json('POST', `/networks/${encodeURIComponent(id)}/connect`, {
        body: { Container: container, EndpointConfig: aliases ? { Aliases: aliases } : undefined },
      }),
    disconnect: (id: string, container: string, force = true) =>
      c.json('POST', `/networks/${encodeURIComponent(id)}/disconnect`, {
        body: { Container: container, Force: force },
      }),
    remove: async (id: string): Promise<boolean> => {
      try {
        await c.json('DELETE', `/networks/${encodeURIComponent(id)}`);
        return true;
      } catch (err) {
        if (isNotFound(err)) return false;
        throw err;
      }
    },
  };
}

export interface VolumeInspect {
  Name: string;
  Labels: Record<string, string> | null;
  Mountpoint: string;
  Driver: string;
}

export function volumes(c: DockerClient) {
  return {
    list: async (filters?: Filters) =>
      (
        await c.json<{ Volumes: VolumeInspect[] | null }>('GET', '/volumes', {
          query: { filters: encodeFilters(filters) },
        })
      ).Volumes ?? [],
    create: (body: {
      Name?: string;
      Labels?: Record<string, string>;
      Driver?: string;
      DriverOpts?: Record<string, string>;
    }) => c.json<VolumeInspect>('POST', '/volumes/create', { body }),
    inspect: (name: string) => c.json<VolumeInspect>('GET', `/volumes/${encodeURIComponent(name)}`),
    remove: async (name: string, force = true): Promise<boolean> => {
      try {
        await c.json('DELETE', `/volumes/${encodeURIComponent(name)}`, { query: { force } });
        return true;
      } catch (err) {
        if (isNotFound(err)) return false;
        throw err;
      }
    },
  };
}

export interface SystemInfo {
  ServerVersion: string;
  Driver: string;
  CgroupVersion?: string;
  CgroupDriver: string;
  Runtimes: Record<string, unknown>;
  DefaultRuntime: string;
  SecurityOptions: string[];
  KernelVersion: string;
  OperatingSystem: string;
  NCPU: number;
  MemTotal: number;
  DockerRootDir: string;
  Name: string;
}

export interface VersionInfo {
  Version: string;
  ApiVersion: string;
  MinAPIVersion: string;
  Os: string;
  Arch: string;
  KernelVersion: string;
}

export function system(c: DockerClient) {
  return {
    info: () => c.json<SystemInfo>('GET', '/info'),
    version: () => c.json<VersionInfo>('GET', '/version'),
  };
}

/** Reads a container's logs to the end (no follow) as demultiplexed text. */
export async function readLogs(
  c: DockerClient,
  id: string,
  tty = false,
): Promise<{ stdout: string; stderr: string }> {
  const res = await containers(c).logs(id, { follow: false });
  if (tty) return { stdout: (await readAll(res)).toString('utf8'), stderr: '' };
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const collect = (arr: Buffer[]) => {
    const p = new PassThrough();
    p.on('data', (b: Buffer) => arr.push(b));
    return p;
  };
  await demux(res, collect(out), collect(err));
  return { stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8') };
}
