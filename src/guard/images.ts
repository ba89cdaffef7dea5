/**
 * The guard's image routes for one tenant: which tags, digest references and images are the
 * tenant's (the claims its own operations make, checked against the tag records of other tenants),
 * and the endpoints that write them: tag, commit (its image side), image create (pull and import),
 * load, delete, prune and push, and the image side of the cleanup. Tag writes, deletes and loads
 * of one image take turns (onImage, LOADS), and respect what the tenant's builds in flight hold
 * (holdBases, holdImage): the build route (build.ts) checks and pulls a build's bases through this
 * module, and sets the built image's tags with tagMade. The rest of the proxy is reached through
 * ProxyCore (core.ts).
 */
import type http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createReadStream, createWriteStream, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { LABEL_ROLE, LABEL_TENANT, errorMessage } from '../common/index.js';
import { readAll } from '../engine/index.js';
import { BodyError, isRecord } from './canonical.js';
import {
  ProgressReport,
  registryOf,
  imageLabelsFor,
  isImageId,
  ambiguousRef,
  normalizeTag,
  repositoryOf,
} from './ownership.js';
import type { TenantState } from './ownership.js';
import { Refusal, checkChanges, checkImageRegistry, checkLabels, checkReservedRepository } from './policy.js';
import { relay } from './relay.js';
import { ArchiveError, ArchiveScan } from './loadscan.js';
import { ANY_IMAGE, byIdOrDigest } from './tagrecords.js';
import type { TagRecords } from './tagrecords.js';
import { buildPath } from './routes.js';
import type { Matched } from './routes.js';
import { NotFound, parseAnswer, querySuffix, send, sendJsonBytes } from './core.js';
import type { ProxyConfig, ProxyCore, SmallAnswer, Upstream } from './core.js';

/**
 * The turn of the tenant's loads. A load sets its tags inside dockerd, on an image whose ID the
 * guard does not know before: a delete of that image meanwhile would leave a name that the load
 * reported but that names nothing (until the image is loaded again), and no record of it. A guard's
 * loads and deletes take turns (a delete takes LOADS first, then its image's turn).
 */
const LOADS = 'loads';

/** Whether a failed tag write's status says dockerd wrote nothing: a refusal (4xx), not a 5xx. */
function notWritten(status: number): boolean {
  return status >= 400 && status < 500;
}

/** The fields of an image inspect the guard's ownership decisions read. */
export interface ImageFacts {
  Id: string;
  Parent?: string;
  Created?: string;
  RepoTags?: string[] | null;
  RepoDigests?: string[] | null;
  Config?: { Labels?: Record<string, string> | null } | null;
}

const tagsOf = (f: ImageFacts | undefined): string[] =>
  (f?.RepoTags ?? []).filter((t) => t !== '<none>:<none>');

/** The image's digest references (`repo@sha256:…`; dockerd lists `<none>@<none>` for none). */
const digestsOf = (f: Pick<ImageFacts, 'RepoDigests'> | undefined): string[] =>
  (f?.RepoDigests ?? []).filter((d) => d.includes('@') && !d.startsWith('<none>'));

/** Whether anything names the image: a tag or a digest reference. */
const named = (f: ImageFacts): boolean => tagsOf(f).length + digestsOf(f).length > 0;

/** What a build holds while it runs (its base names and images), released once, when it ended. */
export interface BuildHold {
  releases: (() => void)[];
  closed: boolean;
  /** Every image on the engine once the context passed the check. */
  had?: Set<string>;
  /** Each base name, with the image it named when checked. */
  pinned?: Map<string, string>;
  /** The tag names this build holds (holdBases), with how often it holds each. */
  holds?: Map<string, number>;
}

/**
 * One tenant's image claims and image endpoints (see above). GuardProxy makes one, dispatches the
 * image routes to it, and asks it about images for its container creates and image events.
 */
export class ImageRoutes {
  /** Tags that are base images of this tenant's builds in flight (tag → how many builds). */
  private readonly frozen = new Map<string, number>();
  /** Tags this tenant's operations are writing now (tag → how many). */
  private readonly writing = new Map<string, number>();
  /** Images that are bases of this tenant's builds in flight (ID → how many builds). */
  private readonly heldImages = new Map<string, number>();

  private readonly cfg: ProxyConfig;
  private readonly state: TenantState;
  private readonly records: TagRecords;

  /** Made by the proxy once its state and tag records exist: they are the proxy's own (ProxyCore). */
  constructor(private readonly core: ProxyCore) {
    this.cfg = core.cfg;
    this.state = core.state;
    this.records = core.records;
  }

  /** `docker push`: the digest reference a push records on the image is the tenant's. */
  async imagePush(
    req: IncomingMessage,
    res: ServerResponse,
    m: Matched,
    query: URLSearchParams,
  ): Promise<void> {
    checkImageRegistry(this.cfg.policy, 'push of', m.params.name ?? '');
    // A push records the digest it pushed as a reference on the image: that one is the tenant's.
    const repo = repositoryOf(m.params.name ?? '');
    const before = await this.digestRefs(repo);
    const report = new ProgressReport();
    await this.core.forward(req, res, m.route.method, routePath(m) + querySuffix(query), {
      onData: report.feed,
    });
    return this.claimNewDigests(repo, before, report.end().digests);
  }

  /**
   * `docker commit`, once the container is resolved: the image names no owner, is made untagged,
   * and gets its tag once it exists (tagMade).
   */
  async imageCommit(
    res: ServerResponse,
    m: Matched,
    query: URLSearchParams,
    body: Buffer | undefined,
  ): Promise<void> {
    const { id: cid } = await this.core.resolveContainer(query.get('container') ?? '');
    const target = this.claimTag(query.get('repo'), query.get('tag'));
    await this.assertTagWritable(target);
    const b = this.core.body('image.commit', body);
    checkLabels('commit', b.Labels, this.cfg.labels);
    checkChanges(query.getAll('changes'));
    // The image would inherit the container's tenant label: it must name no owner.
    b.Labels = { ...(isRecord(b.Labels) ? b.Labels : {}), ...imageLabelsFor(this.cfg.labels) };
    const qs = new URLSearchParams(query);
    qs.set('container', cid);
    // `changes` apply after the body: this LABEL comes last so no tenant change outranks it.
    qs.append('changes', `LABEL ${LABEL_TENANT}=""`);
    // Committed untagged; the tag is set once the image exists (tagMade).
    qs.delete('repo');
    qs.delete('tag');
    const a = await this.core.upstreamBytes('POST', routePath(m) + querySuffix(qs), {
      body: Buffer.from(JSON.stringify(b)),
      headers: { 'content-type': 'application/json' },
    });
    const committed = a.status < 300 ? (parseAnswer(a.raw) as { Id?: unknown } | undefined)?.Id : undefined;
    if (typeof committed === 'string') {
      // A commit always makes a new image (its creation time is part of it).
      this.state.builtImages.add(committed);
      const why = target ? await this.tagMade(target, committed) : undefined;
      if (why !== undefined) {
        await this.removeIfUnnamed(committed);
        throw new Refusal('image-tag', why.replace(/^berth: image-tag: /, ''));
      }
    }
    return sendJsonBytes(res, a.status, a.raw, a.headers, this.core.hide);
  }

