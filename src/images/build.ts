/**
 * `berth images build-local`: builds the berth-local/* images from this machine's own files, so
 * nothing is pulled from a registry. Each image carries the cache key of its inputs; an image whose
 * key matches is reused, so the minute the dind rootfs takes is paid once per machine.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  createReadStream,
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  realpathSync,
  rmSync,
  statSync,
} from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import type { Readable } from 'node:stream';
import tar from 'tar-stream';
import { BerthError, errorMessage } from '../common/index.js';
import type { DockerClient } from '../engine/index.js';
import { aptInstall, images } from '../engine/index.js';
import {
  BUSYBOX_DOCKERFILE,
  IMAGE_NAMES,
  LABEL_IMAGE_KEY,
  cacheKey,
  debootstrapArgs,
  dindChanges,
  parseAptSources,
  parseLdd,
  pickMirror,
  toolsDockerfile,
  DIND_PACKAGES,
} from './recipes.js';
import type { AptSource, LocalImage } from './recipes.js';

export interface BuildResult {
  image: LocalImage;
  name: string;
  action: 'reused' | 'built';
  key: string;
  ms: number;
}

export interface BuildOptions {
  only?: readonly LocalImage[];
  force?: boolean;
  log?: (line: string) => void;
  /** Where debootstrap unpacks the dind rootfs (on a real filesystem). */
  workDir?: string;
}

const BUSYBOX_BIN = ['/bin/busybox', '/usr/bin/busybox'];
/** Debian's docker CLI: copied into the tools image, and run by the bench's download scenarios. */
export const DOCKER_CLI = '/usr/bin/docker';

function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

interface ContextFile {
  name: string;
  /** Host file to copy (symlinks resolved), or literal content. */
  source?: string;
  content?: string;
  mode?: number;
}

/** A tar build context streamed from host files. */
export function contextFromFiles(files: readonly ContextFile[]): Readable {
  const pack = tar.pack();
  const add = async (): Promise<void> => {
    for (const f of files) {
      if (f.content !== undefined) {
        pack.entry({ name: f.name, mode: f.mode ?? 0o644 }, f.content);
        continue;
      }
      const real = realpathSync(f.source ?? '');
      const st = statSync(real);
      await new Promise<void>((resolve, reject) => {
        const entry = pack.entry({ name: f.name, size: st.size, mode: f.mode ?? st.mode & 0o7777 }, (err) =>
          err ? reject(err) : resolve(),
        );
        createReadStream(real).on('error', reject).pipe(entry);
      });
    }
    pack.finalize();
  };
  const out = new PassThrough();
  add().catch((err: unknown) => out.destroy(err instanceof Error ? err : new Error(String(err))));
  pack.pipe(out);
  return out;
}

async function existingKey(client: DockerClient, name: string): Promise<string | undefined> {
  const img = await images(client).find(name);
  return img?.Config?.Labels?.[LABEL_IMAGE_KEY];
}

async function buildFromContext(
  client: DockerClient,
  name: string,
  key: string,
  ctx: Readable,
  log: (l: string) => void,
): Promise<void> {
  try {
    await images(client).build(
      ctx,
      { t: name, rm: true, forcerm: true, labels: JSON.stringify({ [LABEL_IMAGE_KEY]: key }) },
      (m) => {
        const line = m.stream?.trimEnd();
        if (line && /^Step \d+/.test(line)) log(`  ${line}`);
      },
    );
  } catch (err) {
    throw new BerthError('IMAGE_BUILD_FAILED', `building ${name} failed: ${errorMessage(err)}`, {
      cause: err,
    });
  }
}

function findBusybox(): string {
  const bin = BUSYBOX_BIN.find((p) => existsSync(p));
  if (!bin)
    throw new BerthError('IMAGE_BUILD_FAILED', 'busybox is not installed', {
      hint: 'apt-get install busybox-static',
    });
  const ldd = spawnSync('ldd', [bin], { encoding: 'utf8' });
  if (ldd.status === 0 && parseLdd(ldd.stdout).length > 0) {
    throw new BerthError(
      'IMAGE_BUILD_FAILED',
      `${bin} is dynamically linked; berth-local/busybox needs busybox-static`,
      {
        hint: 'apt-get install busybox-static',
      },
    );
  }
  return bin;
}

async function buildBusybox(
  client: DockerClient,
  o: BuildOptions,
  log: (l: string) => void,
): Promise<BuildResult> {
  const t0 = Date.now();
  const name = IMAGE_NAMES.busybox;
  const bin = findBusybox();
  const key = cacheKey(['busybox', sha256File(bin), BUSYBOX_DOCKERFILE]);
  if (!o.force && (await existingKey(client, name)) === key)
    return { image: 'busybox', name, action: 'reused', key, ms: Date.now() - t0 };
  log(`building ${name} from ${bin}`);
  await buildFromContext(
    client,
    name,
    key,
    contextFromFiles([
      { name: 'Dockerfile', content: BUSYBOX_DOCKERFILE },
      { name: 'busybox', source: bin, mode: 0o755 },
    ]),
    log,
  );
  return { image: 'busybox', name, action: 'built', key, ms: Date.now() - t0 };
}

