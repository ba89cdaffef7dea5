/**
 * The guard's proxy: an HTTP server in front of the engine for one tenant. Every request is
 * normalised and matched against the known routes, bodies are decoded as dockerd decodes them and
 * checked, references are resolved once upstream and forwarded as full IDs, and only canonical
 * bytes go upstream. Streams (logs, events, build contexts, save/load, archives) flow with
 * backpressure; attach/exec connections are spliced with half-close in both directions.
 */
import { TLSSocket } from 'node:tls';
import http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex, Readable } from 'node:stream';
import { createReadStream, createWriteStream, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { LABEL_ROLE, LABEL_TENANT, errorMessage } from '../common/index.js';
import type { Transport } from '../engine/index.js';
import { JsonLines, readAll } from '../engine/index.js';
import type { AuditRecord, PathMap, Policy, RuleName } from './contracts.js';
import { BodyError, SCHEMAS, canonicalize, isRecord } from './canonical.js';
import type { SchemaRoute } from './canonical.js';
import {
  ProgressReport,
  TenantState,
  registryOf,
  imageLabelsFor,
  leadingContainerId,
  listedContainerIds,
  isImageId,
  ambiguousRef,
  normalizeTag,
  repositoryOf,
  tenantNetworkName,
  createdNanos,
  hideForeignContainers,
} from './ownership.js';
import {
  Refusal,
  checkBuild,
  checkContainerCreate,
  checkChanges,
  checkImageRegistry,
  checkLabels,
  checkRegistry,
  checkReservedRepository,
  loginRegistry,
  searchRegistry,
  checkContainerName,
  checkContainerUpdate,
  checkHealthcheck,
  checkExecCreate,
  checkTopArgs,
  checkNetworkCount,
  checkNetworkCreate,
  checkVolumeCreate,
} from './policy.js';
import type { Resolver } from './policy.js';
import { relay } from './relay.js';
import { BindPins, BindSourceError, pinMode } from './pin.js';
import { rawStream, requestHead } from './rawstream.js';
import { spliceHelper, spliceStream } from './bulksplice.js';
import { ImageWatch, imageEventEffect } from './imagewatch.js';
import type { ImageEvent } from './imagewatch.js';
import { ArchiveError, ArchiveScan } from './loadscan.js';
import { ANY_IMAGE, TagRecords, byIdOrDigest } from './tagrecords.js';
import { ContextGate, dockerfilePaths } from './contextgate.js';
import { SharedTurns, Turns } from './turns.js';
import { readDockerfile, triggerRefusals } from './dockerfile.js';
import { PathError, buildPath, matchRoute, normalizePath, splitTarget } from './routes.js';
import type { Matched } from './routes.js';

export const MAX_JSON_BODY = 4 * 1024 * 1024;
/**
 * An exec's body (its command and environment) stays in dockerd's memory for as long as the exec
 * is kept: a few kilobytes in real use. 100 execs of 3 MiB each took dockerd from 106 to 589 MB.
 */
export const MAX_EXEC_BODY = 64 * 1024;
/**
 * Execs a container may have over its life: dockerd keeps each one, started or not, until the
 * container is removed (2000 execs of 120 KiB took dockerd from 140 to 589 MB).
 */
export const MAX_EXECS_PER_CONTAINER = 1024;
/** Execs created and never started that a tenant may have at once. */
export const MAX_UNSTARTED_EXECS = 256;

export interface ProxyConfig {
  tenant: string;
  transport: Transport;
  maps: readonly PathMap[];
  policy: Policy;
  labels: Readonly<Record<string, string>>;
  /** Where decisions go; absent: no audit log (nothing is built per request). */
  audit?: ((r: AuditRecord) => void) | undefined;
  /**
   * Bind sources below a map root: `auto` pins them where the guard can (see pin.ts), `roots`
   * allows only the mapped folders themselves. Default `auto`.
   */
  bindPins?: 'auto' | 'roots' | undefined;
  /** Names the engine for the once-per-process pin probe (its address). */
  engineKey?: string | undefined;
  /**
   * How many created containers the guard remembers before it first forgets those the engine no
   * longer has (then twice as many as it still remembers). Default 1024.
   */
  forgetFrom?: number | undefined;
  /** Bulk downloads by the kernel (`splice`, default where possible) or through JavaScript. */
  bulkRelay?: 'splice' | 'javascript' | undefined;
}

/** A small engine answer, held whole. */
interface SmallAnswer {
  status: number;
  raw: Buffer;
  headers: Readonly<Record<string, string | string[] | undefined>>;
}

interface Upstream {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: IncomingMessage;
}

class NotFound extends Refusal {
  constructor(message: string) {
    super('ownership', message, 404);
  }
  override decision() {
    return { allow: false as const, status: 404 as const, rule: this.rule, message: this.why };
  }
}

/** An engine answer's JSON; a body that is not JSON becomes `{ message }` (as the engine's plain-text errors). */
function parseAnswer(raw: Buffer): unknown {
  const text = raw.toString('utf8');
  if (text === '') return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return { message: text };
  }
}

/**
 * An engine's error answer with the containers it names that are not the tenant's hidden (see
 * hideForeignContainers); any other answer as it is.
 */
function hidden(status: number, raw: Buffer, hide: ((message: string) => string) | undefined): Buffer {
  if (hide === undefined || status < 400 || raw.length > 64 * 1024) return raw;
  const json = parseAnswer(raw);
  if (!isRecord(json) || typeof json.message !== 'string') return raw;
  const message = hide(json.message);
  return message === json.message ? raw : Buffer.from(JSON.stringify({ ...json, message }));
}

/**
 * A small engine answer as it is (an error's foreign containers hidden), with its headers but this
 * connection's framing.
 */
function sendSmall(
  res: ServerResponse,
  method: string,
  a: SmallAnswer,
  hide: (message: string) => string,
): void {
  const out = answerHeaders(a.headers);
  const raw = hidden(a.status, a.raw, hide);
  // A HEAD answer keeps the engine's length; a de-chunked body gets its own.
  if (method !== 'HEAD') out['content-length'] = raw.length;
  res.writeHead(a.status, out);
  res.end(method === 'HEAD' ? undefined : raw);
}

function send(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

/** Headers of one connection, not of the answer. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection']);

/**
 * The turn of the tenant's loads. A load sets its tags inside dockerd, on an image whose ID the
 * guard does not know before: a delete of that image meanwhile would leave a name that the load
 * reported but that names nothing (until the image is loaded again), and no record of it. A guard's
 * loads and deletes take turns (a delete takes LOADS first, then its image's turn).
 */
const LOADS = 'loads';
/** The turns of a tenant's network creates and (under a container limit) container creates. */
const NETWORK_CREATES = 'network-creates';
const CONTAINER_CREATES = 'container-creates';

/** Whether a failed tag write's status says dockerd wrote nothing: a refusal (4xx), not a 5xx. */
function notWritten(status: number): boolean {
  return status >= 400 && status < 500;
}

/** An engine answer's headers for the client: the hop-by-hop ones dropped, the framing left to set. */
function answerHeaders(
  engine: Readonly<Record<string, string | string[] | undefined>>,
): http.OutgoingHttpHeaders {
  const out: http.OutgoingHttpHeaders = {};
  for (const [k, v] of Object.entries(engine)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
  return out;
}

/**
 * Sends JSON bytes as they are (an engine answer the guard checked and did not change), with the
 * engine's own headers (Api-Version, Ostype, Server, …) but this connection's framing.
 */
function sendJsonBytes(
  res: ServerResponse,
  status: number,
  raw: Buffer,
  engineHeaders: Readonly<Record<string, string | string[] | undefined>> = {},
  hide?: (message: string) => string,
): void {
  const bytes = hidden(status, raw, hide);
  const out = answerHeaders(engineHeaders);
  out['content-type'] = 'application/json';
  out['content-length'] = bytes.length;
  res.writeHead(status, out);
  res.end(bytes);
}

/**
 * The request's media type, read as Go's mime.ParseMediaType reads it (what dockerd's form parsing
 * goes by). Go decodes the header as UTF-8 and trims and lowercases it by Unicode rules, so a
 * header with bytes past ASCII could name a form to dockerd and not to a check here (red-team pass
 * 19: `İ` for `i`, a trailing NEL or no-break space): such a header is refused. On ASCII, Go's
 * TrimSpace and ToLower are JavaScript's.
 */
function contentType(h: http.IncomingHttpHeaders): string {
  const v = h['content-type'] ?? '';
  if (/[^\t\x20-\x7e]/.test(v))
    throw new BodyError('the Content-Type header holds characters other than printable ASCII');
  return v.split(';')[0]?.trim().toLowerCase() ?? '';
}

async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? '0');
  if (declared > limit)
    throw new Refusal('body', `request body of ${declared} bytes is over the ${limit}-byte limit`, 400);
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > limit) throw new Refusal('body', `request body is over the ${limit}-byte limit`, 400);
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Routes whose decisions rest on the tenant's image claims (see ImageWatch.sync). */
const CLAIM_ROUTES: ReadonlySet<string> = new Set([
  'image.build',
  'image.create',
  'image.load',
  'image.prune',
  'image.commit',
  'image.push',
  'image.tag',
  'image.delete',
]);
/** berth-splice processes one guard runs at once; downloads beyond them take the JavaScript relay. */
const MAX_SPLICING = 16;
/** Followed container logs one guard serves at once (see followLogs). */
const MAX_FOLLOWS = 16;
/** Downloads relayed byte for byte (see bulk()): large answers the guard never needs to read. */
const BULK: ReadonlySet<string> = new Set(['container.logs', 'container.export', 'container.archive.get']);

/** The networks dockerd names itself, looked up by name even where an endpoint has an ID. */
const PREDEFINED_NETWORKS: ReadonlySet<string> = new Set(['bridge', 'host', 'none', 'default']);

/** Sized upstream answers up to this many bytes are read whole and sent in one write. */
const SMALL_ANSWER = 256 * 1024;

/** The fields of an image inspect the guard's ownership decisions read. */
interface ImageFacts {
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

export class GuardProxy {
  readonly state: TenantState;
  private networkId: Promise<string> | undefined;
  readonly networkName: string;

  readonly pins: BindPins;

  /** The engine's list of every container carrying the tenant label (ownership still to check). */
  private readonly tenantContainers: string;
  /** Tags that are base images of this tenant's builds in flight (tag → how many builds). */
  private readonly frozen = new Map<string, number>();
  /** Tags this tenant's operations are writing now (tag → how many). */
  private readonly writing = new Map<string, number>();
  /** The bytes of output the tenant's quiet builds hold back now (see buildHeld). */
  private quietHeld = 0;
  /** Images that are bases of this tenant's builds in flight (ID → how many builds). */
  private readonly heldImages = new Map<string, number>();
  /** Execs the tenant created and has not started (exec ID → container ID). */
  private readonly unstartedExecs = new Map<string, string>();
  /** Exec creates sent to the engine and not answered yet. */
  private execCreates = 0;
  /** Execs asked for per container, over its life (forgotten with the container). */
  private readonly execsMade = new Map<string, number>();

  /** The engine's image events, ending claims whose image or name went (see imagewatch.ts). */
  readonly imageWatch = new ImageWatch({
    open: async (path) => {
      const up = await this.upstream('GET', path, { evenStopped: true });
      if (up.status !== 200) {
        up.body.resume();
        throw new Error(`the engine answered ${up.status} to its events`);
      }
      return up.body;
    },
    handle: (ev) => this.onImageEvent(ev),
  });

  /** What an image event ends of the tenant's claims. */
  private async onImageEvent(ev: ImageEvent): Promise<void> {
    const e = imageEventEffect(ev);
    switch (e.kind) {
      case 'gone':
        this.state.forgetImage(e.id, e.atMs);
        return;
      case 'untagged':
        // One of the image's names went: the claims naming it hold only where the name still does.
        for (const name of this.state.claimsOn(e.id)) {
          const f = await this.inspectImage(name).catch(() => null);
          if (f === undefined || (f !== null && f.Id !== e.id)) this.state.forgetClaim(name);
        }
        return;
      case 'written':
        this.state.foreignWrite(e.ref, e.atMs);
        return;
      case 'volumeGone':
        // One of this guard's tag records, gone without the guard removing it: written again
        // (restore passes over any other volume).
        await this.records.restore(e.name);
        return;
      case 'volumesPruned':
        // Not awaited: prunes that come meanwhile share the check (see restoreLost).
        void this.records.restoreLost().catch(() => undefined);
        return;
      case 'none':
        return;
    }
  }

  /** Starts reading the engine's image events (createGuard, once the guard listens). */
  start(): void {
    this.imageWatch.start();
  }

  /** The records of tags tenants wrote, shared by the guards on the engine (tagrecords.ts). */
  readonly records: TagRecords;