  /** `docker tag`: a tag the tenant may write, set on the image its source names now. */
  async imageTag(
    req: IncomingMessage,
    res: ServerResponse,
    m: Matched,
    query: URLSearchParams,
  ): Promise<void> {
    const target = this.claimTag(query.get('repo'), query.get('tag'));
    const written = this.beginTagWrite([target]);
    try {
      await this.assertTagWritable(target);
      const name = m.params.name ?? '';
      const source = await this.inspectImage(name);
      // Answered here: forwarded by name, an image that arrived meanwhile would get the tag
      // unrecorded.
      if (!source) throw new NotFound(`No such image: ${name}`);
      await this.assertNotForeignLocal(name, source.Id);
      // By the ID read: the source name may move meanwhile, and the tag must name what was read.
      const from = routePath(m, { name: source.Id });
      await this.onImage(source.Id, async () => {
        const record = target ? await this.records.before(target, source.Id) : undefined;
        const r = await this.core.forward(req, res, 'POST', from + querySuffix(query), { capture: true });
        if (r && r.status < 300 && target) {
          this.state.setTag(target, source.Id);
          await record?.keep();
        } else if (r && notWritten(r.status)) await record?.drop();
        // Otherwise dockerd may have written the tag all the same (it answers 500 when the
        // image went between writing the tag and updating the image): the record stays.
      });
      return;
    } finally {
      written();
    }
  }

  /** Validates repo/tag query params naming a new tag; returns the normalised tag (or undefined). */
  private claimTag(repo: string | null, tag: string | null): string | undefined {
    if (!repo) return undefined;
    // dockerd parses `repo` as a reference and replaces its tag with `tag` (app:x + prod is app:prod):
    // the guard would check a name dockerd never writes. Such a pair is refused.
    const own = repo.includes('@') || repo.lastIndexOf(':') > repo.lastIndexOf('/');
    if (own && tag)
      throw new Refusal('image-tag', `repo ${repo} already names a tag or digest; pass the tag once`);
    if (repo.includes('@')) throw new Refusal('image-tag', `repo ${repo} is a digest reference, not a tag`);
    return normalizeTag(plainRef(tag ? `${repo}:${tag}` : repo));
  }

  /**
   * Marks tags as being written by one of the tenant's operations until the returned function is
   * called; refused while a build of the tenant's reads one of them as a base (holdBases).
   * Synchronous, so no build's hold can come between the check and the mark.
   */
  private beginTagWrite(tags: readonly (string | undefined)[]): () => void {
    const names = tags.filter((t): t is string => t !== undefined);
    for (const t of names) this.assertNotFrozen(t);
    return countIn(this.writing, names);
  }

  /**
   * Holds a build's base images by name: the legacy builder looks each stage's FROM up only when
   * it reaches that stage, so the tenant may not move those tags until the build ended (the
   * returned function). Waits for the tenant's writes of them already under way to land, so the
   * images checked next are the ones the build will find.
   */
  async holdBases(bases: Iterable<string>, hold: BuildHold): Promise<void> {
    // A build that already ended (its client went away while the context was read) holds nothing.
    if (hold.closed) return;
    const names: string[] = [];
    for (const b of bases) {
      try {
        if (!b.includes('@')) names.push(normalizeTag(plainRef(b)));
      } catch {
        // a name dockerd cannot parse either: nothing to hold
      }
    }
    hold.releases.push(countIn(this.frozen, names));
    hold.holds ??= new Map();
    for (const n of names) hold.holds.set(n, (hold.holds.get(n) ?? 0) + 1);
    while (names.some((t) => this.writing.has(t))) await new Promise((r) => setTimeout(r, 20));
  }

  /** Keeps an image a build of the tenant's reads as a base from being removed until it ended. */
  holdImage(id: string | undefined, hold: BuildHold): void {
    if (id === undefined || hold.closed) return;
    hold.releases.push(countIn(this.heldImages, [id]));
  }

  /** Refuses to write a tag that a build of the tenant's holds as a base (holdBases). */
  private assertNotFrozen(tag: string): void {
    if (this.frozen.has(tag))
      throw new Refusal(
        'image-tag',
        `${tag} is a base image of a build in progress; the build reads it when it reaches that stage, so it can change once the build ended`,
      );
  }

  /**
   * Refuses a tag the tenant may not write now: a repository name that reads as an image ID prefix
   * or is reserved, a base of a build in progress, a tag that names an image and is not the
   * tenant's there, or one the engine cannot check. Marks the claim's start (TenantState.claimStart).
   */
  async assertTagWritable(tag: string | undefined): Promise<void> {
    if (tag === undefined) return;
    // dockerd looks a short reference up as a tag before it reads it as an ID prefix: a tag named
    // like an image's short ID would stand in for that image wherever someone names it so.
    if (/^[0-9a-f]{12,}:/.test(tag))
      throw new Refusal(
        'image-tag',
        `the repository name of ${tag} is 12 or more hex digits, which reads as an image ID prefix; choose another name`,
      );
    checkReservedRepository(repositoryOf(tag));
    this.assertNotFrozen(tag);
    this.state.claimStart(tag);
    const { status, json } = await this.core.upstreamJson<{ Id?: string }>(
      'GET',
      `/images/${encodeURIComponent(tag)}/json`,
    );
    if (status === 200 && this.state.ownsTagAt(tag, json.Id ?? '')) return;
    if (status === 200) {
      if (this.state.settled(tag)) this.state.tags.delete(tag); // someone else has set it since
      throw new Refusal('image-tag', `the tag ${tag} belongs to someone else; choose another name`);
    }
    // Only "no such image" leaves the name free: anything else (a name dockerd cannot parse, an
    // engine error) is refused rather than guessed at.
    if (status !== 404)
      throw new Refusal('image-tag', `the tag ${tag} cannot be checked (engine answered ${status})`);
  }

  /** One inspect of an image: what the ownership decisions read; undefined when there is no such image. */
  async inspectImage(ref: string): Promise<ImageFacts | undefined> {
    const { status, json } = await this.core.upstreamJson<ImageFacts & { message?: string }>(
      'GET',
      `/images/${encodeURIComponent(ref)}/json`,
    );
    if (status === 404) return undefined;
    // A reference dockerd cannot parse (`UPPER:tag`): the request's fault, not the engine's.
    if (status === 400) throw new BodyError(json.message ?? `invalid image reference ${ref}`);
    if (status !== 200) throw new Error(`inspecting image ${ref}: ${json.message ?? status}`);
    return json;
  }

