/**
 * The guard's build route for one tenant (`POST /build`, dockerd's legacy builder). The build
 * context goes to dockerd through a gate (contextgate.ts) that holds its end back until the
 * Dockerfile is read: no base's ONBUILD trigger and no ADD from the host's network runs unread, and
 * the bases are pulled where the build would pull them, checked, and held while it runs
 * (ImageRoutes.holdBases). The output goes to the client as it comes (held back for a quiet build);
 * what the build made becomes the tenant's, and its tags are set once it ended (ImageRoutes.tagMade).
 * The rest of the proxy is reached through ProxyCore (core.ts).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { LABEL_TENANT } from '../common/index.js';
import { BodyError, isRecord } from './canonical.js';
import { normalizeTag } from './ownership.js';
import type { TenantState } from './ownership.js';
import { Refusal, checkBuild, checkImageRegistry } from './policy.js';
import { relay } from './relay.js';
import { ContextGate, dockerfilePaths } from './contextgate.js';
import { readDockerfile, triggerRefusals } from './dockerfile.js';
import { goBool, onRequest } from './core.js';
import type { ProxyConfig, ProxyCore, Upstream } from './core.js';
import type { UploadLink } from './upload.js';
import { plainRef } from './images.js';
import type { BuildHold, ImageFacts, ImageRoutes } from './images.js';

/**
 * One tenant's build route (see above). GuardProxy makes one, dispatches `POST /build` to it, and
 * counts its builds in flight with the tenant's containers.
 */
export class BuildRoutes {
  /** The bytes of output the tenant's quiet builds hold back now (see buildHeld). */
  private quietHeld = 0;

  private readonly cfg: ProxyConfig;
  private readonly state: TenantState;

  /** Made by the proxy once its state exists: the config and state are the proxy's own (ProxyCore). */
  constructor(
    private readonly core: ProxyCore,
    private readonly images: ImageRoutes,
  ) {
    this.cfg = core.cfg;
    this.state = core.state;
  }

  /**
   * A build's `cachefrom` images, read now and sent as the IDs read: dockerd takes a step's result
   * from them when their history matches, so one another tenant set under a name would put that
   * tenant's layers into this tenant's image (refused, as for a base). Names the engine does not
   * have are left out, as dockerd skips them.
   */
  private async cacheFromIds(qs: URLSearchParams): Promise<void> {
    const raw = qs.get('cachefrom');
    if (raw === null || raw === '') return;
    let asked: unknown;
    try {
      asked = JSON.parse(raw);
    } catch {
      throw new Refusal('malformed', 'cachefrom is not a JSON array of image names', 400);
    }
    if (!Array.isArray(asked) || !asked.every((x) => typeof x === 'string'))
      throw new Refusal('malformed', 'cachefrom is not a JSON array of image names', 400);
    const ids: string[] = [];
    for (const ref of asked) {
      const f = await this.images.inspectImage(ref).catch(() => undefined);
      if (!f) continue;
      if ((await this.images.foreignLocalTag(ref, f.Id)) !== undefined)
        throw new Refusal(
          'build-options',
          `cache-from ${ref}: another tenant set this name to an image of its own; name the image by digest, or by a tag of yours`,
        );
      ids.push(f.Id);
    }
    qs.set('cachefrom', JSON.stringify(ids));
  }