async function buildTools(
  client: DockerClient,
  o: BuildOptions,
  busyboxKey: string,
  log: (l: string) => void,
): Promise<BuildResult> {
  const t0 = Date.now();
  const name = IMAGE_NAMES.tools;
  if (!existsSync(DOCKER_CLI)) {
    throw new BerthError(
      'IMAGE_BUILD_FAILED',
      `${DOCKER_CLI} is missing: the tools image copies the host's docker CLI`,
      {
        hint: 'apt-get install docker.io (or use the official docker:cli image where a registry is reachable)',
      },
    );
  }
  const ldd = spawnSync('ldd', [DOCKER_CLI], { encoding: 'utf8' });
  const libs = ldd.status === 0 ? parseLdd(ldd.stdout) : [];
  const files = [DOCKER_CLI, ...libs];
  const dockerfile = toolsDockerfile(files);
  const key = cacheKey(['tools', busyboxKey, dockerfile, ...files.map((f) => `${f} ${sha256File(f)}`)]);
  if (!o.force && (await existingKey(client, name)) === key)
    return { image: 'tools', name, action: 'reused', key, ms: Date.now() - t0 };
  log(`building ${name} (busybox + ${DOCKER_CLI} + ${libs.length} libraries)`);
  await buildFromContext(
    client,
    name,
    key,
    contextFromFiles([
      { name: 'Dockerfile', content: dockerfile },
      ...files.map((f) => ({ name: `rootfs${f}`, source: f })),
    ]),
    log,
  );
  return { image: 'tools', name, action: 'built', key, ms: Date.now() - t0 };
}

function readAptSources(): AptSource[] {
  const out: AptSource[] = [];
  if (existsSync('/etc/apt/sources.list'))
    out.push(...parseAptSources(readFileSync('/etc/apt/sources.list', 'utf8'), false));
  const dir = '/etc/apt/sources.list.d';
  if (existsSync(dir)) {
    for (const f of readdirSync(dir).sort()) {
      if (f.endsWith('.list')) out.push(...parseAptSources(readFileSync(join(dir, f), 'utf8'), false));
      else if (f.endsWith('.sources')) out.push(...parseAptSources(readFileSync(join(dir, f), 'utf8'), true));
    }
  }
  return out;
}

function debianSuite(): string {
  try {
    const m = /^VERSION_CODENAME=(\S+)/m.exec(readFileSync('/etc/os-release', 'utf8'));
    if (m?.[1]) return m[1];
  } catch {
    /* fall through */
  }
  throw new BerthError('IMAGE_BUILD_FAILED', 'cannot tell the Debian suite from /etc/os-release', {
    hint: 'build berth-local/dind on Debian, or, where a registry is reachable, pull the official docker:dind and pass it with `--image docker:dind`',
  });
}

function run(cmd: string, args: string[], log: (l: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let tailText = '';
    const keep = (b: Buffer) => {
      tailText = (tailText + b.toString()).slice(-2000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code === 0) resolve();
      else {
        log(tailText);
        reject(
          new BerthError(
            'IMAGE_BUILD_FAILED',
            `${cmd} exited with ${code}: ${tailText.trim().split('\n').slice(-5).join(' | ')}`,
          ),
        );
      }
    });
  });
}

async function buildDind(
  client: DockerClient,
  o: BuildOptions,
  log: (l: string) => void,
): Promise<BuildResult> {
  const t0 = Date.now();
  const name = IMAGE_NAMES.dind;
  const suite = debianSuite();
  const mirror = pickMirror(readAptSources(), suite);
  if (!mirror)
    throw new BerthError('IMAGE_BUILD_FAILED', `no apt source carries ${suite} main`, {
      hint: 'check /etc/apt/sources.list*',
    });
  const key = cacheKey(['dind', suite, mirror, ...DIND_PACKAGES]);
  if (!o.force && (await existingKey(client, name)) === key)
    return { image: 'dind', name, action: 'reused', key, ms: Date.now() - t0 };
  aptInstall(['debootstrap'], log);
  const work = o.workDir ?? '/var/lib/berth/cache';
  spawnSync('mkdir', ['-p', work]);
  const dir = mkdtempSync(join(work, 'dind-rootfs-'));
  try {
    log(
      `debootstrap ${suite} from ${mirror} (minbase + ${DIND_PACKAGES.join(', ')}); this takes about a minute, once`,
    );
    await run('debootstrap', debootstrapArgs(suite, dir, mirror), log);
    // Trim what a daemon image does not need.
    for (const p of ['var/cache/apt/archives', 'var/lib/apt/lists', 'usr/share/doc', 'usr/share/man']) {
      rmSync(join(dir, p), { recursive: true, force: true });
    }
    log(`importing the rootfs as ${name}`);
    const tarProc = spawn('tar', ['-C', dir, '--numeric-owner', '-c', '.'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const [repo, tag] = [name, 'latest'];
    await images(client).importTar(tarProc.stdout, repo, tag, dindChanges(key));
  } catch (err) {
    if (err instanceof BerthError) throw err;
    throw new BerthError('IMAGE_BUILD_FAILED', `building ${name} failed: ${errorMessage(err)}`, {
      cause: err,
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return { image: 'dind', name, action: 'built', key, ms: Date.now() - t0 };
}

/** Builds (or reuses) the local images; busybox first, since tools builds on it. */
export async function ensureLocalImages(client: DockerClient, o: BuildOptions = {}): Promise<BuildResult[]> {
  const log = o.log ?? (() => undefined);
  const want = new Set<LocalImage>(o.only?.length ? o.only : ['busybox', 'tools', 'dind']);
  const results: BuildResult[] = [];
  if (want.has('busybox') || want.has('tools')) {
    const bb = await buildBusybox(client, { ...o, force: o.force && want.has('busybox') }, log);
    if (want.has('busybox') || bb.action === 'built') results.push(bb);
    if (want.has('tools')) results.push(await buildTools(client, o, bb.key, log));
  }
  if (want.has('dind')) results.push(await buildDind(client, o, log));
  return results;
}