  /**
   * Answers "no such image" for a name another tenant set to an image of its own (a tag record
   * says so): dockerd would run that tenant's image for a name this tenant expects from its
   * registry, or from the host. A pull through this guard does not write over it (a tag someone
   * else owns is pulled by digest), so the tenant names the image by digest meanwhile.
   */
  async assertNotForeignLocal(ref: string, imageId: string): Promise<void> {
    const refusal = await this.foreignLocalRefusal(ref, imageId);
    if (refusal) throw refusal;
  }

  /** The 404 for `ref` when another tenant set it to `imageId`, an image of its own. */
  async foreignLocalRefusal(ref: string, imageId: string): Promise<NotFound | undefined> {
    const tag = await this.foreignLocalTag(ref, imageId);
    return tag === undefined
      ? undefined
      : new NotFound(
          `No such image: ${ref} (berth: image-tag: another tenant set ${tag} to an image of its own; name the image by digest, or pull it: a pull that finds the registry serving this very image makes the name usable)`,
        );
  }

  /** Tags this tenant's pull found the registry serving as the engine's image (tag → image ID). */
  private readonly registryConfirmed = new Map<string, string>();

  /** The tag `ref` reads as, when another tenant set it to `imageId`, an image of its own. */
  async foreignLocalTag(ref: string, imageId: string): Promise<string | undefined> {
    if (byIdOrDigest(ref) || this.state.ownsTagAt(ref, imageId)) return undefined;
    let tag: string;
    try {
      tag = normalizeTag(plainRef(ref));
    } catch {
      return undefined; // not a tag dockerd could look up either
    }
    if (this.registryConfirmed.get(tag) === imageId) return undefined;
    return (await this.records.foreign(tag, imageId)) ? tag : undefined;
  }

  /**
   * Pulls a build's base image the way the build itself would (its tag, or `latest`, or its
   * digest), with the build's credentials for that registry from its X-Registry-Config. Like the
   * build's own pull, it claims nothing for the tenant.
   */
  async pullBase(
    ref: string,
    registryConfig: string | undefined,
    platform: string | undefined,
    existing: string | undefined,
    hold: BuildHold,
  ): Promise<void> {
    const at = ref.indexOf('@');
    const colon = ref.lastIndexOf(':');
    const tagged = at < 0 && colon > ref.lastIndexOf('/');
    const qs = new URLSearchParams({
      fromImage: at >= 0 || !tagged ? ref : ref.slice(0, colon),
      tag: at >= 0 ? '' : tagged ? ref.slice(colon + 1) : 'latest',
    });
    if (at >= 0) qs.delete('tag');
    if (platform !== undefined) qs.set('platform', platform);
    const headers: http.OutgoingHttpHeaders = {};
    const auth = registryAuth(registryConfig, registryOf(ref));
    if (auth !== undefined) headers['x-registry-auth'] = auth;
    // A tag someone else has is not moved (dockerd writes the tag a pull names): the build then
    // uses the image the engine has, which berth checked.
    const tag = at < 0 ? normalizeTag(tagged ? ref : `${ref}:latest`) : undefined;
    if (existing !== undefined && tag !== undefined && !this.state.ownsTagAt(tag, existing)) return;
    // Nor is a tag another build of the tenant's holds as a base: that build checked the image the
    // tag names now, and reads the tag again when it reaches that stage (a pull here would hand it
    // an image nobody checked). This build then uses the engine's image too, which it checks.
    if (tag !== undefined && (this.frozen.get(tag) ?? 0) > (hold.holds?.get(tag) ?? 0)) return;
    // The pull writes the tag: builds that start meanwhile wait for it to land (holdBases).
    const written = tag === undefined ? () => undefined : countIn(this.writing, [tag]);
    try {
      await this.pullBaseNow(ref, qs, headers, tag);
    } finally {
      written();
    }
  }

  private async pullBaseNow(
    ref: string,
    qs: URLSearchParams,
    headers: http.OutgoingHttpHeaders,
    tag: string | undefined,
  ): Promise<void> {
    // What the pull brings the engine is the tenant's, as for its own pulls (removed with its
    // other objects): a new tag, new digest references, an image the engine did not have.
    const repo = repositoryOf(ref);
    const before = await this.digestRefs(repo);
    const had = await this.imageIds();
    const pullStart = Date.now();
    if (tag !== undefined) this.state.claimStart(tag);
    const up = await this.core.upstream('POST', `/images/create?${qs.toString()}`, { headers });
    const report = new ProgressReport();
    for await (const chunk of up.body) report.feed(chunk as Buffer);
    const reported = report.end().digests;
    await this.claimNewDigests(repo, before, reported);
    const f = await this.inspectImage(ref).catch(() => undefined);
    // Only what this pull brought: an image carrying a digest the pull reported (a pull that failed
    // while someone else set the tag gives nothing).
    if (
      !f ||
      !digestsOf(f).some((d) => repositoryOf(d) === repo && reported.has(d.slice(d.lastIndexOf('@') + 1)))
    )
      return;
    // The tag is the tenant's: new, or its own it held before (the pull moved it; the claim follows).
    if (tag !== undefined) this.state.setTag(tag, f.Id);
    if (pulledHere(f, had, pullStart)) this.state.builtImages.add(f.Id);
  }

  /**
   * Sets a tag on an image the tenant's own operation just made (build, import, commit), checked
   * again now: dockerd is not asked to write the tag during the operation, whose length the
   * tenant sets, so a name someone else sets meanwhile stays theirs. Why not, or undefined.
   */
  async tagMade(tag: string, imageId: string): Promise<string | undefined> {
    let written: () => void;
    try {
      written = this.beginTagWrite([tag]);
    } catch (err) {
      if (err instanceof Refusal) return err.message;
      throw err;
    }
    try {
      return await this.tagMadeChecked(tag, imageId);
    } finally {
      written();
    }
  }

  private async tagMadeChecked(tag: string, imageId: string): Promise<string | undefined> {
    try {
      await this.assertTagWritable(tag);
    } catch (err) {
      if (err instanceof Refusal) return err.message;
      throw err;
    }
    const [repo, t] = splitTag(tag);
    return this.onImage(imageId, async () => {
      let record: Awaited<ReturnType<TagRecords['before']>>;
      try {
        record = await this.records.before(tag, imageId);
      } catch (err) {
        return `berth: image-tag: ${tag} could not be set: ${errorMessage(err)}`;
      }
      const r = await this.core.upstreamBytes(
        'POST',
        `/images/${encodeURIComponent(imageId)}/tag?repo=${encodeURIComponent(repo)}&tag=${encodeURIComponent(t)}`,
      );
      if (r.status >= 300) {
        // Kept unless dockerd surely wrote nothing (see image.tag).
        if (notWritten(r.status)) await record.drop();
        const why =
          (parseAnswer(r.raw) as { message?: string } | undefined)?.message ?? `engine answered ${r.status}`;
        return `berth: image-tag: ${tag} could not be set: ${why}`;
      }
      this.state.setTag(tag, imageId);
      await record.keep();
      return undefined;
    });
  }