  /**
   * Why a build context's Dockerfile may not run (ContextGate): an ADD the daemon would download
   * from the host's network (in any version of the Dockerfile in the context, under ONBUILD too),
   * or such an ONBUILD trigger on a base image (one the engine does not have yet is pulled first).
   */
  private async contextRefusal(
    versions: readonly Buffer[],
    registryConfig: string | undefined,
    buildArgs: string | null,
    hold: BuildHold,
    pulls: { always: boolean; platform: string | null },
  ): Promise<Error | undefined> {
    let args: Record<string, string | null> = {};
    try {
      const parsed: unknown = JSON.parse(buildArgs ?? '{}');
      if (isRecord(parsed))
        args = Object.fromEntries(
          Object.entries(parsed).map(([k, v]) => [k, typeof v === 'string' ? v : null]),
        );
    } catch {
      // dockerd refuses build args it cannot parse; nothing to expand with here
    }
    // dockerd would answer that it cannot find the Dockerfile; the guard does not guess where
    // dockerd might find one that it did not read.
    if (versions.length === 0)
      return new Refusal(
        'build-options',
        'berth found no Dockerfile in the context where the dockerfile option names it; it reads the Dockerfile before the build runs',
      );
    const refusals: string[] = [];
    const bases = new Set<string>();
    // The platform each base is built for: a stage's own, else the build's.
    const platforms = new Map<string, Set<string>>();
    const wants = (b: string, p: string) => platforms.set(b, (platforms.get(b) ?? new Set()).add(p));
    for (const v of versions) {
      const facts = readDockerfile(v.toString('utf8'), args);
      refusals.push(...facts.refusals);
      for (const b of facts.bases) bases.add(b);
      for (const [b, p] of facts.platforms) wants(b, p);
    }
    if (pulls.platform) for (const b of bases) if (!platforms.has(b)) wants(b, pulls.platform);
    // Each base is one inspect: a Dockerfile of more stages than any real one is not read further.
    if (bases.size > 64)
      return new Refusal(
        'build-options',
        `the Dockerfile names ${bases.size} base images; berth checks up to 64`,
      );
    // Held before they are read: what is checked below is what the build will find.
    await this.images.holdBases(bases, hold);
    const inspect = (b: string) =>
      this.core.upstreamJson<PlatformFacts & { Id?: string; Config?: { OnBuild?: string[] | null } | null }>(
        'GET',
        `/images/${encodeURIComponent(b)}/json`,
      );
    for (const b of bases) {
      // A short ID prefix (not a tag of that name) is looked up again when the build reaches the
      // stage, by a search among every image: it is not read as a name the build would keep.
      if (/^[0-9a-f]{1,63}$/.test(b) && (await inspect(`${b}:latest`)).status !== 200) {
        refusals.push(
          `base image ${b}: reads as an image ID prefix; name the base by a tag, a digest or its full ID`,
        );
        continue;
      }
      let found = await inspect(b);
      const want = [...(platforms.get(b) ?? [])];
      // Not on the engine (or the build asks for a fresh pull, or for another platform than the
      // engine's image is for): the build would pull it and run its triggers unread. It is pulled
      // here first, as the build would pull it (dockerd is still waiting for the context's end),
      // and the build is sent without `pull`: it finds the image checked here.
      const mismatch = () => want.find((p) => !platformMatches(p, found.json));
      if (found.status === 404 || pulls.always || (found.status === 200 && mismatch() !== undefined)) {
        // The pull below must be one the tenant could make itself.
        try {
          checkImageRegistry(this.cfg.policy, 'base image', b);
        } catch (err) {
          if (err instanceof Refusal) return err;
          throw err;
        }
        for (const p of want.length > 0 ? want : [undefined])
          await this.images
            .pullBase(b, registryConfig, p, found.status === 200 ? found.json.Id : undefined, hold)
            .catch(() => undefined);
        found = await inspect(b);
      }
      const other = found.status === 200 ? mismatch() : undefined;
      if (other !== undefined) {
        refusals.push(
          `base image ${b}: the engine's image is not for ${other}, and the build would pull it unread; pull ${b} for that platform first, or build for the engine's`,
        );
        continue;
      }
      // A base berth cannot read is not let through unread: dockerd might find an image under a
      // name berth did not (its reading of the name, or an image that came meanwhile).
      if (found.status !== 200)
        refusals.push(
          `base image ${b}: not on the engine, and could not be pulled; berth reads a base's ONBUILD triggers before the build runs`,
        );
      else {
        // The image read stays until the build ended: a name can be an ID prefix, which dockerd
        // resolves again when the build reaches that stage.
        this.images.holdImage(found.json.Id, hold);
        (hold.pinned ??= new Map()).set(b, found.json.Id);
        refusals.push(...triggerRefusals(b, found.json.Config?.OnBuild ?? []));
        if ((await this.images.foreignLocalTag(b, found.json.Id ?? '')) !== undefined)
          refusals.push(
            `base image ${b}: another tenant set this name to an image of its own; name the base by digest, or by a tag of yours`,
          );
      }
    }
    if (refusals.length === 0) {
      // Every image the engine has as the build starts to run (dockerd runs no step before the
      // context's end goes): what the build reports beyond these is what it made. Taken now, not
      // when the request came: the tenant sets how long its upload takes.
      hold.had = await this.images.imageIds();
      return undefined;
    }
    const more = refusals.length > 1 ? ` (and ${refusals.length - 1} more)` : '';
    return new Refusal('build-options', `${refusals[0] ?? ''}${more}`);
  }