  constructor(readonly cfg: ProxyConfig) {
    this.state = new TenantState(cfg.tenant);
    this.records = new TagRecords(cfg.tenant, cfg.labels, (method, path, body) =>
      this.upstreamJson(method, path, body),
    );
    this.tenantContainers = `/containers/json?all=1&filters=${encodeURIComponent(
      JSON.stringify({ label: [`${LABEL_TENANT}=${cfg.tenant}`] }),
    )}`;
    this.forgetAt = cfg.forgetFrom ?? 1024;
    this.networkName = tenantNetworkName(cfg.tenant);
    this.pins = new BindPins(cfg.maps, () =>
      cfg.bindPins === 'roots'
        ? Promise.resolve({ mode: 'roots' as const, why: 'the guard was started with bind pins off' })
        : pinMode(cfg.engineKey ?? 'default', (method, path, body) => this.upstreamJson(method, path, body)),
    );
  }

  // ---------------------------------------------------------------- upstream

  private stopped = false;

  /**
   * From now on nothing that could make an object is sent upstream (only reads and removals): a
   * handler still in flight when the guard closes cannot start a create after the cleanup looked.
   */
  stop(): void {
    this.stopped = true;
    this.imageWatch.close();
  }

  /** An engine's error message without the containers it names that are not the tenant's. */
  private readonly hide = (message: string): string =>
    hideForeignContainers(message, (id) => {
      for (const c of this.state.containers) if (c.startsWith(id)) return true;
      return false;
    });

  private assertRunning(method: string, evenStopped = false): void {
    if (this.stopped && !evenStopped && !['GET', 'HEAD', 'DELETE'].includes(method))
      throw new Error(`the guard is closing: ${method} requests are no longer sent to the engine`);
  }

  upstream(
    method: string,
    path: string,
    opts: { body?: Buffer | Readable; headers?: http.OutgoingHttpHeaders; evenStopped?: boolean } = {},
  ): Promise<Upstream> {
    this.assertRunning(method, opts.evenStopped);
    const base = this.cfg.transport.requestOptions();
    return new Promise((resolve, reject) => {
      const headers: http.OutgoingHttpHeaders = {
        ...(base.headers as http.OutgoingHttpHeaders | undefined),
        ...opts.headers,
      };
      if (Buffer.isBuffer(opts.body)) headers['content-length'] = opts.body.length;
      const req = this.cfg.transport.request({ ...base, method, path, headers });
      req.on('error', reject);
      req.on('response', (res) =>
        resolve({ status: res.statusCode ?? 502, headers: res.headers, body: res }),
      );
      if (opts.body === undefined) req.end();
      else if (Buffer.isBuffer(opts.body)) req.end(opts.body);
      else {
        void relay(opts.body, req, { onEarlyClose: 'discard' });
      }
    });
  }

  /** A small answer, whole: status, bytes and headers (through the lean exchange where there is one). */
  async upstreamBytes(
    method: string,
    path: string,
    opts: { body?: Buffer; headers?: http.OutgoingHttpHeaders; evenStopped?: boolean } = {},
  ): Promise<SmallAnswer> {
    this.assertRunning(method, opts.evenStopped);
    const { body, headers = {} } = opts;
    const ex = this.cfg.transport.exchange;
    if (ex) {
      const a = await ex.send({ method, path, headers, body });
      return { status: a.status, raw: a.body, headers: a.headers };
    }
    const r = await this.upstream(method, path, { body, headers });
    return { status: r.status, raw: await readAll(r.body), headers: r.headers };
  }

  // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- the caller names the JSON shape it expects
  async upstreamJson<T = unknown>(
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{
    status: number;
    json: T;
    raw: Buffer;
    headers: Readonly<Record<string, string | string[] | undefined>>;
  }> {
    const buf = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const a = await this.upstreamBytes(method, path, {
      body: buf,
      headers: buf ? { 'content-type': 'application/json' } : {},
    });
    return { ...a, json: parseAnswer(a.raw) as T };
  }

  // ---------------------------------------------------------------- ownership lookups

  async resolveContainer(ref: string): Promise<{ id: string; name: string; user: string }> {
    const r = ref.replace(/^\//, '');
    if (r === '') throw new NotFound(`No such container: ${ref}`);
    const { status, json } = await this.upstreamJson<ContainerJson>(
      'GET',
      `/containers/${encodeURIComponent(r)}/json`,
    );
    if (status !== 200 || !(await this.ownsContainer(json.Id, json.Config?.Labels, json.Image)))
      throw new NotFound(`No such container: ${r}`);
    // One a create of the tenant's is still checking is not the tenant's yet (createdRefusal).
    if (!this.state.containers.has(json.Id) && this.maybePending(json.Created))
      throw new NotFound(`No such container: ${r}`);
    return { id: json.Id, name: json.Name.replace(/^\//, ''), user: json.Config?.User ?? '' };
  }

  private readonly imageLabelCache = new Map<string, Record<string, string>>();

  /** An image's labels by ID (cached: an ID names immutable content); {} when it is gone. */
  async imageLabels(image: string): Promise<Record<string, string>> {
    return (await this.imageLabelsOrGone(image)) ?? {};
  }

  /** An image's labels, or undefined when the engine has no such image. */
  private async imageLabelsOrGone(image: string): Promise<Record<string, string> | undefined> {
    const hit = this.imageLabelCache.get(image);
    if (hit) return hit;
    const f = await this.inspectImage(image);
    if (!f) return undefined;
    const labels = f.Config?.Labels ?? {};
    if (image.startsWith('sha256:')) {
      if (this.imageLabelCache.size > 4096) this.imageLabelCache.clear();
      this.imageLabelCache.set(image, labels);
    }
    return labels;
  }

  /** Whether a container is the tenant's; see TenantState.ownsContainer (inherited labels do not count). */
  async ownsContainer(
    id: string,
    labels: Record<string, string> | null | undefined,
    image: string | undefined,
  ): Promise<boolean> {
    if (!this.state.owns(labels)) return false;
    if (this.state.containers.has(id) || image === undefined || image === '') return this.state.owns(labels);
    // An image that is gone cannot say whether the label was inherited: not the tenant's then.
    const imageLabels = await this.imageLabelsOrGone(image);
    if (imageLabels === undefined) return false;
    return this.state.ownsContainer(id, labels, imageLabels);
  }

  /** The owned entries of a container list (ImageID says which image's labels they inherit). */
  async ownedContainers<T extends { Id: string; ImageID?: string; Labels?: Record<string, string> | null }>(
    list: readonly T[],
  ): Promise<T[]> {
    const out: T[] = [];
    for (const c of list) {
      if (!this.state.owns(c.Labels)) continue;
      const cached = c.ImageID === undefined ? undefined : this.imageLabelCache.get(c.ImageID);
      const owned =
        this.state.containers.has(c.Id) ||
        (cached
          ? this.state.ownsContainer(c.Id, c.Labels, cached)
          : await this.ownsContainer(c.Id, c.Labels, c.ImageID));
      if (owned) out.push(c);
    }
    return out;
  }

  /**
   * Answers "no such image" for a name another tenant set to an image of its own (a tag record
   * says so): dockerd would run that tenant's image for a name this tenant expects from its
   * registry, or from the host. A pull through this guard does not write over it (a tag someone
   * else owns is pulled by digest), so the tenant names the image by digest meanwhile.
   */
  private async assertNotForeignLocal(ref: string, imageId: string): Promise<void> {
    const refusal = await this.foreignLocalRefusal(ref, imageId);
    if (refusal) throw refusal;
  }

  /** The 404 for `ref` when another tenant set it to `imageId`, an image of its own. */
  private async foreignLocalRefusal(ref: string, imageId: string): Promise<NotFound | undefined> {
    const tag = await this.foreignLocalTag(ref, imageId);
    return tag === undefined
      ? undefined
      : new NotFound(
          `No such image: ${ref} (berth: image-tag: another tenant set ${tag} to an image of its own; name the image by digest, or pull it: a pull that finds the registry serving this very image makes the name usable)`,
        );
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
      const f = await this.inspectImage(ref).catch(() => undefined);
      if (!f) continue;
      if ((await this.foreignLocalTag(ref, f.Id)) !== undefined)
        throw new Refusal(
          'build-options',
          `cache-from ${ref}: another tenant set this name to an image of its own; name the image by digest, or by a tag of yours`,
        );
      ids.push(f.Id);
    }
    qs.set('cachefrom', JSON.stringify(ids));
  }

  /** Tags this tenant's pull found the registry serving as the engine's image (tag → image ID). */
  private readonly registryConfirmed = new Map<string, string>();

  /** The tag `ref` reads as, when another tenant set it to `imageId`, an image of its own. */
  private async foreignLocalTag(ref: string, imageId: string): Promise<string | undefined> {
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
   * Why a container dockerd just created must not stay, read from the container itself: between
   * the checks and the create (which can wait its turn for seconds) names can change what they
   * name. A named image must still be the image read (and not another tenant's, by its records);
   * the health check dockerd merged from the image must pass the rules (the image may have
   * arrived after the check, under an ID the tenant knew beforehand); and every named volume
   * mounted must be the tenant's (the tenant may have removed its volume meanwhile, and another
   * tenant made one of that name, or dockerd made a volume of no one's for the create). Answers
   * the refusal, and the volumes dockerd made for the create that belong to no one.
   */
  private async createdRefusal(
    id: string,
    facts: { volumes: ReadonlyMap<string, boolean>; image?: { name: string; id: string | undefined } },
  ): Promise<{ refusal: Refusal; orphans: string[] } | undefined> {
    const c = await this.upstreamJson<{
      Image?: unknown;
      Config?: { Healthcheck?: unknown } | null;
      Mounts?: { Type?: string; Name?: string }[] | null;
    }>('GET', `/containers/${id}/json`);
    if (c.status !== 200)
      return {
        refusal: new Refusal(
          'ownership',
          `the container could not be read after its create (${c.status})`,
          409,
        ),
        orphans: [],
      };
    const refuse = (refusal: Refusal, orphans: string[] = []) => ({ refusal, orphans });
    if (facts.image) {
      const image = typeof c.json.Image === 'string' ? c.json.Image : undefined;
      if (image === undefined || image !== facts.image.id)
        return refuse(
          new Refusal(
            'image-tag',
            `the image ${facts.image.name} changed while the container was created; create it again`,
            409,
          ),
        );
      const foreign = await this.foreignLocalRefusal(facts.image.name, image);
      if (foreign) return refuse(foreign);
    }
    try {
      onRequest(() => checkHealthcheck(c.json.Config?.Healthcheck, undefined, this.cfg.policy));
    } catch (err) {
      if (err instanceof Refusal) return refuse(err);
      throw err;
    }
    const mounted = new Set(
      (c.json.Mounts ?? []).flatMap((m) => (m.Type === 'volume' && m.Name ? [m.Name] : [])),
    );
    for (const name of facts.volumes.keys()) {
      if (!mounted.has(name)) continue;
      const v = await this.upstreamJson<{ Labels?: Record<string, string> | null }>(
        'GET',
        `/volumes/${encodeURIComponent(name)}`,
      );
      if (v.status === 200 && this.state.owns(v.json.Labels)) continue;
      const nobodys = v.status === 200 && Object.keys(v.json.Labels ?? {}).length === 0;
      return refuse(new NotFound(`get ${name}: no such volume`), nobodys ? [name] : []);
    }
    return undefined;
  }

  async resolveNetwork(ref: string): Promise<string> {
    if (ref === this.networkName) return this.ensureNetwork();
    const { status, json } = await this.upstreamJson<{ Id: string; Labels?: Record<string, string> | null }>(
      'GET',
      `/networks/${encodeURIComponent(ref)}`,
    );
    if (status !== 200 || !this.state.owns(json.Labels)) throw new NotFound(`network ${ref} not found`);
    this.state.networks.add(json.Id);
    return json.Id;
  }

  /** true: an owned volume exists; false: no such volume; throws when it exists and is not the tenant's. */
  async volumeOwned(name: string): Promise<boolean> {
    const { status, json } = await this.upstreamJson<{ Labels?: Record<string, string> | null }>(
      'GET',
      `/volumes/${encodeURIComponent(name)}`,
    );
    if (status === 404) return false;
    if (status !== 200 || !this.state.owns(json.Labels)) throw new NotFound(`get ${name}: no such volume`);
    this.state.claimVolume(name);
    return true;
  }

  ensureNetwork(): Promise<string> {
    this.networkId ??= (async () => {
      // Listed, not looked up by name: guards of one tenant in other processes (a kept
      // environment) may create it at the same moment, and dockerd's duplicate check is not atomic.
      // Every such guard then settles on the oldest, and removes the one it made if not that one.
      const named = async () => {
        const filters = encodeURIComponent(JSON.stringify({ name: [this.networkName] }));
        const r = await this.upstreamJson<
          { Id: string; Name?: string; Created?: string; Labels?: Record<string, string> | null }[]
        >('GET', `/networks?filters=${filters}`);
        if (r.status !== 200 || !Array.isArray(r.json))
          throw new Error(`cannot list the networks (engine answered ${r.status})`);
        const same = r.json.filter((n) => n.Name === this.networkName);
        if (same.some((n) => !this.state.owns(n.Labels)))
          throw new Refusal(
            'ownership',
            `network ${this.networkName} exists and belongs to someone else`,
            409,
          );
        // Oldest first, by time (as text, Go's trimmed fractions sort wrong), then by ID.
        return same.sort((a, b) => {
          const d = createdNanos(a.Created) - createdNanos(b.Created);
          return d < 0n ? -1 : d > 0n ? 1 : a.Id.localeCompare(b.Id);
        });
      };
      let list = await named();
      let made: string | undefined;
      if (list.length === 0) {
        const created = await this.upstreamJson<{ Id?: string; message?: string }>(
          'POST',
          '/networks/create',
          {
            Name: this.networkName,
            CheckDuplicate: true,
            Labels: { ...this.cfg.labels, [LABEL_ROLE]: 'guard-network' },
          },
        );
        made = created.status < 300 ? created.json.Id : undefined;
        list = await named();
        if (list.length === 0)
          throw new Refusal(
            'ownership',
            `cannot create the tenant network: ${created.json.message ?? created.status}`,
            409,
          );
      }
      const [first] = list;
      if (first === undefined) throw new Error('unreachable: the network list is empty');
      if (made !== undefined && made !== first.Id)
        await this.upstreamJson('DELETE', `/networks/${made}`).catch(() => undefined);
      return first.Id;
    })().then(
      (id) => {
        this.state.networks.add(id);
        return id;
      },
      (err: unknown) => {
        this.networkId = undefined;
        throw err;
      },
    );
    return this.networkId;
  }

  // ---------------------------------------------------------------- request handling

  audit(
    method: string,
    path: string,
    decision: AuditRecord['decision'],
    extra: { rule?: RuleName; status?: number; message?: string } = {},
  ): void {
    if (!this.cfg.audit) return;
    this.cfg.audit({
      time: new Date().toISOString(),
      tenant: this.cfg.tenant,
      method,
      path,
      decision,
      ...extra,
    });
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = (req.method ?? 'GET').toUpperCase();
    let normalized = '';
    try {
      const url = requestTarget(req.url);
      normalized = normalizePath(url.path);
      const m = matchRoute(method, normalized);
      if (!m) throw new Refusal('endpoint', `${method} ${normalized} is not an endpoint berth allows`);
      let query = new URLSearchParams(url.search);
      let body: Buffer | undefined;
      const ct = contentType(req.headers);
      if (ct === 'application/x-www-form-urlencoded' && ['POST', 'PUT', 'PATCH'].includes(method)) {
        // Go's ParseForm: body values come first and win over the query.
        const form = new URLSearchParams((await readBody(req, MAX_JSON_BODY)).toString('utf8'));
        const merged = new URLSearchParams();
        for (const [k, v] of form) merged.append(k, v);
        for (const [k, v] of query) merged.append(k, v);
        query = firstWins(merged);
        body = Buffer.alloc(0);
        // An upload sent as form values: dockerd would read the body as such, and the archive or
        // image it should carry would be gone (the request used to hang, waiting for it).
        if (
          m.route.id === 'container.archive.put' ||
          m.route.id === 'image.load' ||
          (m.route.id === 'image.create' && query.get('fromSrc') === '-')
        )
          throw new BodyError(`${method} ${m.path} takes an archive as its body (a stream), not form values`);
      } else if (m.route.body === 'json') {
        body = await readBody(req, m.route.id === 'exec.create' ? MAX_EXEC_BODY : MAX_JSON_BODY);
      }
      // Decisions that rest on the tenant's image claims see every image event up to now first.
      if (CLAIM_ROUTES.has(m.route.id)) await this.imageWatch.sync();
      await this.dispatch(m, req, res, query, body);
      this.audit(method, m.path, 'allow', { status: res.statusCode });
    } catch (err) {
      if (err instanceof Refusal) {
        const d = err.decision();
        this.audit(method, normalized, 'deny', {
          rule: err.rule,
          status: d.status,
          message: d.message,
        });
        send(res, d.status, { message: d.message });
      } else if (err instanceof BodyError || err instanceof PathError) {
        this.audit(method, normalized, 'deny', { rule: 'malformed', status: 400, message: err.message });
        send(res, 400, { message: `berth: malformed: ${err.message}` });
      } else {
        this.audit(method, normalized, 'error', { status: 502, message: errorMessage(err) });
        send(res, 502, { message: `berth: upstream: ${errorMessage(err)}` });
      }
    }
  }

  private body(id: SchemaRoute, body: Buffer | undefined): Record<string, unknown> {
    return canonicalize(
      (body ?? Buffer.alloc(0)).toString('utf8'),
      SCHEMAS[id],
      id === 'container.create' ? 'Config' : id,
    );
  }

  private async dispatch(
    m: Matched,
    req: IncomingMessage,
    res: ServerResponse,
    query: URLSearchParams,
    body: Buffer | undefined,
  ): Promise<unknown> {
    const id = m.route.id;
    const v = m.apiVersion;
    const path = (params: Record<string, string> = m.params) => buildPath(m.route, params, v);
    const q = (qs: URLSearchParams) => (qs.toString() === '' ? '' : `?${qs.toString()}`);
    const p = this.cfg.policy;

    switch (id) {
      case 'image.get':
      case 'image.get-all':
        return this.bulk(req, res, path() + q(query), true);
      case 'system.info':
        return this.info(res, path() + q(query));
      case 'system.ping':
      case 'system.version':
      case 'image.list':
      case 'image.inspect':
      case 'image.history':
        return this.forward(req, res, m.route.method, path() + q(query), { small: true });
      case 'image.search':
        checkRegistry(p, `search for ${query.get('term') ?? ''}`, searchRegistry(query.get('term') ?? ''));
        return this.forward(req, res, m.route.method, path() + q(query));
      case 'image.distribution':
        checkImageRegistry(p, 'distribution inspect of', m.params.name ?? '');
        return this.forward(req, res, m.route.method, path() + q(query));
      case 'image.push': {
        checkImageRegistry(p, 'push of', m.params.name ?? '');
        // A push records the digest it pushed as a reference on the image: that one is the tenant's.
        const repo = repositoryOf(m.params.name ?? '');
        const before = await this.digestRefs(repo);
        const report = new ProgressReport();
        await this.forward(req, res, m.route.method, path() + q(query), { onData: report.feed });
        return this.claimNewDigests(repo, before, report.end().digests);
      }
      case 'auth': {
        const login = this.body('auth', body);
        const server = typeof login.serveraddress === 'string' ? login.serveraddress : '';
        checkRegistry(p, `login to ${server === '' ? 'Docker Hub' : server}`, loginRegistry(server));
        return this.forwardJson(req, res, 'POST', path(), login);
      }
      case 'system.events':
        return this.events(res, path() + q(query));
      case 'system.df':
        return this.df(res, path() + q(query));
      case 'container.list':
      case 'volume.list':
      case 'network.list':
        return this.scopedList(id, res, path(), query);
      case 'container.prune':
        return this.containerPrune(res, query);
      case 'volume.prune': {
        const r = await this.forward(req, res, 'POST', path() + q(withTenantFilter(query, this.cfg.tenant)), {
          capture: true,
        });
        // A pruned volume's name is free again: a later volume of that name is not the tenant's.
        const gone = isRecord(r?.json) ? r.json.VolumesDeleted : undefined;
        if (Array.isArray(gone)) for (const v of gone) if (typeof v === 'string') this.state.forgetVolume(v);
        return;
      }
      case 'network.prune':
        // Alone: no start is checking the networks its container will join (startChecked).
        return this.networkUse.exclusive(async () => {
          const r = await this.forward(
            req,
            res,
            'POST',
            path() + q(withTenantFilter(query, this.cfg.tenant)),
            {
              capture: true,
            },
          );
          const gone = isRecord(r?.json) ? r.json.NetworksDeleted : undefined;
          if (Array.isArray(gone) && gone.includes(this.networkName)) await this.forgetTenantNetwork();
        });
      case 'image.prune':
        return this.imagePrune(res);
      case 'plugin.absent':
        throw new NotFound(`plugin ${m.params.name ?? ''} not found`);
      case 'image.build-prune':
        return send(res, 200, { CachesDeleted: [], SpaceReclaimed: 0 });
      case 'container.create':
        return this.containerCreate(req, res, path() + q(query), query, this.body('container.create', body));
      case 'container.update': {
        const { id: cid } = await this.resolveContainer(m.params.id ?? '');
        return this.forwardJson(
          req,
          res,
          'POST',
          path({ id: cid }),
          onRequest(() => checkContainerUpdate(this.body('container.update', body), p)),
        );
      }
      case 'container.rename': {
        checkContainerName(query.get('name'));
        const { id: cid } = await this.resolveContainer(m.params.id ?? '');
        const a = await this.upstreamBytes('POST', path({ id: cid }) + q(query));
        // dockerd's conflict message names the container that has the name: hidden, unless it is
        // the tenant's own.
        return sendSmall(res, 'POST', a, this.hide);
      }
      case 'container.attach':
        throw new Refusal('endpoint', 'attach needs a connection upgrade (Upgrade: tcp)', 400);
      case 'exec.create': {
        const { id: cid } = await this.resolveContainer(m.params.id ?? '');
        const b = this.body('exec.create', body);
        onRequest(() => checkExecCreate(b, p));
        // dockerd keeps an exec that was never started until its container is removed.
        // Counted with the creates still in flight, so parallel creates cannot all pass.
        const pending = () => this.unstartedExecs.size + this.execCreates;
        if (pending() >= MAX_UNSTARTED_EXECS) await this.forgetGoneExecs();
        if (pending() >= MAX_UNSTARTED_EXECS)
          throw new Refusal(
            'limits',
            `the tenant has ${pending()} execs created and never started (limit ${MAX_UNSTARTED_EXECS}); start them or remove their containers`,
          );
        const lifetime = this.execsMade.get(cid) ?? 0;
        if (lifetime >= MAX_EXECS_PER_CONTAINER)
          throw new Refusal(
            'limits',
            `the container has had ${lifetime} execs (limit ${MAX_EXECS_PER_CONTAINER}); dockerd keeps each until the container is removed`,
          );
        this.execsMade.set(cid, lifetime + 1);
        this.execCreates++;
        try {
          const made = await this.forwardJson(req, res, 'POST', path({ id: cid }), b, { capture: true });
          const eid = isRecord(made?.json) ? made.json.Id : undefined;
          if (typeof eid === 'string') this.unstartedExecs.set(eid, cid);
        } finally {
          this.execCreates--;
        }
        return;
      }
      case 'exec.start': {
        const eid = await this.resolveExec(m.params.id ?? '');
        const started = await this.forwardJson(
          req,
          res,
          'POST',
          path({ id: eid }),
          this.body('exec.start', body),
        );
        // Only a start dockerd took: a refused one (a malformed body, a stopped container) keeps it.
        if (started && started.status < 300) this.unstartedExecs.delete(eid);
        return;
      }
      case 'exec.resize':
      case 'exec.inspect': {
        const eid = await this.resolveExec(m.params.id ?? '');
        return this.forward(req, res, m.route.method, path({ id: eid }) + q(query), { small: true });
      }
      case 'image.build':
        return this.build(req, res, path(), query);
      case 'image.create':
        return this.imageCreate(req, res, path(), query);
      case 'image.load':
        return this.imageLoad(req, res, path() + q(query));
      case 'image.commit': {
        const { id: cid } = await this.resolveContainer(query.get('container') ?? '');
        const target = this.claimTag(query.get('repo'), query.get('tag'));
        await this.assertTagWritable(target);
        const b = this.body('image.commit', body);
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
        const a = await this.upstreamBytes('POST', path() + q(qs), {
          body: Buffer.from(JSON.stringify(b)),
          headers: { 'content-type': 'application/json' },
        });
        const committed =
          a.status < 300 ? (parseAnswer(a.raw) as { Id?: unknown } | undefined)?.Id : undefined;
        if (typeof committed === 'string') {
          // A commit always makes a new image (its creation time is part of it).
          this.state.builtImages.add(committed);
          const why = target ? await this.tagMade(target, committed) : undefined;
          if (why !== undefined) {
            await this.removeIfUnnamed(committed);
            throw new Refusal('image-tag', why.replace(/^berth: image-tag: /, ''));
          }
        }
        return sendJsonBytes(res, a.status, a.raw, a.headers, this.hide);
      }
      case 'image.tag': {
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
          const from = path({ name: source.Id });
          await this.onImage(source.Id, async () => {
            const record = target ? await this.records.before(target, source.Id) : undefined;
            const r = await this.forward(req, res, 'POST', from + q(query), { capture: true });
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
      case 'image.delete':
        return this.imageDelete(req, res, m, query);
      case 'volume.create': {
        const b = onRequest(() => checkVolumeCreate(this.body('volume.create', body), this.cfg.labels, p));
        const name = typeof b.Name === 'string' ? b.Name : '';
        if (name !== '') {
          await this.volumeOwned(name); // refuses another tenant's volume of that name
        }
        // Not forwarded as is: dockerd answers a create of an existing name with that volume, which
        // someone else may have made since the check.
        const asked = Date.now();
        const r = await this.upstreamBytes('POST', path(), {
          body: Buffer.from(JSON.stringify(b)),
          headers: { 'content-type': 'application/json' },
        });
        const created = parseAnswer(r.raw) as { Name?: string; Labels?: Record<string, string> | null };
        if (r.status < 300 && !this.state.owns(created.Labels))
          throw new NotFound(`get ${name}: no such volume`);
        if (r.status < 300 && created.Name) this.state.claimVolume(created.Name, asked);
        return sendJsonBytes(res, r.status, r.raw, r.headers, this.hide);
      }
      case 'volume.inspect':
      case 'volume.delete': {
        const name = m.params.name ?? '';
        if (!(await this.volumeOwned(name))) throw new NotFound(`get ${name}: no such volume`);
        const r = await this.forward(req, res, m.route.method, path() + q(query), { small: true });
        // A name is not the tenant's once its volume is gone: a later volume of that name (the
        // host's) would show in the tenant's events.
        if (id === 'volume.delete' && r && r.status < 300) this.state.forgetVolume(name);
        return r;
      }
      case 'network.create': {
        const b = onRequest(() => checkNetworkCreate(this.body('network.create', body), this.cfg.labels, p));
        // One at a time, counted: parallel creates would all see the same count.
        return this.turns.run(NETWORK_CREATES, async () => {
          checkNetworkCount(await this.tenantNetworkCount(), p);
          const r = await this.forwardJson(req, res, 'POST', path(), b, { capture: true });
          const created = r?.json as { Id?: string } | undefined;
          if (created?.Id) this.state.networks.add(created.Id);
        });
      }
      case 'network.inspect': {
        const nid = await this.resolveNetwork(m.params.id ?? '');
        return this.forward(req, res, m.route.method, path({ id: nid }) + q(query), { small: true });
      }
      case 'network.delete':
        // Alone: no start is checking the networks its container will join (startChecked).
        return this.networkUse.exclusive(async () => {
          const nid = await this.resolveNetwork(m.params.id ?? '');
          const r = await this.forward(req, res, m.route.method, path({ id: nid }) + q(query), {
            small: true,
          });
          if (r && r.status < 300) {
            this.state.networks.delete(nid);
            if (this.networkId !== undefined && (await this.networkId.catch(() => undefined)) === nid)
              await this.forgetTenantNetwork();
          }
        });
      case 'network.connect':
      case 'network.disconnect': {
        // Leaving the predefined `none` network (to join a real one) is the tenant's own affair;
        // every other network must be the tenant's.
        const ref = m.params.id ?? '';
        const nid = id === 'network.disconnect' && ref === 'none' ? 'none' : await this.resolveNetwork(ref);
        const b = this.body(id, body);
        const { id: cid } = await this.resolveContainer(typeof b.Container === 'string' ? b.Container : '');
        b.Container = cid;
        if (id === 'network.connect' && b.EndpointConfig && typeof b.EndpointConfig === 'object') {
          const ep = b.EndpointConfig as Record<string, unknown>;
          if (Array.isArray(ep.Links)) {
            const links: string[] = [];
            for (const l of ep.Links as string[]) {
              const [ref = '', alias] = l.split(':');
              links.push(`${(await this.resolveContainer(ref)).id}:${alias ?? ref}`);
            }
            ep.Links = links;
          }
        }
        return this.forwardJson(req, res, 'POST', path({ id: nid }), b);
      }
      case 'container.inspect': {
        // One upstream call: the inspect answer itself says who owns the container.
        const ref = (m.params.id ?? '').replace(/^\//, '');
        const a = await this.upstreamBytes('GET', `${path({ id: ref })}${q(query)}`);
        if (a.status !== 200) throw new NotFound(`No such container: ${ref}`);
        // A container this guard created is the tenant's for good (its labels cannot change): when
        // the answer opens with such an ID, it is not parsed.
        if (!this.state.containers.has(leadingContainerId(a.raw) ?? '')) {
          const json = parseAnswer(a.raw) as ContainerJson;
          if (!(await this.ownsContainer(json.Id, json.Config?.Labels, json.Image)))
            throw new NotFound(`No such container: ${ref}`);
        }
        return sendJsonBytes(res, 200, a.raw, a.headers);
      }
      default: {
        // Every other route is a container operation on {id}: resolve, check, forward with the full ID.
        if (id.startsWith('container.') && m.params.id !== undefined) {
          const { id: cid, user } = await this.resolveContainer(m.params.id);
          if (BULK.has(id)) {
            if (id === 'container.logs' && goBool(query.get('follow')))
              return this.followLogs(req, res, path({ id: cid }) + q(query));
            return this.bulk(req, res, path({ id: cid }) + q(query), true);
          }
          if (id === 'container.start' || id === 'container.restart')
            return this.startChecked(req, res, path({ id: cid }) + q(query), cid);
          const r = m.route.body === 'stream' ? req : undefined;
          let qs = query;
          if (id === 'container.delete') {
            // Anonymous volumes carry no label: removed with their container, or nobody could.
            qs = new URLSearchParams(query);
            qs.set('v', '1');
          }
          if (id === 'container.top') qs = onRequest(() => checkTopArgs(query, p));
          // dockerd looks a named User up in the host's user database for copyUIDGID: which
          // accounts the host has. Only a numeric user (or none) is passed.
          if (
            id === 'container.archive.put' &&
            goBool(query.get('copyUIDGID')) &&
            user !== '' &&
            !/^[0-9]+(:[0-9]+)?$/.test(user)
          )
            throw new Refusal(
              'namespaces',
              `copying with the container's owner (-a) resolves user ${user} in the host's user database; give the container a numeric user`,
            );
          const done = await this.forward(r ?? req, res, m.route.method, path({ id: cid }) + q(qs), {
            body: r,
          });
          if (id === 'container.delete' && done && done.status < 300) {
            this.state.containers.delete(cid);
            this.forgetExecsOf(cid);
            await this.pins.detach(cid);
          }
          return;
        }
        throw new Refusal('endpoint', `${m.route.method} ${m.path} is not an endpoint berth allows`);
      }
    }
  }

  /**
   * A start (or restart) of the tenant's container, once every network it will join is the
   * tenant's. dockerd keeps the networks of a container not started yet (and those joined while it
   * was stopped) by name, and looks each name up again at start: full ID, then name, then ID
   * prefix. The guard resolved them at create or connect, but the network of that name may be gone
   * since (removed by the tenant, or pruned by the host), and the name then finds whatever has it
   * now: another tenant's network made under the same name, or one whose ID begins with it
   * (red-team pass 25). The check and the start run while no network delete or prune of the
   * tenant's does (networkUse).
   */
  private async startChecked(
    req: IncomingMessage,
    res: ServerResponse,
    target: string,
    cid: string,
  ): Promise<void> {
    await this.networkUse.shared(async () => {
      const c = await this.upstreamJson<{
        NetworkSettings?: { Networks?: Record<string, { NetworkID?: string } | null> | null } | null;
      }>('GET', `/containers/${cid}/json`);
      for (const [name, ep] of Object.entries(c.json.NetworkSettings?.Networks ?? {})) {
        if (name === 'none') continue;
        // dockerd prefers the endpoint's network ID where it has one (user-defined networks).
        const key = ep?.NetworkID && !PREDEFINED_NETWORKS.has(name) ? ep.NetworkID : name;
        const n = await this.upstreamJson<{ Id?: string; Labels?: Record<string, string> | null }>(
          'GET',
          `/networks/${encodeURIComponent(key)}`,
        );
        if (n.status !== 200 || !this.state.owns(n.json.Labels))
          throw new Refusal(
            'ownership',
            `the container joins network ${name} when it starts, and ${name} now names no network of yours (it was removed after the container was made or connected); disconnect it from ${name} and connect it to a network of yours`,
            404,
          );
      }
      await this.forward(req, res, 'POST', target);
    });
  }

  /** The tenant network went (through the guard): the next create makes it again. */
  private async forgetTenantNetwork(): Promise<void> {
    const id = await this.networkId?.catch(() => undefined);
    if (id !== undefined) this.state.networks.delete(id);
    this.networkId = undefined;
  }

  async resolveExec(execId: string): Promise<string> {
    const { status, json } = await this.upstreamJson<{ ID?: string; ContainerID?: string }>(
      'GET',
      `/exec/${encodeURIComponent(execId)}/json`,
    );
    if (status !== 200 || !json.ContainerID) throw new NotFound(`No such exec instance: ${execId}`);
    try {
      await this.resolveContainer(json.ContainerID);
    } catch {
      throw new NotFound(`No such exec instance: ${execId}`);
    }
    return json.ID ?? execId;
  }

  // ---------------------------------------------------------------- forwarding

  /** Forwards a request and pipes the answer back. With `capture`, JSON answers are also returned. */
  async forward(
    req: IncomingMessage,
    res: ServerResponse,
    method: string,
    target: string,
    opts: {
      body?: IncomingMessage | Buffer;
      capture?: boolean;
      headers?: http.OutgoingHttpHeaders;
      /** The answer always ends and is small (ping, inspects, lists): one lean exchange. */
      small?: boolean;
      /** Sees every piece of the answer's body as it goes to the client. */
      onData?: (chunk: Buffer) => void;
      /** A streamed answer is left open for more lines (the caller ends it). Default true. */
      end?: boolean;
    } = {},
  ): Promise<{ status: number; json: unknown } | undefined> {
    const headers: http.OutgoingHttpHeaders = { ...opts.headers };
    for (const h of ['x-registry-auth', 'x-registry-config']) {
      const v = req.headers[h];
      if (v !== undefined && headers[h] === undefined) headers[h] = v;
    }
    // The body's type is the guard's to say, never the client's: dockerd reads a form body (in any
    // spelling Go's media type parser takes, some of which no check here read as a form: red-team
    // pass 19) or a multipart one as request options, which win over the query the guard checked.
    // A body the guard passes is its own JSON, or an archive.
    if (headers['content-type'] === undefined && opts.body !== undefined)
      headers['content-type'] = Buffer.isBuffer(opts.body) ? 'application/json' : 'application/x-tar';
    if (opts.small && !opts.capture && (opts.body === undefined || Buffer.isBuffer(opts.body))) {
      const a = await this.upstreamBytes(method, target, { body: opts.body, headers });
      sendSmall(res, method, a, this.hide);
      return { status: a.status, json: undefined };
    }
    if (opts.body && !Buffer.isBuffer(opts.body) && req.headers['content-length'])
      headers['content-length'] = req.headers['content-length'];
    const up = await this.upstream(method, target, { body: opts.body, headers });
    const outHeaders = answerHeaders(up.headers);
    if (
      opts.capture &&
      (up.headers['content-type'] ?? '').includes('json') &&
      !(up.headers['transfer-encoding'] === 'chunked' && method === 'POST' && target.includes('/build'))
    ) {
      const chunks: Buffer[] = [];
      for await (const c of up.body) chunks.push(c as Buffer);
      const buf = Buffer.concat(chunks);
      let json: unknown;
      try {
        json = JSON.parse(buf.toString('utf8'));
      } catch {
        json = undefined;
      }
      const out = hidden(up.status, buf, this.hide);
      outHeaders['content-length'] = out.length;
      res.writeHead(up.status, outHeaders);
      res.end(out);
      return { status: up.status, json };
    }
    const length = Number(up.headers['content-length'] ?? NaN);
    if (length <= SMALL_ANSWER) {
      // The common case (ping, inspect, lists, errors): read the sized answer whole and send
      // headers and body in one write — no stream plumbing per request.
      const buf = await readAll(up.body);
      opts.onData?.(buf);
      res.writeHead(up.status, outHeaders);
      res.end(buf);
      return { status: up.status, json: undefined };
    }
    res.writeHead(up.status, outHeaders);
    // Streams (logs -f, wait, events) must show their headers before any body arrives.
    if (Number.isNaN(length)) res.flushHeaders();
    await relay(up.body, res, { onData: opts.onData, end: opts.end ?? true });
    return { status: up.status, json: undefined };
  }

  /** `logs -f` streams open through this guard now (at most MAX_FOLLOWS unless `limits` is allowed). */
  private following = 0;

  /**
   * A followed log. dockerd watches the log file with an inotify instance of its own (root's) for
   * each: the kernel's per-user limit on those (128 by default) is the whole host's, so one tenant
   * may not hold them all. Long and thin, it stays with the JavaScript relay (no process for it).
   */
  private async followLogs(req: IncomingMessage, res: ServerResponse, target: string): Promise<void> {
    if (this.following >= MAX_FOLLOWS && !this.cfg.policy.allow.has('limits'))
      throw new Refusal(
        'limits',
        `the tenant already follows ${this.following} container logs (limit ${MAX_FOLLOWS}); dockerd holds an inotify instance of the host's for each`,
      );
    this.following++;
    // A client that closes its side of a followed log is gone (it sends nothing more, and a log
    // that writes nothing would never find out): without this, each such stream (and its inotify
    // instance in dockerd) stays.
    const gone = (): void => {
      req.socket.destroy();
    };
    req.socket.once('end', gone);
    try {
      await this.bulk(req, res, target, false);
    } finally {
      req.socket.off('end', gone);
      this.following--;
    }
  }

  /** berth-splice helpers running for this guard now (at most MAX_SPLICING; the rest relay in JavaScript). */
  private splicing = 0;

  /**
   * A bulk download, checked already: spliced by berth-splice where it can be (`spliced`, see
   * bulksplice.ts), else relayed byte for byte on its own engine connection (rawstream.ts);
   * through node:http where the transport has no raw connections (TLS).
   */
  private async bulk(
    req: IncomingMessage,
    res: ServerResponse,
    target: string,
    spliced: boolean,
  ): Promise<void> {
    const connect = this.cfg.transport.connectRaw;
    if (!connect || req.httpVersion !== '1.1') {
      await this.forward(req, res, 'GET', target);
      return;
    }
    // From here the answer goes onto the client's socket directly; node:http writes nothing.
    res.shouldKeepAlive = false;
    const head = requestHead('GET', target);
    const endpoint = this.cfg.transport.endpoint;
    const helper = spliced && this.cfg.bulkRelay !== 'javascript' ? spliceHelper() : undefined;
    if (
      helper &&
      endpoint.kind === 'unix' &&
      !(req.socket instanceof TLSSocket) &&
      this.splicing < MAX_SPLICING
    ) {
      this.splicing++;
      try {
        res.statusCode = await spliceStream(helper, endpoint.socketPath, head, req.socket);
      } finally {
        this.splicing--;
      }
      return;
    }
    res.statusCode = await rawStream(connect, head, req.socket);
  }

  forwardJson(
    req: IncomingMessage,
    res: ServerResponse,
    method: string,
    target: string,
    body: unknown,
    opts: { capture?: boolean } = {},
  ): Promise<{ status: number; json: unknown } | undefined> {
    const buf = Buffer.from(JSON.stringify(body));
    return this.forward(req, res, method, target, {
      body: buf,
      capture: opts.capture,
      headers: { 'content-type': 'application/json' },
    });
  }

  // ---------------------------------------------------------------- containers

  private async containerCreate(
    req: IncomingMessage,
    res: ServerResponse,
    target: string,
    query: URLSearchParams,
    body: Record<string, unknown>,
  ): Promise<void> {
    checkContainerName(query.get('name'));
    // Resolve every reference the rules need, then run the pure rules with the answers.
    const answers = new Map<string, string>();
    const volumes = new Map<string, boolean>();
    const nets = new Map<string, string>();
    const refs = onRequest(() => collectRefs(body));
    for (const c of refs.containers) answers.set(c, (await this.resolveContainer(c)).id);
    for (const n of refs.networks) {
      if (
        n === '' ||
        n === 'default' ||
        n === 'bridge' ||
        n === 'none' ||
        n === 'host' ||
        n.startsWith('container:')
      )
        continue;
      nets.set(n, await this.resolveNetwork(n));
    }
    for (const vname of refs.volumes) volumes.set(vname, await this.volumeOwned(vname));
    // Bind sources: walked and pinned now (pin.ts); the rules see the outcome.
    await this.sweepPins();
    const binds = new Map<string, { forward: string } | { refused: string }>();
    const held: string[] = [];
    let createdId: string | undefined;
    try {
      for (const b of refs.binds) {
        const k = bindKey(b.source, b.create);
        if (binds.has(k)) continue;
        try {
          const pinned = await this.pins.resolve(b.source, b.create);
          if (pinned.key !== undefined) held.push(pinned.key);
          binds.set(k, { forward: pinned.forward });
        } catch (e) {
          if (!(e instanceof BindSourceError)) throw e;
          if (e.reason !== 'outside' && e.reason !== 'not-a-root')
            throw new Refusal('binds', `invalid bind source: ${e.message}`, 400);
          binds.set(k, { refused: e.message });
        }
      }
      // The image, read once: its health check runs as the container's own (the rules merge the
      // two), and a name another tenant set to its own image is absent for this tenant
      // (tagrecords.ts). A name is looked up again by dockerd, and checked against this afterwards.
      const ref = typeof body.Image === 'string' ? body.Image : undefined;
      const named = ref !== undefined && !byIdOrDigest(ref) ? ref : undefined;
      const image = ref === undefined ? undefined : await this.inspectImage(ref).catch(() => undefined);
      if (named !== undefined && image) await this.assertNotForeignLocal(named, image.Id);
      const imageHealthcheck = this.cfg.policy.allow.has('resources')
        ? undefined
        : (image as { Config?: { Healthcheck?: unknown } | null } | undefined)?.Config?.Healthcheck;
      createdId = await this.oneCreateAtATime(() =>
        this.createChecked(req, res, target, body, refs, {
          volumes,
          answers,
          nets,
          binds,
          imageHealthcheck,
          image: named === undefined ? undefined : { name: named, id: image?.Id },
        }),
      );
    } finally {
      if (createdId !== undefined) this.pins.attach(createdId, held);
      else await this.pins.release(held);
    }
  }

  /** Containers that removed themselves (`--rm`) hold pins until a create notices they are gone. */
  private async sweepPins(): Promise<void> {
    if (this.pins.holderCount < 16) return;
    const { status, json } = await this.upstreamJson<{ Id: string }[]>('GET', this.tenantContainers);
    if (status !== 200 || !Array.isArray(json)) return;
    const live = new Set(json.map((c) => c.Id));
    for (const h of [...this.pins.holders]) if (!live.has(h)) await this.pins.detach(h);
  }

  /**
   * Operations that take turns: creates under a limit (each counts the tenant's objects after the
   * one before landed), and a tag write, delete or load of one image (see onImage, LOADS).
   */
  private readonly turns = new Turns();

  /** Starts (shared) against the tenant's network deletes and prunes (exclusive): see startChecked. */
  private readonly networkUse = new SharedTurns();

  /** Container creates sent to the engine whose container is not checked yet (→ when sent, ms). */
  private readonly pendingCreates = new Map<symbol, number>();

  /**
   * Whether a container the guard did not create could be one a create in flight just made (not
   * checked yet): made at most 5 s before the earliest such create was sent (clock margin).
   */
  private maybePending(created: string | undefined): boolean {
    if (this.pendingCreates.size === 0) return false;
    const at = Date.parse(created ?? '');
    return !(at < Math.min(...this.pendingCreates.values()) - 5000);
  }

  /**
   * Runs a container create after the tenant's creates before it, where the policy limits the
   * number of containers: otherwise parallel creates would all count the same number and all pass.
   */
  private async oneCreateAtATime<T>(create: () => Promise<T>): Promise<T> {
    if (this.cfg.policy.limits.maxContainers === undefined) return create();
    return this.turns.run(CONTAINER_CREATES, create);
  }

  private async createChecked(
    req: IncomingMessage,
    res: ServerResponse,
    target: string,
    body: Record<string, unknown>,
    refs: Refs,
    facts: {
      volumes: Map<string, boolean>;
      answers: Map<string, string>;
      nets: Map<string, string>;
      binds: Map<string, { forward: string } | { refused: string }>;
      imageHealthcheck: unknown;
      /** The image name the create names, and the image it named when checked. */
      image?: { name: string; id: string | undefined };
    },
  ): Promise<string | undefined> {
    const { volumes, answers, nets, binds, imageHealthcheck } = facts;
    const needsTenantNet = refs.needsTenantNetwork;
    const tenantNet = needsTenantNet ? await this.ensureNetwork() : this.networkName;
    const count = (await this.ownedContainerCount()) + this.buildsInFlight;
    const resolver: Resolver = {
      container: (ref) => {
        const hit = answers.get(ref) ?? answers.get(ref.replace(/^\//, ''));
        if (!hit) throw new NotFound(`No such container: ${ref}`);
        return hit;
      },
      network: (ref) => {
        const hit = nets.get(ref);
        if (!hit) throw new NotFound(`network ${ref} not found`);
        return hit;
      },
      volume: (name) => volumes.get(name) ?? false,
      bind: (src, create) =>
        binds.get(bindKey(src, create)) ?? { refused: `bind source ${src} was not resolved` },
    };
    const out = onRequest(() =>
      checkContainerCreate(
        body,
        {
          labels: this.cfg.labels,
          network: tenantNet,
          policy: this.cfg.policy,
          containerCount: count,
          imageHealthcheck,
        },
        resolver,
      ),
    );
    // Named volumes that do not exist yet are created now, labelled, so they are the tenant's.
    for (const [vname, exists] of volumes) {
      if (!exists) {
        const r = await this.upstreamJson<{ message?: string; Labels?: Record<string, string> | null }>(
          'POST',
          '/volumes/create',
          { Name: vname, Labels: this.cfg.labels },
        );
        if (r.status >= 300)
          throw new Refusal('ownership', `cannot create volume ${vname}: ${r.json.message ?? r.status}`, 409);
        // dockerd's create answers with an existing volume of that name as it is: someone else may
        // have made it since the check.
        if (!this.state.owns(r.json.Labels)) throw new NotFound(`get ${vname}: no such volume`);
        this.state.claimVolume(vname);
      }
    }
    // Until its check below is done, the new container is nobody's to act on (resolveContainer).
    const pending = Symbol('create');
    this.pendingCreates.set(pending, Date.now());
    let created: unknown;
    let a: SmallAnswer;
    try {
      a = await this.upstreamBytes('POST', target, {
        body: Buffer.from(JSON.stringify(out)),
        headers: { 'content-type': 'application/json' },
      });
      created = a.status < 300 ? (parseAnswer(a.raw) as { Id?: unknown } | undefined)?.Id : undefined;
      if (typeof created === 'string') {
        const wrong = await this.createdRefusal(created, facts);
        if (wrong !== undefined) {
          await this.upstreamJson('DELETE', `/containers/${created}?force=1&v=1`).catch(() => undefined);
          // Unforced: a volume someone started to use meanwhile stays.
          for (const v of wrong.orphans)
            await this.upstreamJson('DELETE', `/volumes/${encodeURIComponent(v)}`).catch(() => undefined);
          throw wrong.refusal;
        }
      }
    } finally {
      this.pendingCreates.delete(pending);
    }
    sendSmall(res, 'POST', a, this.hide);
    if (typeof created === 'string') {
      this.state.containers.add(created);
      if (this.state.containers.size >= this.forgetAt) {
        this.forgetAt = Number.POSITIVE_INFINITY; // one pass at a time
        void this.forgetGoneContainers()
          .catch(() => undefined)
          .finally(() => {
            this.forgetAt = Math.max(this.cfg.forgetFrom ?? 1024, 2 * this.state.containers.size);
          });
      }
      return created;
    }
    return undefined;
  }

  /** The number of remembered containers at which the next forgetting pass starts. */
  private forgetAt: number;

  /**
   * Forgets the containers this guard created that the engine no longer has (removed by
   * AutoRemove, by the host, by another client): a long-lived guard remembers the containers that
   * are alive, not every one it ever made. Removals through the guard forget at once. Only IDs it
   * knew before it asked the engine are dropped, so a container created meanwhile is never
   * forgotten while alive (forgetting one would only send its ownership checks the slow way).
   */
  async forgetGoneContainers(): Promise<void> {
    const known = [...this.state.containers];
    const { status, raw } = await this.upstreamBytes('GET', this.tenantContainers);
    if (status !== 200) return;
    const listed = listedContainerIds(raw) ?? (parseAnswer(raw) as { Id?: string }[]).map((c) => c.Id ?? '');
    const alive = new Set(listed);
    for (const id of known) if (!alive.has(id)) this.state.containers.delete(id);
  }

  /**
   * A container list's `since` and `before` filters name a container: dockerd answers an error for
   * one it does not have, so they would tell whether a host's or another tenant's container exists.
   * Each is resolved as the tenant's (absent otherwise) and forwarded as its full ID.
   */
  private async resolveOrderFilters(filters: Record<string, unknown>): Promise<Record<string, unknown>> {
    if (filters.since === undefined && filters.before === undefined) return filters;
    const out: Record<string, unknown> = { ...filters };
    for (const key of ['since', 'before'] as const) {
      const v = filters[key];
      if (v === undefined || v === null) continue;
      const refs = Array.isArray(v) ? v : isRecord(v) ? Object.keys(v) : [v];
      const ids: string[] = [];
      for (const ref of refs) ids.push((await this.resolveContainer(String(ref))).id);
      out[key] = Array.isArray(v) || !isRecord(v) ? ids : Object.fromEntries(ids.map((i) => [i, true]));
    }
    return out;
  }

  /** Forgets the execs of containers the engine no longer has (removed elsewhere). */
  private async forgetGoneExecs(): Promise<void> {
    for (const cid of new Set(this.unstartedExecs.values())) {
      const { status } = await this.upstreamBytes('GET', `/containers/${cid}/json`);
      if (status === 404) this.forgetExecsOf(cid);
    }
  }

  /** A container is gone: its execs no longer count. */
  private forgetExecsOf(cid: string): void {
    for (const [e, c] of this.unstartedExecs) if (c === cid) this.unstartedExecs.delete(e);
    this.execsMade.delete(cid);
  }

  /** The networks the tenant created that the engine has (its own network not counted). */
  private async tenantNetworkCount(): Promise<number> {
    const filters = encodeURIComponent(JSON.stringify({ label: [`${LABEL_TENANT}=${this.cfg.tenant}`] }));
    const { status, json } = await this.upstreamJson<unknown[]>('GET', `/networks?filters=${filters}`);
    if (status !== 200 || !Array.isArray(json))
      throw new Error(`cannot count the tenant's networks (engine answered ${status})`);
    // Its own network (made by the guard on first use) is not one it created.
    return json.filter((n) => !(isRecord(n) && n.Name === this.networkName)).length;
  }

  private async ownedContainerCount(): Promise<number> {
    if (this.cfg.policy.limits.maxContainers === undefined) return 0;
    return (await this.ownedContainerList()).length;
  }

  private async scopedList(
    id: string,
    res: ServerResponse,
    target: string,
    query: URLSearchParams,
  ): Promise<void> {
    const filters = filtersObject(query);
    const qs = withTenantFilter(
      query,
      this.cfg.tenant,
      id === 'container.list' ? await this.resolveOrderFilters(filters) : filters,
    );
    const { status, raw, headers } = await this.upstreamBytes('GET', `${target}?${qs.toString()}`);
    // Every entry a container this guard created (the usual case): the bytes go back unparsed.
    if (status === 200 && id === 'container.list') {
      const ids = listedContainerIds(raw);
      if (ids?.every((c) => this.state.containers.has(c))) return sendJsonBytes(res, 200, raw, headers);
    }
    const json = parseAnswer(raw);
    if (status !== 200) return send(res, status, json);
    // The engine's own bytes go back when the check removed nothing (the usual case: the label
    // filter already did the work); otherwise the filtered list, re-encoded.
    if (id === 'volume.list') {
      const v = json as { Volumes?: { Labels?: Record<string, string> | null }[] | null; Warnings?: unknown };
      const all = v.Volumes ?? [];
      const kept = all.filter((x) => this.state.owns(x.Labels));
      return kept.length === all.length
        ? sendJsonBytes(res, 200, raw, headers)
        : send(res, 200, { ...v, Volumes: kept });
    }
    const arr = Array.isArray(json)
      ? (json as { Id: string; ImageID?: string; Labels?: Record<string, string> | null }[])
      : [];
    const kept =
      id === 'container.list'
        ? await this.ownedContainers(arr)
        : arr.filter((x) => this.state.owns(x.Labels));
    if (kept.length === arr.length && Array.isArray(json)) return sendJsonBytes(res, 200, raw, headers);
    send(res, 200, kept);
  }

  /**
   * Container prune, scoped: the engine's prune cannot be trusted with the label filter alone (a
   * stopped host container run from an image carrying the tenant label would match), so the guard
   * lists the candidates, keeps those it owns, and removes them one by one. Filters as Docker's:
   * `label`, `label!` and `until`.
   */
  private async containerPrune(res: ServerResponse, query: URLSearchParams): Promise<void> {
    const filters = parseFilters(query.get('filters'));
    const labelIs = [...(filters.get('label') ?? []), `${LABEL_TENANT}=${this.cfg.tenant}`];
    const labelNot = filters.get('label!') ?? [];
    const until = filters.get('until')?.[0];
    const cutoff = until === undefined ? undefined : untilSeconds(until);
    const listFilters = JSON.stringify({ label: labelIs, status: ['created', 'exited', 'dead'] });
    const { status, json } = await this.upstreamJson<
      { Id: string; ImageID?: string; Created: number; Labels?: Record<string, string> | null }[]
    >('GET', `/containers/json?all=1&size=1&filters=${encodeURIComponent(listFilters)}`);
    if (status !== 200) return send(res, status, json);
    const deleted: string[] = [];
    let reclaimed = 0;
    for (const c of await this.ownedContainers(json)) {
      if (labelNot.some((l) => labelMatches(c.Labels, l))) continue;
      if (cutoff !== undefined && c.Created >= cutoff) continue;
      const r = await this.upstreamJson('DELETE', `/containers/${c.Id}?v=1`);
      if (r.status < 300) {
        deleted.push(c.Id);
        this.state.containers.delete(c.Id);
        await this.pins.detach(c.Id);
        reclaimed += (c as { SizeRw?: number }).SizeRw ?? 0;
      }
    }
    send(res, 200, { ContainersDeleted: deleted.length ? deleted : null, SpaceReclaimed: reclaimed });
  }

  // ---------------------------------------------------------------- events and df

  private async events(res: ServerResponse, target: string): Promise<void> {
    const up = await this.upstream('GET', target);
    if (up.status !== 200) {
      res.writeHead(up.status, up.headers);
      await relay(up.body, res);
      return;
    }
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.flushHeaders();
    const lines = up.body.pipe(new JsonLines());
    // The client hanging up ends the stream both ways: the upstream request and the line reader
    // (pipe does not pass a destroy on, and a reader left waiting would hold the guard's close).
    res.on('close', () => {
      up.body.destroy();
      lines.destroy();
    });
    up.body.on('error', (e) => lines.destroy(e));
    try {
      for await (const ev of lines) {
        if (res.destroyed) break;
        if ((await this.visibleEvent(ev as DockerEvent)) && !res.write(`${JSON.stringify(ev)}\n`))
          await new Promise((r) => {
            res.once('drain', r);
            res.once('close', r);
          });
      }
    } catch (err) {
      if (res.destroyed) return; // the client went away: nothing to answer
      throw err;
    }
    res.end();
  }

  async visibleEvent(ev: DockerEvent): Promise<boolean> {
    const attrs = ev.Actor?.Attributes ?? {};
    const actorId = ev.Actor?.ID ?? ev.id ?? '';
    switch (ev.Type) {
      case 'container': {
        // Event attributes carry the container's labels, and its image by the name it was run
        // with, which may name another image by now: the container's own image ID decides.
        if (!this.state.owns(attrs)) return false;
        if (this.state.containers.has(actorId)) return true;
        const c = await this.upstreamJson<ContainerJson>(
          'GET',
          `/containers/${encodeURIComponent(actorId)}/json`,
        ).catch(() => undefined);
        if (c?.status !== 200) return false;
        return this.ownsContainer(c.json.Id, c.json.Config?.Labels, c.json.Image).catch(() => false);
      }
      case 'network':
        return this.state.networks.has(actorId);
      case 'volume': {
        const since = this.state.volumeSince.get(actorId);
        return this.state.volumes.has(actorId) && (since === undefined || eventMs(ev) >= since);
      }
      case 'image': {
        if (this.state.builtImages.has(actorId)) return true;
        // By a tag of the tenant's: one it held at the time, on the image it set it to.
        const name = attrs.name ?? actorId;
        if (!this.state.ownsTag(name)) return false;
        const since = this.state.tagSince.get(normalizeTag(name));
        if (since !== undefined && eventMs(ev) < since) return false;
        return !this.state.settled(name) || this.state.ownsTagAt(name, actorId);
      }
      default:
        return false;
    }
  }

  /** The tenant's containers as a list answer has them (with their state). */
  private async ownedContainerList(): Promise<DfContainer[]> {
    const { status, json } = await this.upstreamJson<DfContainer[]>('GET', this.tenantContainers);
    return status === 200 && Array.isArray(json) ? this.ownedContainers(json) : [];
  }

  /** `docker info`: the daemon's, with the container counts of the tenant's containers only. */
  private async info(res: ServerResponse, target: string): Promise<void> {
    const a = await this.upstreamBytes('GET', target);
    if (a.status !== 200) return sendJsonBytes(res, a.status, a.raw, a.headers, this.hide);
    const info = parseAnswer(a.raw) as Record<string, unknown>;
    const own = await this.ownedContainerList();
    const count = (state: string) => own.filter((c) => c.State === state).length;
    info.Containers = own.length;
    info.ContainersRunning = count('running');
    info.ContainersPaused = count('paused');
    info.ContainersStopped = own.length - count('running') - count('paused');
    sendJsonBytes(res, 200, Buffer.from(JSON.stringify(info)), a.headers);
  }

  private async df(res: ServerResponse, target: string): Promise<void> {
    const { status, json } = await this.upstreamJson<DfResult>('GET', target);
    if (status !== 200) return send(res, status, json);
    const containers = await this.ownedContainers(json.Containers ?? []);
    const volumes = (json.Volumes ?? []).filter((vol) => this.state.owns(vol.Labels));
    const used = new Set(containers.map((c) => c.ImageID));
    const imgs = (json.Images ?? [])
      .filter(
        (i) =>
          used.has(i.Id) ||
          this.state.builtImages.has(i.Id) ||
          (i.RepoTags ?? []).some((t) => this.state.ownsTag(t)),
      )
      // How many containers use each image: the tenant's only.
      .map((i) => ({ ...i, Containers: containers.filter((c) => c.ImageID === i.Id).length }));
    send(res, 200, {
      LayersSize: imgs.reduce((a, i) => a + (i.SharedSize > 0 ? 0 : i.Size), 0),
      Images: imgs,
      Containers: containers,
      Volumes: volumes,
      BuildCache: [],
    });
  }

  // ---------------------------------------------------------------- images

  /** Validates repo/tag query params naming a new tag; returns the normalised tag (or undefined). */
  claimTag(repo: string | null, tag: string | null): string | undefined {
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
  private async holdBases(bases: Iterable<string>, hold: BuildHold): Promise<void> {
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
  private holdImage(id: string | undefined, hold: BuildHold): void {
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
    const { status, json } = await this.upstreamJson<{ Id?: string }>(
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
  private async inspectImage(ref: string): Promise<ImageFacts | undefined> {
    const { status, json } = await this.upstreamJson<ImageFacts & { message?: string }>(
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
    await this.holdBases(bases, hold);
    const inspect = (b: string) =>
      this.upstreamJson<PlatformFacts & { Id?: string; Config?: { OnBuild?: string[] | null } | null }>(
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
          await this.pullBase(
            b,
            registryConfig,
            p,
            found.status === 200 ? found.json.Id : undefined,
            hold,
          ).catch(() => undefined);
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
        this.holdImage(found.json.Id, hold);
        (hold.pinned ??= new Map()).set(b, found.json.Id);
        refusals.push(...triggerRefusals(b, found.json.Config?.OnBuild ?? []));
        if ((await this.foreignLocalTag(b, found.json.Id ?? '')) !== undefined)
          refusals.push(
            `base image ${b}: another tenant set this name to an image of its own; name the base by digest, or by a tag of yours`,
          );
      }
    }
    if (refusals.length === 0) {
      // Every image the engine has as the build starts to run (dockerd runs no step before the
      // context's end goes): what the build reports beyond these is what it made. Taken now, not
      // when the request came: the tenant sets how long its upload takes.
      hold.had = await this.imageIds();
      return undefined;
    }
    const more = refusals.length > 1 ? ` (and ${refusals.length - 1} more)` : '';
    return new Refusal('build-options', `${refusals[0] ?? ''}${more}`);
  }

  /**
   * Pulls a build's base image the way the build itself would (its tag, or `latest`, or its
   * digest), with the build's credentials for that registry from its X-Registry-Config. Like the
   * build's own pull, it claims nothing for the tenant.
   */
  private async pullBase(
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
    const up = await this.upstream('POST', `/images/create?${qs.toString()}`, { headers });
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
  private async tagMade(tag: string, imageId: string): Promise<string | undefined> {
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
      const r = await this.upstreamBytes(
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
    return this.turns.run(id, fn);
  }

  /** A delete of the image with this ID: after the guard's loads (see LOADS), then as onImage. */
  private onImageDelete<T>(id: string, fn: () => Promise<T>): Promise<T> {
    return this.turns.run(LOADS, () => this.turns.run(id, fn));
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

  private async build(
    req: IncomingMessage,
    res: ServerResponse,
    target: string,
    query: URLSearchParams,
  ): Promise<void> {
    const hold: BuildHold = { releases: [], closed: false };
    const qs = onRequest(() => checkBuild(query, this.cfg.labels, this.cfg.policy, this.networkName));
    // By ID: a name can be another's too (dockerd allows duplicate network names).
    if (qs.get('networkmode') === this.networkName) qs.set('networkmode', await this.ensureNetwork());
    // Intermediate containers of the legacy builder carry no labels: always remove them, even on failure.
    qs.set('rm', '1');
    qs.set('forcerm', '1');
    // `q` read as dockerd's BoolValue reads it. dockerd is never asked to be quiet: a quiet build
    // reports only its last image, and the earlier stages' images would be nobody's. The guard
    // holds the output back instead and answers as dockerd would (see buildHeld).
    const quiet = goBool(qs.get('q'));
    qs.delete('q');
    const tags = qs.getAll('t').map((t) => normalizeTag(plainRef(t)));
    for (const t of tags) await this.assertTagWritable(t);
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
    const gate = this.cfg.policy.allow.has('build-options')
      ? undefined
      : new ContextGate(dockerfilePaths(qs.get('dockerfile')), (versions) =>
          this.contextRefusal(
            versions,
            firstHeader(req.headers['x-registry-config']),
            qs.get('buildargs'),
            hold,
            pulls,
          ),
        );
    const release = (): void => {
      hold.closed = true;
      for (const r of hold.releases.splice(0)) r();
    };
    // A build's steps run in containers of their own: under a container limit, a build in flight
    // counts as one (counted with the creates, one at a time).
    const max = this.cfg.policy.limits.maxContainers;
    const counted = max !== undefined && !this.cfg.policy.allow.has('limits');
    if (counted)
      await this.oneCreateAtATime(async () => {
        const count = (await this.ownedContainerCount()) + this.buildsInFlight;
        if (count >= max)
          throw new Refusal(
            'limits',
            `the tenant already has ${count} containers and builds in flight (limit ${max}); a build runs its steps in containers`,
          );
        this.buildsInFlight++;
      });
    try {
      // A build without the gate (a trusted tenant's) compares with the images the engine has now.
      const had = gate ? undefined : await this.imageIds();
      await this.buildHeld(req, res, target, qs, { had, hold, quiet, tags, gate, release });
    } finally {
      release();
      if (counted) this.buildsInFlight--;
    }
  }

  /** The tenant's builds running now, where the policy limits containers (see build). */
  private buildsInFlight = 0;

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
      up = await this.upstream('POST', `${target}?${qs.toString()}`, {
        body: gate ?? req,
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
        if ((await this.imageIdOf(name).catch(() => undefined)) === id) continue;
        moved = name;
        break;
      }
      if (moved !== undefined) {
        last = undefined;
        const message = `berth: build-options: the base image ${moved} changed while the build ran; berth counts nothing the build made as the tenant's and sets no tag (build again)`;
        this.audit('POST', '/build', 'deny', { rule: 'build-options', status: 200, message });
        if (!res.destroyed) res.write(`${JSON.stringify({ error: message, errorDetail: { message } })}\n`);
      } else if (had !== undefined) {
        for (const idv of reported) {
          const f = await this.inspectImage(idv);
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
        await this.removeIfUnnamed(idv);
        const message = `berth: ownership: the built image carries the label ${LABEL_TENANT}=${owner} (from its Dockerfile or its base image); an image built through the guard may not name an owner, so it was removed`;
        this.audit('POST', '/build', 'deny', { rule: 'ownership', status: 200, message });
        if (!res.destroyed) res.write(`${JSON.stringify({ error: message, errorDetail: { message } })}\n`);
        failed = true;
        break;
      }
      // The tags, on the image the build ended with (a failed build: none).
      if (!failed && last !== undefined) {
        const built = last;
        for (const t of tags) {
          const message = await this.tagMade(t, built);
          if (res.destroyed) continue;
          if (message !== undefined) {
            this.audit('POST', '/build', 'deny', { rule: 'image-tag', status: 200, message });
            res.write(`${JSON.stringify({ error: message, errorDetail: { message } })}\n`);
          } else if (!quiet) res.write(`${JSON.stringify({ stream: `Successfully tagged ${t}\n` })}\n`);
        }
      }
    } finally {
      res.end();
    }
  }

  /**
   * Removes an image the tenant made once nobody names it (a cached build or a pull may have given
   * the tenant an image another tenant or the host tagged too). Unforced: dockerd keeps an image a
   * container still uses.
   */
  private async removeIfUnnamed(idv: string): Promise<void> {
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
    const r = await this.upstreamJson<{ Deleted?: string; Untagged?: string }[]>(
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
   * The step images of a build's stage image `f`: its parents, up to the first image the engine
   * had when the build began, are the tenant's (a shared cache hit ends the chain there: an image
   * that was on the engine is someone else's).
   */
  private async claimSteps(f: ImageFacts, had: ReadonlySet<string>): Promise<void> {
    let parent = f.Parent;
    for (let n = 0; n < 512 && parent && !had.has(parent) && !this.state.builtImages.has(parent); n++) {
      this.state.builtImages.add(parent);
      parent = (await this.inspectImage(parent))?.Parent;
    }
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

  private async imageCreate(
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
      await this.forward(req, res, 'POST', `${target}?${query.toString()}`, {
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
            this.audit('POST', '/images/create', 'deny', { rule: 'image-tag', status: 200, message });
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
  private async imageIds(): Promise<Set<string>> {
    const { status, json } = await this.upstreamJson<{ Id?: string }[]>('GET', '/images/json?all=1');
    if (status !== 200 || !Array.isArray(json)) throw new Error(`listing images: engine answered ${status}`);
    return new Set(json.map((i) => i.Id ?? ''));
  }

  /** The digest references of a repository on the engine now, each with its image ID. */
  private async digestRefs(repo: string): Promise<Map<string, string>> {
    const filters = encodeURIComponent(JSON.stringify({ reference: [repo] }));
    const { status, json } = await this.upstreamJson<{ Id: string; RepoDigests?: string[] | null }[]>(
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
      const r = await this.upstreamBytes('DELETE', `/images/${encodeURIComponent(tag)}${noPrune(query)}`);
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
    const aside = await this.upstreamBytes('POST', `/images/create?${qs.toString()}`, {
      body: EMPTY_TAR,
      headers: { 'content-type': 'application/x-tar' },
      evenStopped: true, // the cleanup's own untag
    });
    const failed = aside.raw.toString('utf8').includes('"error"');
    if (aside.status >= 300 || failed)
      throw new Error(`moving ${tag} aside to remove it: ${aside.raw.toString('utf8').trim()}`);
    // The tag is the empty image's only name: removing it removes that image too.
    const del = await this.upstreamJson<{ message?: string }>(
      'DELETE',
      `/images/${encodeURIComponent(tag)}?noprune=1`,
    );
    if (del.status >= 300) throw new Error(`removing ${tag}: ${del.json.message ?? del.status}`);
    this.state.tags.delete(tag);
    return { status: 200, raw: Buffer.from(JSON.stringify([{ Untagged: tag }])), headers: {} };
  }

  /**
   * Removes one of the tenant's networks at cleanup. The containers of the tenant's builds (RUN
   * steps, which carry no label) may still be on it while dockerd tears them down: the removal is
   * tried again for up to 10 s. Whether it went.
   */
  private async removeNetwork(nid: string): Promise<boolean> {
    for (let attempt = 0; attempt < 40; attempt++) {
      const r = await this.upstreamJson('DELETE', `/networks/${nid}`);
      if (r.status < 300 || r.status === 404) return r.status < 300;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    return false;
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
    const r = await this.upstreamBytes('DELETE', `/images/${encodeURIComponent(ref)}${noPrune(query)}`);
    if (r.status < 300) {
      this.state.digests.delete(normalizeTag(ref));
      if (lastName && (await this.inspectImage(f.Id)) === undefined) await this.ownImageGone(f);
    }
    return r;
  }

  /** The image a reference names; undefined only when the engine says there is none (404). */
  private async imageIdOf(ref: string): Promise<string | undefined> {
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
    const dist = await this.upstreamBytes('GET', `/distribution/${encodeURIComponent(tag)}/json`, {
      headers,
    });
    const digest = (() => {
      const d = (parseAnswer(dist.raw) as { Descriptor?: { digest?: unknown } } | undefined)?.Descriptor
        ?.digest;
      return dist.status === 200 && typeof d === 'string' && /^sha256:[0-9a-f]{64}$/.test(d) ? d : undefined;
    })();
    const fail = (message: string) => {
      this.audit('POST', '/images/create', 'deny', { rule: 'image-tag', status: 200, message });
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
    const up = await this.upstream('POST', `${target}?${qs.toString()}`, { headers });
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
  private async imageLoad(req: IncomingMessage, res: ServerResponse, target: string): Promise<void> {
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
      await this.turns.run(LOADS, async () => {
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
          up = await this.upstream('POST', target, {
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
    this.audit('POST', '/images/load', 'deny', { rule: 'ownership', status: 200, message });
    return { error: message, errorDetail: { message } };
  }

  private async imageDelete(
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
        const done = await this.forward(
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
      return sendJsonBytes(res, r.status, r.raw, r.headers, this.hide);
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
    sendJsonBytes(res, r.status, r.raw, r.headers, this.hide);
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

  private async imagePrune(res: ServerResponse): Promise<void> {
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

  // ---------------------------------------------------------------- hijacked connections

  async upgrade(req: IncomingMessage, client: Duplex, head: Buffer): Promise<void> {
    const method = (req.method ?? 'POST').toUpperCase();
    let normalized = '';
    try {
      const url = requestTarget(req.url);
      normalized = normalizePath(url.path);
      const m = matchRoute(method, normalized);
      if (!m || (m.route.id !== 'container.attach' && m.route.id !== 'exec.start')) {
        throw new Refusal('endpoint', `${method} ${normalized} cannot be upgraded`);
      }
      let body: Buffer = Buffer.alloc(0);
      let rest: Buffer = head;
      let target: string;
      let startedExec: string | undefined;
      if (m.route.id === 'exec.start') {
        const len = Number(req.headers['content-length'] ?? '0');
        if (len > MAX_JSON_BODY) throw new Refusal('body', 'body too large', 400);
        body = await readExactly(client, head, len);
        rest = Buffer.alloc(0);
        const eid = await this.resolveExec(m.params.id ?? '');
        body = Buffer.from(
          JSON.stringify(canonicalize(body.toString('utf8'), SCHEMAS['exec.start'], 'exec.start')),
        );
        target = buildPath(m.route, { id: eid }, m.apiVersion);
        startedExec = eid;
      } else {
        const { id: cid } = await this.resolveContainer(m.params.id ?? '');
        target =
          buildPath(m.route, { id: cid }, m.apiVersion) +
          (url.search === '' ? '' : `?${new URLSearchParams(url.search).toString()}`);
      }
      const upstream = await this.hijackUpstream(target, body);
      if (startedExec !== undefined) this.unstartedExecs.delete(startedExec);
      this.audit(method, m.path, 'allow', { status: 101 });
      client.write(
        `HTTP/1.1 101 UPGRADED\r\nContent-Type: ${upstream.contentType}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n`,
      );
      if (upstream.head.length) client.write(upstream.head);
      if (rest.length) upstream.socket.write(rest);
      splice(client, upstream.socket);
    } catch (err) {
      const { status, message, rule } =
        err instanceof Refusal
          ? { ...err.decision() }
          : err instanceof BodyError || err instanceof PathError
            ? { status: 400, message: `berth: malformed: ${err.message}`, rule: 'malformed' as RuleName }
            : { status: 502, message: `berth: upstream: ${errorMessage(err)}`, rule: undefined };
      this.audit(method, normalized, status === 502 ? 'error' : 'deny', { rule, status, message });
      const text = JSON.stringify({ message });
      client.end(
        `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`,
      );
    }
  }

  private hijackUpstream(
    target: string,
    body: Buffer,
  ): Promise<{ socket: Duplex; head: Buffer; contentType: string }> {
    const base = this.cfg.transport.requestOptions();
    return new Promise((resolve, reject) => {
      const req = this.cfg.transport.request({
        ...base,
        agent: false,
        method: 'POST',
        path: target,
        headers: {
          ...(base.headers as http.OutgoingHttpHeaders | undefined),
          Connection: 'Upgrade',
          Upgrade: 'tcp',
          'Content-Type': 'application/json',
          'Content-Length': body.length,
        },
      });
      req.on('error', reject);
      req.on('upgrade', (r, socket, head) =>
        resolve({
          socket,
          head,
          contentType: r.headers['content-type'] ?? 'application/vnd.docker.raw-stream',
        }),
      );
      req.on('response', (r) => {
        const chunks: Buffer[] = [];
        r.on('data', (c: Buffer) => chunks.push(c));
        r.on('end', () => {
          let msg = Buffer.concat(chunks).toString('utf8');
          try {
            msg = (JSON.parse(msg) as { message?: string }).message ?? msg;
          } catch {
            /* keep text */
          }
          const status = r.statusCode ?? 502;
          reject(status === 404 ? new NotFound(msg) : new UpstreamStatus(status, msg));
        });
      });
      req.end(body);
    });
  }

  // ---------------------------------------------------------------- cleanup

  /** Removes every container, network, volume and image tag the tenant owns. */
  async cleanup(): Promise<{ containers: number; networks: number; volumes: number; tags: number }> {
    // Claims whose image or name went meanwhile are not acted on (the host may have pulled the
    // same content again since). Where the engine's events cannot be read, the containers,
    // networks and volumes still go; the image claims, unverified, are left alone.
    const synced = await this.imageWatch.sync().then(
      () => true,
      () => false,
    );
    if (!synced) this.state.forgetImageClaims();
    const filters = encodeURIComponent(JSON.stringify({ label: [`${LABEL_TENANT}=${this.cfg.tenant}`] }));
    const counts = { containers: 0, networks: 0, volumes: 0, tags: 0 };
    for (const c of await this.ownedContainerList()) {
      const r = await this.upstreamJson('DELETE', `/containers/${c.Id}?force=1&v=1`);
      if (r.status < 300) counts.containers++;
      if (r.status < 300 || r.status === 404) await this.pins.detach(c.Id);
    }
    const ns = await this.upstreamJson<{ Id: string; Labels?: Record<string, string> | null }[]>(
      'GET',
      `/networks?filters=${filters}`,
    );
    for (const n of Array.isArray(ns.json) ? ns.json : []) {
      if (!this.state.owns(n.Labels)) continue;
      // The tenant's containers are gone: what is still attached is someone else's (the host's, or
      // another tenant's that joined before startChecked existed), and would keep the network.
      const attached = await this.upstreamJson<{ Containers?: Record<string, unknown> | null }>(
        'GET',
        `/networks/${n.Id}`,
      );
      for (const cid of Object.keys(attached.json.Containers ?? {}))
        await this.upstreamBytes('POST', `/networks/${n.Id}/disconnect`, {
          body: Buffer.from(JSON.stringify({ Container: cid, Force: true })),
          headers: { 'content-type': 'application/json' },
          evenStopped: true, // a removal, not a create
        }).catch(() => undefined);
      const r = await this.removeNetwork(n.Id);
      if (r) counts.networks++;
    }
    this.networkId = undefined;
    const vs = await this.upstreamJson<{
      Volumes?: { Name: string; Labels?: Record<string, string> | null }[] | null;
    }>('GET', `/volumes?filters=${filters}`);
    for (const vol of vs.json.Volumes ?? []) {
      if (!this.state.owns(vol.Labels)) continue;
      const r = await this.upstreamJson('DELETE', `/volumes/${encodeURIComponent(vol.Name)}?force=1`);
      if (r.status < 300) counts.volumes++;
    }
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
    return counts;
  }
}

class UpstreamStatus extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

interface ContainerJson {
  Id: string;
  Name: string;
  Created?: string;
  Image?: string;
  Config?: { Labels?: Record<string, string> | null; User?: string };
}

interface DockerEvent {
  Type?: string;
  id?: string;
  time?: number;
  timeNano?: number;
  Actor?: { ID?: string; Attributes?: Record<string, string> };
}

interface DfContainer {
  Id: string;
  ImageID: string;
  State?: string;
  Labels?: Record<string, string> | null;
}

interface DfResult {
  Images?: {
    Id: string;
    RepoTags?: string[] | null;
    Size: number;
    SharedSize: number;
    Containers?: number;
  }[];
  Containers?: DfContainer[];
  Volumes?: { Labels?: Record<string, string> | null }[];
}

/** How much of a quiet build's output the guard holds back (its end, where the error is). */
const QUIET_HELD_MAX = 1024 * 1024;
/** What the quiet builds of one guard hold together before each keeps only its last chunks. */
const QUIET_HELD_TOTAL = 32 * 1024 * 1024;
const QUIET_HELD_LOW = 64 * 1024;

/** dockerd's httputils.BoolValue: anything but "", 0, no, false and none (any case, trimmed) is true. */
function goBool(v: string | null): boolean {
  const s = (v ?? '').trim().toLowerCase();
  return !['', '0', 'no', 'false', 'none'].includes(s);
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

/** Go's FormValue semantics: the first value of each key wins; keep only that for single-valued keys. */
function firstWins(q: URLSearchParams): URLSearchParams {
  const out = new URLSearchParams();
  const multi = new Set(['t', 'names', 'changes']);
  for (const [k, v] of q) {
    if (multi.has(k)) out.append(k, v);
    else if (!out.has(k)) out.set(k, v);
  }
  return out;
}

/** Adds `label=io.berth.tenant=<t>` to a list/prune query's `filters`. */
/**
 * A request's `filters` as the JSON object it is ({} when absent), its form kept for re-encoding
 * (parseFilters reads the values); refused when it is not an object.
 */
export function filtersObject(query: URLSearchParams): Record<string, unknown> {
  const raw = query.get('filters');
  if (!raw) return {};
  try {
    const parsed: unknown = JSON.parse(raw);
    if (isRecord(parsed)) return parsed;
  } catch {
    // refused below
  }
  throw new Refusal('malformed', 'filters is not a JSON object', 400);
}

/**
 * The query with the tenant's label added to its filters (`filters`: the query's own, parsed
 * already by a caller that read them).
 */
export function withTenantFilter(
  query: URLSearchParams,
  tenant: string,
  parsed: Record<string, unknown> = filtersObject(query),
): URLSearchParams {
  const out = new URLSearchParams(query);
  const filters = { ...parsed };
  const label = filters.label;
  const want = `${LABEL_TENANT}=${tenant}`;
  // dockerd reads either {"key": {"value": true}} or the legacy {"key": ["value"]}, not a mix.
  const mapForm = Object.values(filters).some(
    (v) => v !== null && typeof v === 'object' && !Array.isArray(v),
  );
  if (Array.isArray(label)) filters.label = [...(label as unknown[]), want];
  else if (label && typeof label === 'object')
    filters.label = { ...(label as Record<string, boolean>), [want]: true };
  else filters.label = mapForm ? { [want]: true } : [want];
  out.set('filters', JSON.stringify(filters));
  return out;
}

interface Refs {
  containers: string[];
  networks: string[];
  volumes: string[];
  /** Bind sources: `create` for `Binds` (dockerd makes a missing folder), not for `Mounts`. */
  binds: { source: string; create: boolean }[];
  needsTenantNetwork: boolean;
}

/** What a create body refers to, so the proxy can resolve it once before the pure rules run. */
export function collectRefs(body: Record<string, unknown>): Refs {
  const hc = (body.HostConfig ?? {}) as Record<string, unknown>;
  const strs = (v: unknown) => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);
  const containers = new Set<string>();
  const networks = new Set<string>();
  const volumes = new Set<string>();
  for (const f of ['PidMode', 'IpcMode', 'NetworkMode']) {
    const v = typeof hc[f] === 'string' ? hc[f] : '';
    if (v.startsWith('container:')) containers.add(v.slice('container:'.length));
  }
  for (const v of strs(hc.VolumesFrom)) containers.add(v.split(':')[0] ?? '');
  for (const l of strs(hc.Links)) containers.add(l.split(':')[0] ?? '');
  const mode = typeof hc.NetworkMode === 'string' ? hc.NetworkMode : '';
  networks.add(mode);
  const eps = ((body.NetworkingConfig ?? {}) as Record<string, unknown>).EndpointsConfig;
  if (eps && typeof eps === 'object') {
    for (const [name, ep] of Object.entries(eps as Record<string, unknown>)) {
      networks.add(name);
      for (const l of strs((ep as Record<string, unknown>).Links)) containers.add(l.split(':')[0] ?? '');
    }
  }
  const binds: { source: string; create: boolean }[] = [];
  for (const b of strs(hc.Binds)) {
    const [src = '', ...rest] = b.split(':');
    if (rest.length > 0 && !src.startsWith('/') && src !== '') volumes.add(src);
    if (rest.length > 0 && src.startsWith('/')) binds.push({ source: src, create: true });
  }
  if (Array.isArray(hc.Mounts)) {
    for (const mnt of hc.Mounts as Record<string, unknown>[]) {
      if (mnt.Type === 'volume' && typeof mnt.Source === 'string' && mnt.Source !== '')
        volumes.add(mnt.Source);
      if (mnt.Type === 'bind' && typeof mnt.Source === 'string')
        binds.push({ source: mnt.Source, create: false });
    }
  }
  const needsTenantNetwork =
    mode === '' ||
    mode === 'default' ||
    mode === 'bridge' ||
    networks.has('bridge') ||
    networks.has('default');
  return {
    containers: [...containers].map((c) => c.replace(/^\//, '')),
    networks: [...networks],
    volumes: [...volumes],
    binds,
    needsTenantNetwork,
  };
}

function readExactly(socket: Duplex, head: Buffer, n: number): Promise<Buffer> {
  if (head.length >= n) return Promise.resolve(head.subarray(0, n));
  return new Promise((resolve, reject) => {
    let buf = head;
    const done = () => {
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
    };
    const onData = (c: Buffer) => {
      buf = Buffer.concat([buf, c]);
      if (buf.length >= n) {
        done();
        socket.pause();
        if (buf.length > n) socket.unshift(buf.subarray(n));
        resolve(buf.subarray(0, n));
      }
    };
    const onError = (err: Error) => {
      done();
      reject(err);
    };
    // A client that goes away (or half-closes) before its body is whole: the request ends here,
    // instead of waiting forever (and holding the guard's close with it).
    const onEnd = () => {
      done();
      reject(new BodyError(`the request body ended after ${buf.length} of ${n} bytes`));
    };
    socket.on('data', onData);
    socket.once('error', onError);
    socket.once('end', onEnd);
    socket.once('close', onEnd);
  });
}

/** Splices two sockets with half-close in both directions. */
export function splice(a: Duplex, b: Duplex): void {
  const pipeHalf = (from: Duplex, to: Duplex) => {
    from.on('data', (c: Buffer) => {
      if (to.destroyed || to.writableEnded) return; // nowhere to go; the close handlers end it all
      if (!to.write(c)) {
        from.pause();
        to.once('drain', () => from.resume());
      }
    });
    // Half-close passes through: stdin EOF reaches the container while its output still flows.
    from.on('end', () => {
      if (!to.destroyed && !to.writableEnded) to.end();
    });
  };
  pipeHalf(a, b);
  pipeHalf(b, a);
  const kill = () => {
    a.destroy();
    b.destroy();
  };
  a.on('error', kill);
  b.on('error', kill);
  // The client gone altogether: nothing the engine sends can reach anyone. Close the engine side
  // once what the client sent is written; a half-close would not do — dockerd does not read an
  // attach without stdin, so it would keep the stream (and a file descriptor) for as long as the
  // container runs.
  a.on('close', () => finishThenDestroy(b));
  // The engine closed: the client gets the rest of the output, then an end.
  b.on('close', () => {
    if (!a.destroyed && !a.writableEnded) a.end();
  });
  a.resume();
  b.resume();
}

/** Ends a stream, lets what is queued be written, then closes it (at once if nothing is queued). */
function finishThenDestroy(s: Duplex): void {
  if (s.destroyed) return;
  if (s.writableLength === 0) {
    s.destroy();
    return;
  }
  if (!s.writableEnded) s.end();
  s.once('finish', () => s.destroy());
  setTimeout(() => s.destroy(), 5_000).unref();
}

function firstHeader(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
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

/** A stopped build context's reason as the answer: a refusal as it is, anything else malformed. */
function contextRefusal(err: Error): Refusal | BodyError {
  return err instanceof Refusal ? err : new BodyError(err.message);
}

/** The message a refusal or a malformed request answers with. */
function answerMessage(err: Refusal | BodyError): string {
  return err instanceof Refusal ? err.message : `berth: malformed: ${err.message}`;
}

/**
 * Runs the pure rules on a request. They throw Refusals for what they refuse; anything else they
 * throw (a field of a type they did not expect: `"Mounts":[null]`) is the request's shape, answered
 * 400 malformed, not a 502 that would blame the engine.
 */
function onRequest<T>(rules: () => T): T {
  try {
    return rules();
  } catch (e) {
    if (e instanceof Refusal || e instanceof BodyError || e instanceof PathError) throw e;
    throw new BodyError(`the request has an unexpected shape (${errorMessage(e)})`);
  }
}

/** When an event happened (ms). */
function eventMs(ev: DockerEvent): number {
  return ev.timeNano !== undefined ? ev.timeNano / 1e6 : (ev.time ?? 0) * 1000;
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

/** The request target as Go's ParseRequestURI reads it (`//` starts a path, not a host). */
function requestTarget(raw: string | undefined): { path: string; search: string } {
  const t = splitTarget(raw ?? '/');
  if (!t) throw new PathError(`request target ${JSON.stringify(raw ?? '')} is not a path`);
  return t;
}

/** Docker's filters query: {"key": ["v", …]} or the older {"key": {"v": true}}. */
export function parseFilters(raw: string | null): Map<string, string[]> {
  const out = new Map<string, string[]>();
  if (raw === null || raw === '') return out;
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new BodyError('filters is not JSON');
  }
  if (!isRecord(v)) throw new BodyError('filters is not a JSON object');
  for (const [k, val] of Object.entries(v)) {
    if (Array.isArray(val)) out.set(k, val.map(String));
    // The older form, {"label": {"a=b": true}}: dockerd's filters take every key, whatever its
    // value (red-team pass 22: a false one was left out here, and a prune took more than asked).
    else if (isRecord(val)) out.set(k, Object.keys(val));
    else throw new BodyError(`filter ${k} is not a list`);
  }
  return out;
}

/** Whether labels match a `key` or `key=value` filter. */
export function labelMatches(labels: Record<string, string> | null | undefined, filter: string): boolean {
  const i = filter.indexOf('=');
  if (i < 0) return labels?.[filter] !== undefined;
  return labels?.[filter.slice(0, i)] === filter.slice(i + 1);
}

/** An `until` filter value (Unix seconds, RFC 3339, or a Go duration like 10m) as Unix seconds. */
export function untilSeconds(v: string, now = Date.now()): number {
  if (/^\d+(\.\d+)?$/.test(v)) return Number(v);
  const d = /^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)$/.exec(v);
  if (d) {
    const unit = { ns: 1e-9, us: 1e-6, µs: 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600 }[d[2] as 'ns'];
    return now / 1000 - Number(d[1]) * unit;
  }
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new BodyError(`until ${v} is not a time`);
  return t / 1000;
}

/** A tag name the guard and dockerd read alike, or a refusal (see ambiguousRef). */
function plainRef(ref: string): string {
  if (ambiguousRef(ref))
    throw new Refusal(
      'image-tag',
      `the name ${ref} is ambiguous: dockerd shows it as ${normalizeTag(ref)}, which reads back as another image; choose a name whose first part is not a registry address`,
    );
  return ref;
}

/** A bind source's key among a create's resolved binds (`Binds` and `Mounts` resolve differently). */
const bindKey = (source: string, create: boolean): string => `${create ? 'B' : 'M'}${source}`;

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

/** What a build holds while it runs (its base names and images), released once, when it ended. */
interface BuildHold {
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