  /**
   * A tag write, after this guard's earlier operations on the image with this ID and before its
   * later ones: a tag write and a delete of one image never overlap (red-team pass 18). dockerd
   * writes a tag before it updates the image, and answers 500 when the image went in between: a
   * tenant that deleted its image while tagging it, and loaded it back, had a name on its image that
   * no record said was its.
   */
  private onImage<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.core.turns.run(id, fn);
  }

  /** A delete of the image with this ID: after the guard's loads (see LOADS), then as onImage. */
  private onImageDelete<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.core.turns.run(LOADS, () => this.core.turns.run(id, fn));
  }

  /**
   * Settles a claim once its operation ended: the tag is the tenant's when it names the image the
   * operation reported making (`made`). Otherwise the operation failed, or someone else set the
   * name meanwhile: the claim is released and the tag left as it is.
   */
  private async confirmTag(tag: string, made: (f: ImageFacts) => boolean): Promise<ImageFacts | undefined> {
    const f = await this.inspectImage(tag);
    if (!f || !made(f)) {
      this.state.releaseTag(tag, f?.Id);
      return f;
    }
    this.state.setTag(tag, f.Id);
    return f;
  }

  /**
   * Removes an image the tenant made once nobody names it (a cached build or a pull may have given
   * the tenant an image another tenant or the host tagged too). Unforced: dockerd keeps an image a
   * container still uses.
   */
  async removeIfUnnamed(idv: string): Promise<void> {
    this.state.builtImages.delete(idv);
    await this.deleteIfUnnamed(idv);
  }

  /** Deletes an image nobody names (unforced), then its own parents; what dockerd deleted, or why nothing was. */
  private async deleteIfUnnamed(
    idv: string,
  ): Promise<{ Deleted?: string; Untagged?: string }[] | 'gone' | 'kept'> {
    const d = await this.deleteOneUnnamed(idv);
    if (typeof d === 'string') return d;
    return [...d.deleted, ...(await this.pruneOwnParents(d.f.Parent))];
  }

  /** Deletes one image nobody names, unforced and without its parents (noprune). */
  private async deleteOneUnnamed(
    idv: string,
  ): Promise<{ f: ImageFacts; deleted: { Deleted?: string; Untagged?: string }[] } | 'gone' | 'kept'> {
    const f = await this.inspectImage(idv);
    if (!f) return 'gone';
    if (named(f)) return 'kept';
    const r = await this.core.upstreamJson<{ Deleted?: string; Untagged?: string }[]>(
      'DELETE',
      `/images/${encodeURIComponent(idv)}?noprune=1`,
    );
    if (r.status >= 300 || !Array.isArray(r.json)) return 'kept'; // a child or a container holds it
    return { f, deleted: r.json };
  }

  /** One of the tenant's images went: it is forgotten, and its own parents go after it. */
  private async ownImageGone(f: ImageFacts): Promise<void> {
    // Every claim naming it goes too (dockerd removed its names with it; the same ID comes back
    // when anyone pulls that content again).
    this.state.forgetImage(f.Id);
    await this.pruneOwnParents(f.Parent);
  }

  /**
   * After one of the tenant's images went: its parents the tenant made, unnamed and now without
   * children, go too (what dockerd's pruning did, but only for the tenant's own images).
   */
  private async pruneOwnParents(parent: string | undefined): Promise<{ Deleted?: string }[]> {
    const out: { Deleted?: string }[] = [];
    for (let p = parent; p && this.state.builtImages.has(p) && !this.heldImages.has(p);) {
      const d = await this.deleteOneUnnamed(p);
      if (typeof d === 'string') break;
      this.state.builtImages.delete(p);
      out.push(...d.deleted);
      p = d.f.Parent;
    }
    return out;
  }

  /** `docker pull` and `docker import` (`POST /images/create`). */
  async imageCreate(
    req: IncomingMessage,
    res: ServerResponse,
    target: string,
    query: URLSearchParams,
  ): Promise<void> {
    const held: (() => void)[] = [];
    try {
      await this.imageCreateHeld(req, res, target, query, held);
    } finally {
      for (const release of held) release();
    }
  }

  /** imageCreate, with the tag a pull writes marked as being written (released by the caller). */
  private async imageCreateHeld(
    req: IncomingMessage,
    res: ServerResponse,
    target: string,
    query: URLSearchParams,
    held: (() => void)[],
  ): Promise<void> {
    const fromSrc = query.get('fromSrc');
    let tag: string | undefined;
    // An import, and the tag it writes, if any (red-team pass 24: an import without a name was
    // taken for a pull, and its image was nobody's: kept by the cleanup, not removable by ID).
    let importing = false;
    let imported: string | undefined;
    let pulled: ((r: ProgressReport) => Promise<void>) | undefined;
    // A pull's tag is the tenant's only if the image it names at the end carries a digest the
    // pull reported.
    let made: (f: ImageFacts, r: ProgressReport) => boolean = () => false;
    const report = new ProgressReport();
    // A pull that brings an image the engine did not have makes it the tenant's (removed with its
    // other objects; removable by ID).
    let pulledRef: string | undefined;
    let had: Set<string> | undefined;
    let pullStart = 0;
    // dockerd pulls whenever fromImage is set, and imports only otherwise: the same test here, so a
    // pull cannot pass as an import.
    if (fromSrc !== null && (query.get('fromImage') ?? '') === '') {
      if (fromSrc !== '-')
        throw new Refusal(
          'image-import',
          'importing an image from a URL is not allowed (use docker import - with a file)',
        );
      checkChanges(query.getAll('changes'));
      importing = true;
      imported = this.claimTag(query.get('repo'), query.get('tag'));
      await this.assertTagWritable(imported);
      // Imported untagged; the tag is set once the image exists (tagMade).
      query.delete('repo');
      query.delete('tag');
      // Appended last, so it wins over any LABEL the tenant passed: the image names no owner.
      query.append('changes', `LABEL ${LABEL_TENANT}=""`);
    } else {
      const from = query.get('fromImage') ?? '';
      checkImageRegistry(this.cfg.policy, 'pull of', from);
      const t = query.get('tag') ?? '';
      const digest = from.includes('@') || /^[a-z0-9]+:[0-9a-f]{32,}$/i.test(t);
      if (!digest && t === '' && !hasTag(from))
        throw new Refusal(
          'image-tag',
          `pulling every tag of ${from} is not allowed (it would move tags others own); name a tag`,
        );
      tag = digest ? undefined : this.claimTag(from, t);
      held.push(this.beginTagWrite([tag]));
      pulledRef = tag ?? (from.includes('@') ? from : `${from}@${t}`);
      had = await this.imageIds();
      pullStart = Date.now();
      // A pull records the manifest's digest as a reference on the image: new ones are the tenant's.
      const repo = repositoryOf(from);
      const before = await this.digestRefs(repo);
      pulled = (r) => this.claimNewDigests(repo, before, r.digests);
      made = (f, r) =>
        digestsOf(f).some((d) => repositoryOf(d) === repo && r.digests.has(d.slice(d.lastIndexOf('@') + 1)));
      if (tag && !this.state.ownsTag(tag)) {
        const was = await this.imageIdOf(tag);
        // A pull of a tag someone else has: fine while it changes nothing (the image is up to
        // date); a pull that would move the tag is undone and reported as an error.
        if (was !== undefined) {
          await this.pullExisting(req, res, target, query, tag, was, report.feed, { had, pullStart });
          return pulled(report.end());
        }
      }
    }
    if (tag) {
      await this.assertTagWritable(tag);
      this.state.addTag(tag);
    }
    try {
      await this.core.forward(req, res, 'POST', `${target}?${query.toString()}`, {
        body: fromSrc === '-' ? req : undefined,
        onData: report.feed,
        end: !importing,
      });
      if (importing) {
        report.end();
        const [id] = [...report.ids];
        if (id !== undefined) {
          this.state.builtImages.add(id);
          const message = imported === undefined ? undefined : await this.tagMade(imported, id);
          if (message !== undefined && !res.destroyed) {
            this.core.audit('POST', '/images/create', 'deny', { rule: 'image-tag', status: 200, message });
            res.write(`${JSON.stringify({ error: message, errorDetail: { message } })}\n`);
          }
        }
        if (!res.writableEnded) res.end();
      }
    } finally {
      report.end();
      const confirmed = tag
        ? await this.confirmTag(tag, (f) => made(f, report)).catch(() => {
            this.state.releaseTag(tag, undefined);
            return undefined;
          })
        : undefined;
      if (pulledRef !== undefined && had !== undefined) {
        // A tagged pull's image was read just now; a pull by digest reads it here.
        const f = tag ? confirmed : await this.inspectImage(pulledRef).catch(() => undefined);
        if (f && made(f, report) && pulledHere(f, had, pullStart)) this.state.builtImages.add(f.Id);
      }
    }
    await pulled?.(report);
  }

  /** Every image ID on the engine now (intermediate images too). */
  async imageIds(): Promise<Set<string>> {
    const { status, json } = await this.core.upstreamJson<{ Id?: string }[]>('GET', '/images/json?all=1');
    if (status !== 200 || !Array.isArray(json)) throw new Error(`listing images: engine answered ${status}`);
    return new Set(json.map((i) => i.Id ?? ''));
  }

  /** The digest references of a repository on the engine now, each with its image ID. */
  private async digestRefs(repo: string): Promise<Map<string, string>> {
    const filters = encodeURIComponent(JSON.stringify({ reference: [repo] }));
    const { status, json } = await this.core.upstreamJson<{ Id: string; RepoDigests?: string[] | null }[]>(
      'GET',
      `/images/json?digests=1&filters=${filters}`,
    );
    const out = new Map<string, string>();
    if (status !== 200 || !Array.isArray(json)) return out;
    for (const img of json)
      for (const d of digestsOf(img)) if (repositoryOf(d) === repo) out.set(normalizeTag(d), img.Id);
    return out;
  }

  /**
   * Claims the digest references of `repo` that the tenant's operation made: absent in `before`,
   * and naming a digest the operation's own progress reported. A reference that another pull or
   * push of the same repository made meanwhile (the host's, another tenant's) stays theirs.
   */
  private async claimNewDigests(
    repo: string,
    before: ReadonlyMap<string, string>,
    reported: ReadonlySet<string>,
  ): Promise<void> {
    if (reported.size === 0) return;
    const after = await this.digestRefs(repo).catch(() => new Map<string, string>());
    for (const [ref, id] of after)
      if (before.get(ref) !== id && reported.has(ref.slice(ref.lastIndexOf('@') + 1)))
        this.state.digests.set(ref, id);
  }

  /**
   * Removes a tag the tenant owns (the caller checked it on `f`, the image it names now). dockerd
   * drops a repository's digest references with the last tag of that repository on an image
   * (`repo@sha256:…` a host pulled by digest goes, and the image with it when nothing else names
   * it). Where such references are not all the tenant's, the tag is first moved onto a fresh empty
   * image and removed from there: the tag goes, everything else stays.
   */
  private async removeTag(tag: string, f: ImageFacts, query = ''): Promise<SmallAnswer> {
    const repo = repositoryOf(tag);
    const lastOfRepo = !tagsOf(f).some((t) => normalizeTag(t) !== tag && repositoryOf(t) === repo);
    const digests = lastOfRepo ? digestsOf(f).filter((d) => repositoryOf(d) === repo) : [];
    const foreign = digests.filter((d) => !this.state.ownsDigestAt(d, f.Id));
    // The image's last name: dockerd would delete the image with it. An image someone else made
    // (the host's, named only by its ID until the tenant tagged it) must stay.
    const lastName =
      !tagsOf(f).some((t) => normalizeTag(t) !== tag) && !digestsOf(f).some((d) => !digests.includes(d));
    const othersImage = lastName && !this.state.builtImages.has(f.Id);
    if (foreign.length === 0 && !othersImage) {
      const r = await this.core.upstreamBytes(
        'DELETE',
        `/images/${encodeURIComponent(tag)}${noPrune(query)}`,
      );
      if (r.status < 300) {
        this.state.tags.delete(tag);
        for (const d of digests) this.state.digests.delete(normalizeTag(d));
        // dockerd deleted the image with its last name unless a child image holds it (then it
        // stays the tenant's, for the prune or the cleanup).
        if (lastName && (await this.inspectImage(f.Id)) === undefined) await this.ownImageGone(f);
      }
      return r;
    }
    const [name, t] = splitTag(tag);
    const qs = new URLSearchParams({ fromSrc: '-', repo: name, tag: t });
    qs.append('changes', `LABEL ${LABEL_ROLE}=untag-aside`);
    qs.append('changes', `LABEL ${LABEL_TENANT}=`);
    const aside = await this.core.upstreamBytes('POST', `/images/create?${qs.toString()}`, {
      body: EMPTY_TAR,
      headers: { 'content-type': 'application/x-tar' },
      evenStopped: true, // the cleanup's own untag
    });
    const failed = aside.raw.toString('utf8').includes('"error"');
    if (aside.status >= 300 || failed)
      throw new Error(`moving ${tag} aside to remove it: ${aside.raw.toString('utf8').trim()}`);
    // The tag is the empty image's only name: removing it removes that image too.
    const del = await this.core.upstreamJson<{ message?: string }>(
      'DELETE',
      `/images/${encodeURIComponent(tag)}?noprune=1`,
    );
    if (del.status >= 300) throw new Error(`removing ${tag}: ${del.json.message ?? del.status}`);
    this.state.tags.delete(tag);
    return { status: 200, raw: Buffer.from(JSON.stringify([{ Untagged: tag }])), headers: {} };
  }

  /**
   * Removes a digest reference the tenant owns (the caller checked, on `f`, the image it names
   * now). dockerd deletes the image with its last name: where this reference is that and the
   * tenant did not make the image (a pull by digest of content someone else has), nothing is
   * removed and the answer is undefined.
   */
  private async removeDigestRef(ref: string, f: ImageFacts, query = ''): Promise<SmallAnswer | undefined> {
    const lastName =
      tagsOf(f).length === 0 && digestsOf(f).every((d) => normalizeTag(d) === normalizeTag(ref));
    if (lastName && !this.state.builtImages.has(f.Id)) return undefined;
    const r = await this.core.upstreamBytes('DELETE', `/images/${encodeURIComponent(ref)}${noPrune(query)}`);
    if (r.status < 300) {
      this.state.digests.delete(normalizeTag(ref));
      if (lastName && (await this.inspectImage(f.Id)) === undefined) await this.ownImageGone(f);
    }
    return r;
  }

  /** The image a reference names; undefined only when the engine says there is none (404). */
  async imageIdOf(ref: string): Promise<string | undefined> {
    return (await this.inspectImage(ref))?.Id;
  }

  /**
   * A pull of a tag someone else owns. dockerd writes the tag when a pull ends, before the guard
   * could look (and a tenant that stops reading the answer holds the guard's look off for as long
   * as it likes), so the tag is never pulled: the guard reads the tag's digest from the registry
   * and pulls `repo@digest`, which writes only a digest reference. Fine while that is the image the
   * tag names (up to date); otherwise the answer ends in an error, and the pulled image is the
   * tenant's only by its digest reference.
   */
  private async pullExisting(
    req: IncomingMessage,
    res: ServerResponse,
    target: string,
    query: URLSearchParams,
    tag: string,
    was: string,
    onData: (chunk: Buffer) => void,
    pull: { had: ReadonlySet<string>; pullStart: number },
  ): Promise<void> {
    const auth = req.headers['x-registry-auth'];
    const headers = auth === undefined ? {} : { 'x-registry-auth': auth };
    const dist = await this.core.upstreamBytes('GET', `/distribution/${encodeURIComponent(tag)}/json`, {
      headers,
    });
    const digest = (() => {
      const d = (parseAnswer(dist.raw) as { Descriptor?: { digest?: unknown } } | undefined)?.Descriptor
        ?.digest;
      return dist.status === 200 && typeof d === 'string' && /^sha256:[0-9a-f]{64}$/.test(d) ? d : undefined;
    })();
    const fail = (message: string) => {
      this.core.audit('POST', '/images/create', 'deny', { rule: 'image-tag', status: 200, message });
      if (!res.headersSent) res.writeHead(200, { 'Content-Type': 'application/json' });
      if (!res.destroyed) res.write(`${JSON.stringify({ error: message, errorDetail: { message } })}\n`);
      res.end();
    };
    if (digest === undefined) {
      const why = (parseAnswer(dist.raw) as { message?: unknown } | undefined)?.message;
      return fail(
        `berth: image-tag: ${tag} belongs to someone else, and berth could not read its digest from the registry (${typeof why === 'string' ? why : `engine answered ${dist.status}`}); pull it under a tag of your own`,
      );
    }
    const repo = splitTag(tag)[0];
    const byDigest = `${repo}@${digest}`;
    const qs = new URLSearchParams(query);
    qs.set('fromImage', byDigest);
    qs.delete('tag');
    // The digest reference is the tenant's if this pull made it (dockerd reports no digest line for
    // a pull by digest).
    const refBefore = await this.inspectImage(byDigest).catch(() => undefined);
    const up = await this.core.upstream('POST', `${target}?${qs.toString()}`, { headers });
    res.writeHead(up.status, { 'Content-Type': up.headers['content-type'] ?? 'application/json' });
    res.flushHeaders();
    await relay(up.body, res, { end: false, onData });
    const f = await this.inspectImage(byDigest).catch(() => undefined);
    if (f && refBefore === undefined && digestsOf(f).some((d) => normalizeTag(d) === normalizeTag(byDigest)))
      this.state.digests.set(normalizeTag(byDigest), f.Id);
    if (f && pulledHere(f, pull.had, pull.pullStart)) this.state.builtImages.add(f.Id);
    if (f?.Id !== was)
      return fail(
        `berth: image-tag: the registry's ${tag} is not the image the engine's tag names, and that tag belongs to someone else: it was left as it is, and the image was pulled as ${byDigest} only (tag it with a name of your own)`,
      );
    // The registry serves this very image under the name: whoever set the tag, it is no one's
    // own image under it (tag records are not read for it from now on).
    if (this.registryConfirmed.size >= 4096) this.registryConfirmed.clear();
    this.registryConfirmed.set(normalizeTag(tag), was);
    res.end();
  }

  /**
   * `docker load`: the archive is spooled to a file and read first (loadscan.ts), so the tags it
   * would write are known and checked before dockerd sees a byte; only then is it loaded. The
   * tags claimed are the archive's own, never whatever else changed on the engine meanwhile.
   */
  async imageLoad(req: IncomingMessage, res: ServerResponse, target: string): Promise<void> {
    const dir = mkdtempSync(join(tmpdir(), 'berth-load-'));
    const file = join(dir, 'archive.tar');
    let written = (): void => undefined;
    // Records of the archive's tags while the load runs (their images are known only after it).
    const pending: { drop(): Promise<void> }[] = [];
    try {
      // Spooled and read in one pass: the scanner sees each piece as it goes to the file.
      const scanning = new ArchiveScan();
      try {
        await pipeline(
          req,
          new Transform({
            transform(chunk: Buffer, _enc, done) {
              scanning.write(chunk, () => done(null, chunk));
            },
          }),
          createWriteStream(file, { mode: 0o600 }),
        );
      } catch (e) {
        scanning.destroy(); // an upload cut short: its gunzip goes now, not at a garbage collection
        throw e;
      }
      const scan = await scanning.end().catch((e: unknown) => {
        throw e instanceof ArchiveError ? new Refusal('malformed', e.message, 400) : e;
      });
      if (scan.problem !== undefined)
        throw new Refusal('image-tag', `berth cannot vouch for the tags of this archive: ${scan.problem}`);
      // Without a manifest dockerd loads the legacy way, which sets the tags without reporting them.
      if (!scan.manifest && scan.tags.length > 0)
        throw new Refusal(
          'image-tag',
          'the archive has no manifest.json (the legacy format, whose load sets tags without reporting them); save it again with a current docker',
        );
      // dockerd reads each RepoTag with its own grammar: the name as written is checked too.
      const tags = new Set<string>();
      for (const raw of scan.tags) {
        const tag = normalizeTag(plainRef(raw));
        await this.assertTagWritable(tag);
        if (raw !== tag) await this.assertTagWritable(raw);
        tags.add(tag);
      }
      written = this.beginTagWrite([...tags]);
      // An untagged image the load makes is the tenant's (removed with its other objects); one the
      // engine had already is not.
      // Sent to dockerd only while the tenant deletes no image (see LOADS): a load tags inside
      // dockerd.
      await this.core.turns.run(LOADS, async () => {
        const had = await this.imageIds();
        const fresh = [...tags].filter((t) => !this.state.ownsTag(t));
        for (const t of fresh) this.state.addTag(t);
        for (const t of tags) pending.push(await this.records.before(t, ANY_IMAGE));
        // What each name names before the load: one that names another image afterwards keeps a
        // record of it, reported or not.
        const was = new Map<string, string | undefined>();
        for (const t of tags) was.set(t, (await this.inspectImage(t).catch(() => undefined))?.Id);
        let up: Upstream;
        try {
          up = await this.core.upstream('POST', target, {
            body: createReadStream(file),
            headers: { 'content-type': 'application/x-tar', 'content-length': statSync(file).size },
          });
        } catch (e) {
          for (const t of fresh) this.state.tags.delete(t);
          throw e;
        }
        const out = await readAll(up.body);
        const loaded = new ProgressReport();
        loaded.feed(out);
        loaded.end();
        // A claim holds where the load reported setting the tag; a failed load leaves nothing
        // claimed, nor a name someone else set meanwhile. Loaded content was made elsewhere (it may
        // be someone else's too): only the tags are the tenant's.
        for (const idv of loaded.loadedIds) if (!had.has(idv)) this.state.builtImages.add(idv);
        for (const t of tags) {
          const f = loaded.loaded.has(t) ? await this.inspectImage(t).catch(() => undefined) : undefined;
          if (f && !had.has(f.Id)) this.state.builtImages.add(f.Id);
          if (f) {
            this.state.setTag(t, f.Id);
            await (await this.records.before(t, f.Id)).keep();
          } else {
            if (!this.state.settled(t)) this.state.tags.delete(t);
            const now = await this.inspectImage(t).catch(() => undefined);
            if (now && now.Id !== was.get(t)) await (await this.records.before(t, now.Id)).keep();
          }
        }
        const refusal = await this.undoOwnerLabelled([...this.state.builtImages].filter((i) => !had.has(i)));
        const answer =
          refusal === undefined ? out : Buffer.concat([out, Buffer.from(`${JSON.stringify(refusal)}\n`)]);
        // The load's pending records go before it answers: a client that looks next finds the
        // records naming the images (a test did, and once found a pending one still there).
        for (const p of pending.splice(0)) await p.drop();
        res.writeHead(up.status, {
          'Content-Type': up.headers['content-type'] ?? 'application/json',
          'Content-Length': answer.length,
        });
        res.end(answer);
      });
    } finally {
      written();
      // A pending record whose tag was recorded with its image since is gone already (404).
      for (const p of pending) await p.drop();
      rmSync(dir, { recursive: true, force: true });
    }
  }

  /**
   * Images a load just made whose config names an owner (`io.berth.tenant`): containers run from
   * them would carry the label, and a later guard of that tenant would take them for another
   * guard's (red-team pass 24: a persistent tenant's containers outlived a later guard's cleanup,
   * unseen by it). Their tags are removed and then they are; the load answers an error line.
   */
  private async undoOwnerLabelled(
    ids: readonly string[],
  ): Promise<{ error: string; errorDetail: { message: string } } | undefined> {
    let owner: string | undefined;
    for (const idv of ids) {
      const f = await this.inspectImage(idv).catch(() => undefined);
      const named = f?.Config?.Labels?.[LABEL_TENANT];
      if (!f || named === undefined || named === '') continue;
      owner = named;
      for (const t of tagsOf(f)) {
        const tag = normalizeTag(t);
        const now = await this.inspectImage(tag).catch(() => undefined);
        if (now?.Id === f.Id && this.state.ownsTagAt(tag, f.Id))
          await this.onImage(f.Id, () => this.removeTag(tag, now));
      }
      await this.removeIfUnnamed(idv);
    }
    if (owner === undefined) return undefined;
    const message = `berth: ownership: the loaded image carries the label ${LABEL_TENANT}=${owner}; an image loaded through the guard may not name an owner, so it was removed`;
    this.core.audit('POST', '/images/load', 'deny', { rule: 'ownership', status: 200, message });
    return { error: message, errorDetail: { message } };
  }

  /** `docker rmi`: by ID an image the tenant made, by name a tag or digest reference of its own. */
  async imageDelete(
    req: IncomingMessage,
    res: ServerResponse,
    m: Matched,
    query: URLSearchParams,
  ): Promise<void> {
    const name = m.params.name ?? '';
    const qs = new URLSearchParams(query);
    if (isImageId(name)) {
      const f = await this.inspectImage(name);
      const idv = f?.Id ?? '';
      const tags = tagsOf(f);
      const digests = digestsOf(f);
      // The tenant's when every name it has (tags and digest references) is the tenant's, or it has
      // none and the tenant made it. "Made it" alone is not enough: a build answered from the shared
      // cache, or a pull, gives back an image that others may have made and tagged too.
      if (
        !f ||
        !(tags.length + digests.length > 0
          ? tags.every((t) => this.state.ownsTagAt(t, idv)) &&
            digests.every((d) => this.state.ownsDigestAt(d, idv))
          : this.state.builtImages.has(idv))
      ) {
        throw new Refusal('image-tag', `image ${name} is not one you built; remove your tags instead`);
      }
      // By ID, dockerd deletes the image: only one the tenant made (its tags on someone else's
      // image go by name, which keeps the image).
      if (!this.state.builtImages.has(idv))
        throw new Refusal('image-tag', `image ${name} is not one you made; remove your tags instead`);
      this.assertNotHeld(tags, idv);
      // dockerd would also delete every unnamed parent nobody else uses, someone else's too; and
      // force would take the image from under others' containers.
      qs.set('noprune', '1');
      qs.delete('force');
      await this.onImageDelete(idv, async () => {
        const done = await this.core.forward(
          req,
          res,
          'DELETE',
          `${buildPath(m.route, { name: idv }, m.apiVersion)}?${qs.toString()}`,
          { capture: true },
        );
        if (done && done.status < 300) await this.ownImageGone(f);
      });
      return;
    }
    const tag = normalizeTag(name);
    const now = await this.inspectImage(tag);
    if (!now) {
      this.state.tags.delete(tag);
      this.state.digests.delete(tag);
      throw new NotFound(`No such image: ${tag}`);
    }
    qs.delete('force'); // a tag removal never needs force; force could remove the image under others' tags
    if (tag.includes('@')) {
      // A digest reference goes alone (dockerd takes nothing else with it): the tenant's own only.
      if (!this.state.ownsDigestAt(tag, now.Id))
        throw new Refusal('image-tag', `the digest reference ${tag} is not yours to remove`);
      const r = await this.onImageDelete(now.Id, () => this.removeDigestRef(tag, now, `?${qs.toString()}`));
      if (r === undefined)
        throw new Refusal(
          'image-tag',
          `${tag} is the last name of an image you did not make; removing it would delete that image`,
        );
      return sendJsonBytes(res, r.status, r.raw, r.headers, this.core.hide);
    }
    if (!this.state.ownsTagAt(tag, now.Id)) {
      const settled = this.state.settled(tag);
      const since = settled ? ' (someone else has set it since)' : '';
      if (settled) this.state.tags.delete(tag);
      throw new Refusal('image-tag', `the tag ${tag} is not yours to remove${since}`);
    }
    // The image goes with its last name: then it must not be a base of a build in progress.
    this.assertNotHeld([tag], tagsOf(now).length + digestsOf(now).length > 1 ? undefined : now.Id);
    // The image goes too when this was its last name: after this guard's writes on it.
    const r = await this.onImageDelete(now.Id, () => this.removeTag(tag, now, `?${qs.toString()}`));
    sendJsonBytes(res, r.status, r.raw, r.headers, this.core.hide);
  }

  /** Refuses to remove a tag a build of the tenant's holds as a base (the builder would pull it). */
  private assertNotHeld(tags: readonly string[], imageId?: string): void {
    const held =
      tags.map((t) => normalizeTag(t)).find((t) => this.frozen.has(t)) ??
      (imageId !== undefined && this.heldImages.has(imageId) ? imageId : undefined);
    if (held !== undefined)
      throw new Refusal(
        'image-tag',
        `${held} is a base image of a build in progress; remove it once the build ended`,
      );
  }

  /** `docker image prune`: the images the tenant made that nobody names. */
  async imagePrune(res: ServerResponse): Promise<void> {
    send(res, 200, { ImagesDeleted: await this.deleteOwnUnnamed(), SpaceReclaimed: 0 });
  }

  /**
   * Deletes the images the tenant made that nobody names, children before parents: a parent whose
   * child is still there is kept and tried again once the child went (a commit the tenant built
   * on, whose build came later). Images someone names, or a container uses, stay the tenant's.
   */
  private async deleteOwnUnnamed(): Promise<{ Deleted?: string; Untagged?: string }[]> {
    const deleted: { Deleted?: string; Untagged?: string }[] = [];
    for (let pass = 0; pass < 16; pass++) {
      let progress = false;
      for (const idv of [...this.state.builtImages]) {
        if (this.heldImages.has(idv)) continue; // a base of a build in progress
        const d = await this.onImageDelete(idv, () => this.deleteIfUnnamed(idv));
        if (d === 'kept') continue;
        this.state.builtImages.delete(idv);
        progress = true;
        if (d !== 'gone') deleted.push(...d);
      }
      if (!progress) break;
    }
    return deleted;
  }

  /**
   * The image side of the proxy's cleanup, after the tenant's containers, networks and volumes: its
   * tags and digest references while they name what the tenant set them to, the images it made,
   * then the records of its tags. Counts the tags and references it removed in `counts.tags`.
   */
  async cleanup(counts: { tags: number }): Promise<void> {
    for (const tag of [...this.state.tags.keys()]) {
      // Only while the tag still points where the tenant set it.
      const f = await this.inspectImage(tag).catch(() => undefined);
      if (f && this.state.ownsTagAt(tag, f.Id)) {
        const r = await this.removeTag(tag, f).catch(() => undefined);
        if (r && r.status < 300) counts.tags++;
      }
      this.state.tags.delete(tag);
    }
    // Digest references the tenant's pulls and pushes made that its untags left (another party's
    // tag of the same repository kept them), while they still name the image they were made on.
    for (const ref of [...this.state.digests.keys()]) {
      const f = await this.inspectImage(ref).catch(() => undefined);
      if (f && this.state.ownsDigestAt(ref, f.Id)) {
        // One that is the last name of an image someone else made stays, with the image.
        const r = await this.removeDigestRef(ref, f).catch(() => undefined);
        if (r && r.status < 300) counts.tags++;
      }
      this.state.digests.delete(ref);
    }
    // Images the tenant made, once its tags are gone.
    await this.deleteOwnUnnamed();
    // The records of its tags, once the tags are gone (another guard that read a tag before it
    // went finds the record until then).
    await this.records.dropAll(async (tag) => (await this.inspectImage(tag).catch(() => undefined))?.Id);
  }
}