  /**
   * `docker build` (`POST /build`): the query checked, the context gated and its Dockerfile and bases
   * checked (contextRefusal), the output passed on and what the build made claimed (buildHeld).
   */
  async build(
    req: IncomingMessage,
    res: ServerResponse,
    target: string,
    query: URLSearchParams,
  ): Promise<void> {
    const hold: BuildHold = { releases: [], closed: false };
    const qs = onRequest(() => checkBuild(query, this.cfg.labels, this.cfg.policy, this.core.networkName));
    // By ID: a name can be another's too (dockerd allows duplicate network names).
    if (qs.get('networkmode') === this.core.networkName)
      qs.set('networkmode', await this.core.ensureNetwork());
    // Intermediate containers of the legacy builder carry no labels: always remove them, even on failure.
    qs.set('rm', '1');
    qs.set('forcerm', '1');
    // `q` read as dockerd's BoolValue reads it. dockerd is never asked to be quiet: a quiet build
    // reports only its last image, and the earlier stages' images would be nobody's. The guard
    // holds the output back instead and answers as dockerd would (see buildHeld).
    const quiet = goBool(qs.get('q'));
    qs.delete('q');
    const tags = qs.getAll('t').map((t) => normalizeTag(plainRef(t)));
    for (const t of tags) await this.images.assertTagWritable(t);
    await this.cacheFromIds(qs);
    // With the gate, the bases are pulled (where the build would pull them) and checked before
    // the build runs, and the build finds them there: it is not to pull them again.
    const pulls = { always: goBool(qs.get('pull')), platform: qs.get('platform') };
    if (!this.cfg.policy.allow.has('build-options')) qs.delete('pull');
    // dockerd writes no tag: the build runs as long as the tenant makes it, and a name someone else
    // sets meanwhile must stay theirs. The tags are set on the built image afterwards (tagMade).
    qs.delete('t');
    // The context goes through the gate: dockerd gets its end only once the Dockerfile passed. A
    // policy that allows the rule (a trusted tenant) sends it as it comes.
    // A context the fast front holds (upload.ts) goes from it to the engine, as the gate passes it
    // (unless the front was told to stop already: a form body was read first).
    const link = this.core.uploadLink(req);
    const passage = link && !link.stopped ? link : undefined;
    const gate = this.cfg.policy.allow.has('build-options')
      ? undefined
      : new ContextGate(
          dockerfilePaths(qs.get('dockerfile')),
          (versions) =>
            this.contextRefusal(
              versions,
              firstHeader(req.headers['x-registry-config']),
              qs.get('buildargs'),
              hold,
              pulls,
            ),
          passage,
        );
    if (!gate) link?.stop();
    // The gate's refusal is read from gate.refused wherever it matters; its 'error' event must
    // never go unheard, also after the engine answered early and the upload's relay let go of it
    // (an unheard one ended the guard's thread: red-team pass 32).
    gate?.on('error', () => undefined);
    const release = (): void => {
      hold.closed = true;
      for (const r of hold.releases.splice(0)) r();
    };
    // A build's steps run in containers of their own: under a container limit, a build in flight
    // counts as one (counted with the creates, one at a time).
    const max = this.cfg.policy.limits.maxContainers;
    const counted = max !== undefined && !this.cfg.policy.allow.has('limits');
    if (counted)
      await this.core.oneCreateAtATime(async () => {
        const count = (await this.core.ownedContainerCount()) + this.buildsInFlight;
        if (count >= max)
          throw new Refusal(
            'limits',
            `the tenant already has ${count} containers and builds in flight (limit ${max}); a build runs its steps in containers`,
          );
        this.buildsInFlight++;
      });
    try {
      // A build without the gate (a trusted tenant's) compares with the images the engine has now.
      const had = gate ? undefined : await this.images.imageIds();
      await this.buildHeld(req, res, target, qs, { had, hold, quiet, tags, gate, release, link });
    } finally {
      release();
      if (counted) this.buildsInFlight--;
    }
  }

