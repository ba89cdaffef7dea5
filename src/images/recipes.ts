/**
 * What the berth-local images are made of. Pure: cache keys, Dockerfiles, the debootstrap command
 * and apt-source parsing. The builder (build.ts) does the I/O.
 */
import { createHash } from 'node:crypto';

export const IMAGE_BUSYBOX = 'berth-local/busybox';
export const IMAGE_TOOLS = 'berth-local/tools';
export const IMAGE_DIND = 'berth-local/dind';
export const LOCAL_IMAGES = ['busybox', 'tools', 'dind'] as const;
export type LocalImage = (typeof LOCAL_IMAGES)[number];
export const IMAGE_NAMES: Record<LocalImage, string> = {
  busybox: IMAGE_BUSYBOX,
  tools: IMAGE_TOOLS,
  dind: IMAGE_DIND,
};
/** Label holding the cache key an image was built from; same key, no rebuild. */
export const LABEL_IMAGE_KEY = 'io.berth.image-key';
/** Bump to rebuild every local image after a recipe change. */
export const RECIPE_VERSION = '1';

export const DIND_PACKAGES = ['docker.io', 'iptables', 'ca-certificates', 'fuse-overlayfs'] as const;

export const BUSYBOX_DOCKERFILE = [
  'FROM scratch',
  'COPY busybox /bin/busybox',
  'RUN ["/bin/busybox", "mkdir", "-p", "/usr/bin", "/sbin", "/usr/sbin", "/tmp", "/root", "/etc"]',
  'RUN ["/bin/busybox", "--install", "-s"]',
  'RUN echo "root:x:0:0:root:/root:/bin/sh" > /etc/passwd && echo "root:x:0:" > /etc/group && chmod 1777 /tmp',
  'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  'CMD ["sh"]',
  '',
].join('\n');

/** The tools image: busybox plus the host's docker CLI and the shared libraries it links. */
export function toolsDockerfile(files: readonly string[]): string {
  return [
    `FROM ${IMAGE_BUSYBOX}`,
    ...files.map((f) => `COPY rootfs${f} ${f}`),
    'ENV DOCKER_HOST=unix:///var/run/docker.sock',
    'CMD ["sh"]',
    '',
  ].join('\n');
}

export function cacheKey(parts: readonly string[]): string {
  const h = createHash('sha256');
  h.update(`recipe ${RECIPE_VERSION}\n`);
  for (const p of parts) h.update(`${p}\n`);
  return h.digest('hex').slice(0, 24);
}

/** Parses `ldd` output into the absolute paths of the libraries (and loader) a binary needs. */
export function parseLdd(output: string): string[] {
  const out: string[] = [];
  for (const line of output.split('\n')) {
    const arrow = /=>\s+(\/\S+)/.exec(line);
    if (arrow?.[1]) out.push(arrow[1]);
    else {
      const bare = /^\s*(\/\S+)\s+\(/.exec(line);
      if (bare?.[1]) out.push(bare[1]);
    }
  }
  return [...new Set(out)];
}

export interface AptSource {
  uri: string;
  suites: string[];
  components: string[];
}

/** Parses apt sources: one-line `deb URI SUITE COMP…` lists and deb822 `.sources` stanzas. */
export function parseAptSources(text: string, deb822: boolean): AptSource[] {
  const out: AptSource[] = [];
  if (!deb822) {
    for (const raw of text.split('\n')) {
      const line = raw.replace(/#.*/, '').trim();
      const m = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s*(.*)$/.exec(line);
      if (m?.[1] && m[2])
        out.push({ uri: m[1], suites: [m[2]], components: (m[3] ?? '').split(/\s+/).filter(Boolean) });
    }
    return out;
  }
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    for (const raw of stanza.split('\n')) {
      if (raw.startsWith('#')) continue;
      const m = /^([A-Za-z-]+):\s*(.*)$/.exec(raw);
      if (m?.[1]) fields.set(m[1].toLowerCase(), m[2] ?? '');
    }
    if (!(fields.get('types') ?? '').split(/\s+/).includes('deb')) continue;
    if ((fields.get('enabled') ?? 'yes').toLowerCase() === 'no') continue;
    const uris = (fields.get('uris') ?? '').split(/\s+/).filter(Boolean);
    const suites = (fields.get('suites') ?? '').split(/\s+/).filter(Boolean);
    const components = (fields.get('components') ?? '').split(/\s+/).filter(Boolean);
    for (const uri of uris) out.push({ uri, suites, components });
  }
  return out;
}

/** The mirror debootstrap should use for `suite`: the first source carrying that suite's main. */
export function pickMirror(sources: readonly AptSource[], suite: string): string | undefined {
  const hit = sources.find(
    (s) => s.suites.includes(suite) && (s.components.length === 0 || s.components.includes('main')),
  );
  return hit?.uri;
}

export function debootstrapArgs(suite: string, target: string, mirror: string): string[] {
  return ['--variant=minbase', `--include=${DIND_PACKAGES.join(',')}`, suite, target, mirror];
}

/** Image config for the imported dind rootfs (docker import --change). */
export function dindChanges(key: string): string[] {
  return [
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    'VOLUME /var/lib/docker',
    `LABEL ${LABEL_IMAGE_KEY}=${key}`,
    'CMD ["dockerd", "-H", "unix:///var/run/docker.sock"]',
  ];
}