/** The path of a matched route, with these parameters (as GuardProxy.dispatch builds it). */
function routePath(m: Matched, params: Record<string, string> = m.params): string {
  return buildPath(m.route, params, m.apiVersion);
}

/** An empty tar archive (two zero blocks): the content of the image a tag is moved onto to be removed. */
const EMPTY_TAR = Buffer.alloc(1024);

/** Whether an image reference names a tag (a colon after the last slash). */
function hasTag(ref: string): boolean {
  return ref.lastIndexOf(':') > ref.lastIndexOf('/');
}

function splitTag(tag: string): [string, string] {
  const i = tag.lastIndexOf(':');
  return [tag.slice(0, i), tag.slice(i + 1)];
}

/**
 * The X-Registry-Auth for one registry out of a build's X-Registry-Config (base64 JSON, keyed by
 * registry; Docker Hub's key is its v1 index URL). Undefined when it has none for that registry.
 */
function registryAuth(config: string | undefined, registry: string): string | undefined {
  if (config === undefined || config === '') return undefined;
  let all: unknown;
  try {
    all = JSON.parse(Buffer.from(config, 'base64').toString('utf8'));
  } catch {
    return undefined;
  }
  if (!isRecord(all)) return undefined;
  const keys =
    registry === 'docker.io' ? ['https://index.docker.io/v1/', 'index.docker.io', 'docker.io'] : [registry];
  for (const k of keys) {
    const entry = all[k];
    if (isRecord(entry)) return Buffer.from(JSON.stringify(entry)).toString('base64url');
  }
  return undefined;
}