  /** The tenant's builds running now, where the policy limits containers (see build). */
  private buildsInFlight = 0;

  /** The tenant's builds running now, where the policy limits containers: each counts as a container. */
  get inFlight(): number {
    return this.buildsInFlight;
  }

  private async buildHeld(
    req: IncomingMessage,
    res: ServerResponse,
    target: string,
    qs: URLSearchParams,
    b: {
      had: ReadonlySet<string> | undefined;
      hold: BuildHold;
      quiet: boolean;
      tags: string[];
      gate: ContextGate | undefined;
      release: () => void;
      link: UploadLink | undefined;
    },
  ): Promise<void> {
    const { hold, quiet, tags, gate, release } = b;
    if (gate) {
      req.pipe(gate);
      req.once('error', (e) => gate.destroy(e));
      req.once('close', () => {
        if (!req.complete) gate.destroy(new Error('the client went away'));
      });
    }
    let up: Upstream;
    try {
      up = await this.core.upstream('POST', `${target}?${qs.toString()}`, {
        body: gate ?? req,
        connection: b.link,
        headers: {
          // Always a tar: with a multipart/form-data type, dockerd would read build options
          // (networkmode, remote, t…) from the body, past every check on the query.
          'content-type': 'application/x-tar',
          ...(req.headers['x-registry-config']
            ? { 'x-registry-config': req.headers['x-registry-config'] }
            : {}),
        },
      });
    } catch (err) {
      // The rest of the upload is read and dropped, so the refusal can be answered.
      if (gate) req.unpipe(gate);
      req.resume();
      throw gate?.refused ? contextRefusal(gate.refused) : err;
    }
    res.writeHead(up.status, { 'Content-Type': up.headers['content-type'] ?? 'application/json' });
    res.flushHeaders();
    // Pass the progress through as it comes, and note the image IDs it reports. Only dockerd's own
    // `{"aux":{"ID":...}}` counts: everything a build step prints sits inside a JSON string, where
    // its quotes are escaped, so it cannot form `"ID":"`. A "Successfully built <id>" line is not
    // trusted: a RUN step can print one naming someone else's image.
    // dockerd reports each stage's image as `{"aux":{"ID":…}}`, the last one the build's, and a
    // failure as an `{"errorDetail":…}` message (a failed multi-stage build has reported its earlier
    // stages: none of them is the build's image).
    let tail = '';
    let errored = false;
    const reported = new Set<string>();
    let last: string | undefined; // the build's final image: dockerd's last aux ID
    const watch = (c: Buffer): void => {
      // The piece read whole, with the end of the one before (a message cut between two pieces).
      const text = tail + c.toString('utf8');
      tail = text.slice(-4096);
      for (const m of text.matchAll(/"ID":"(sha256:[0-9a-f]{64})"/g)) {
        if (m[1]) reported.add(m[1]);
        last = m[1];
      }
      if (text.includes('{"errorDetail":')) errored = true;
    };
    // A quiet build's output is held back, as dockerd holds it: shown only when the build failed.
    const held: Buffer[] = [];
    let dropped = 0;
    if (quiet) {
      let bytes = 0;
      const drop = (): void => {
        const n = held.shift()?.length ?? 0;
        bytes -= n;
        dropped += n;
        this.quietHeld -= n;
      };
      try {
        for await (const chunk of up.body) {
          if (res.destroyed) break;
          const c = chunk as Buffer;
          watch(c);
          held.push(c);
          bytes += c.length;
          this.quietHeld += c.length;
          // Only the end of the output is kept (dockerd would hold it all, in its own memory), and
          // less of it while the guard's quiet builds together hold more than their share.
          const cap = this.quietHeld > QUIET_HELD_TOTAL ? QUIET_HELD_LOW : QUIET_HELD_MAX;
          while (bytes > cap && held.length > 1) drop();
        }
      } catch {
        errored = true; // the engine's answer broke off
      } finally {
        up.body.destroy();
        this.quietHeld -= bytes;
      }
    } else await relay(up.body, res, { end: false, onData: watch });
    // dockerd has found every stage's base: the tenant may move those tags again.
    release();
    if (quiet && !res.destroyed) {
      if (!errored && !gate?.refused && last !== undefined)
        res.write(`${JSON.stringify({ stream: `${last}\n` })}\n`);
      else if (dropped === 0) for (const c of held) res.write(c);
      else {
        // The kept end starts after the first whole message in it (pieces are not messages).
        const kept = Buffer.concat(held);
        const nl = kept.indexOf(10);
        const note = `berth: the first ${dropped + nl + 1} bytes of this build's output were dropped\n`;
        res.write(`${JSON.stringify({ stream: note })}\n`);
        if (nl >= 0) res.write(kept.subarray(nl + 1));
      }
    }
    if (errored) last = undefined;
    // Stopped after dockerd began to answer: its answer ends in a read error; the reason follows.
    if (gate?.refused && !res.destroyed) {
      const message = answerMessage(contextRefusal(gate.refused));
      res.write(`${JSON.stringify({ errorDetail: { message }, error: message })}\n`);
      last = undefined;
    }
    try {
      // What the build made: the reported images the engine did not have when the build began (a
      // cache hit, a stage that only names its base give back images others may have made; an
      // image's creation date is whatever its config says).
      const made = new Map<string, ImageFacts>();
      const had = b.had ?? hold.had;
      // The builder looks a stage's base up when it reaches the stage: a base name someone else
      // moved meanwhile (the tenant's own writes are held off) gave the build an image berth did
      // not check, whose own new images would read as the build's. The build then made nothing.
      let moved: string | undefined;
      for (const [name, id] of hold.pinned ?? []) {
        if ((await this.images.imageIdOf(name).catch(() => undefined)) === id) continue;
        moved = name;
        break;
      }
      if (moved !== undefined) {
        last = undefined;
        const message = `berth: build-options: the base image ${moved} changed while the build ran; berth counts nothing the build made as the tenant's and sets no tag (build again)`;
        this.core.audit('POST', '/build', 'deny', { rule: 'build-options', status: 200, message });
        if (!res.destroyed) res.write(`${JSON.stringify({ error: message, errorDetail: { message } })}\n`);
      } else if (had !== undefined) {
        for (const idv of reported) {
          const f = await this.images.inspectImage(idv);
          if (f && !had.has(idv)) made.set(idv, f);
        }
      }
      for (const idv of made.keys()) this.state.builtImages.add(idv);
      // Their step images: each stage's chain of parents back to an image the engine had. Image
      // deletes never prune parents (noprune: dockerd would take any unnamed parent, someone
      // else's too), so these are removed one by one, child first, as the tenant's own.
      if (had !== undefined) for (const f of made.values()) await this.claimSteps(f, had);
      // An image that names an owner (a Dockerfile LABEL, or its base image's) would make the
      // containers run from it look like that tenant's: it is removed, and the build fails.
      let failed = false;
      for (const [idv, f] of made) {
        const owner = f.Config?.Labels?.[LABEL_TENANT];
        if (owner === undefined || owner === '') continue;
        await this.images.removeIfUnnamed(idv);
        const message = `berth: ownership: the built image carries the label ${LABEL_TENANT}=${owner} (from its Dockerfile or its base image); an image built through the guard may not name an owner, so it was removed`;
        this.core.audit('POST', '/build', 'deny', { rule: 'ownership', status: 200, message });
        if (!res.destroyed) res.write(`${JSON.stringify({ error: message, errorDetail: { message } })}\n`);
        failed = true;
        break;
      }
      // The tags, on the image the build ended with (a failed build: none).
      if (!failed && last !== undefined) {
        const built = last;
        for (const t of tags) {
          const message = await this.images.tagMade(t, built);
          if (res.destroyed) continue;
          if (message !== undefined) {
            this.core.audit('POST', '/build', 'deny', { rule: 'image-tag', status: 200, message });
            res.write(`${JSON.stringify({ error: message, errorDetail: { message } })}\n`);
          } else if (!quiet) res.write(`${JSON.stringify({ stream: `Successfully tagged ${t}\n` })}\n`);
        }
      }
    } finally {
      res.end();
    }
  }