/**
 * Whether a pull brought the image `f`: the engine did not have it when the pull began, and it was
 * made before then (its ID covers its creation time: one made since is someone else's new image,
 * which a registry the tenant runs can serve back while the pull waits).
 */
function pulledHere(f: ImageFacts, had: ReadonlySet<string>, pullStart: number): boolean {
  return !had.has(f.Id) && Date.parse((f.Created ?? '').replace(/(\.\d{3})\d+/, '$1')) < pullStart;
}

/** An image delete's query with `noprune=1`: dockerd takes no parent image along. */
function noPrune(query: string): string {
  const qs = new URLSearchParams(query.replace(/^\?/, ''));
  qs.set('noprune', '1');
  return `?${qs.toString()}`;
}

/** A tag name the guard and dockerd read alike, or a refusal (see ambiguousRef). */
export function plainRef(ref: string): string {
  if (ambiguousRef(ref))
    throw new Refusal(
      'image-tag',
      `the name ${ref} is ambiguous: dockerd shows it as ${normalizeTag(ref)}, which reads back as another image; choose a name whose first part is not a registry address`,
    );
  return ref;
}

/**
 * Counts `keys` in `counts` (a multiset of what is held or written now) and returns the function
 * that takes them out again, once however often it is called.
 */
function countIn(counts: Map<string, number>, keys: readonly string[]): () => void {
  for (const k of keys) counts.set(k, (counts.get(k) ?? 0) + 1);
  let done = false;
  return () => {
    if (done) return;
    done = true;
    for (const k of keys) {
      const n = (counts.get(k) ?? 1) - 1;
      if (n <= 0) counts.delete(k);
      else counts.set(k, n);
    }
  };
}