  /**
   * The step images of a build's stage image `f`: its parents, up to the first image the engine
   * had when the build began, are the tenant's (a shared cache hit ends the chain there: an image
   * that was on the engine is someone else's).
   */
  private async claimSteps(f: ImageFacts, had: ReadonlySet<string>): Promise<void> {
    let parent = f.Parent;
    for (let n = 0; n < 512 && parent && !had.has(parent) && !this.state.builtImages.has(parent); n++) {
      this.state.builtImages.add(parent);
      parent = (await this.images.inspectImage(parent))?.Parent;
    }
  }
}

/** How much of a quiet build's output the guard holds back (its end, where the error is). */
const QUIET_HELD_MAX = 1024 * 1024;
/** What the quiet builds of one guard hold together before each keeps only its last chunks. */
const QUIET_HELD_TOTAL = 32 * 1024 * 1024;
const QUIET_HELD_LOW = 64 * 1024;

function firstHeader(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/** A stopped build context's reason as the answer: a refusal as it is, anything else malformed. */
function contextRefusal(err: Error): Refusal | BodyError {
  return err instanceof Refusal ? err : new BodyError(err.message);
}

/** The message a refusal or a malformed request answers with. */
function answerMessage(err: Refusal | BodyError): string {
  return err instanceof Refusal ? err.message : `berth: malformed: ${err.message}`;
}

/** What an image inspect says of its platform. */
interface PlatformFacts {
  Os?: string;
  Architecture?: string;
  Variant?: string;
}

const ARCH_ALIASES: Readonly<Record<string, string>> = {
  x86_64: 'amd64',
  'x86-64': 'amd64',
  aarch64: 'arm64',
  armhf: 'arm',
  armel: 'arm',
  i386: '386',
};

/** Whether an image is for a platform written `os[/arch[/variant]]` (as the builder compares). */
export function platformMatches(platform: string, img: PlatformFacts): boolean {
  const [os = '', arch, variant] = platform.toLowerCase().split('/');
  const norm = (a: string) => ARCH_ALIASES[a] ?? a;
  if (os !== (img.Os ?? '').toLowerCase()) return false;
  if (arch !== undefined && norm(arch) !== norm((img.Architecture ?? '').toLowerCase())) return false;
  if (variant !== undefined && variant !== (img.Variant ?? '').toLowerCase()) return false;
  return true;
}
