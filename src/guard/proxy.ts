/**
 * The guard's proxy: an HTTP server in front of the engine for one tenant. Every request is
 * normalised and matched against the known routes, bodies are decoded as dockerd decodes them and
 * checked, references are resolved once upstream and forwarded as full IDs, and only canonical
 * bytes go upstream. Streams (logs, events, build contexts, save/load, archives) flow with
 * backpressure; attach/exec connections are spliced with half-close in both directions. The
 * tenant's image claims and the image endpoints are in images.ts, the build endpoint in build.ts:
 * they reach this class through ProxyCore (core.ts).
 */
import { TLSSocket } from 'node:tls';
import http from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex, Readable } from 'node:stream';
import { LABEL_ROLE, LABEL_TENANT, errorMessage } from '../common/index.js';
import { JsonLines, readAll } from '../engine/index.js';
import type { AuditRecord, RuleName } from './contracts.js';
import { BodyError, SCHEMAS, canonicalize, isRecord } from './canonical.js';
import type { SchemaRoute } from './canonical.js';
import {
  TenantState,
  leadingContainerId,
  listedContainerIds,
  normalizeTag,
  tenantNetworkName,
  createdNanos,
  hideForeignContainers,
} from './ownership.js';
import {
  Refusal,
  checkContainerCreate,
  checkImageRegistry,
  checkRegistry,
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
import { TagRecords, byIdOrDigest } from './tagrecords.js';
import { SharedTurns, Turns } from './turns.js';
import { PathError, buildPath, matchRoute, normalizePath, splitTarget, splitVersion } from './routes.js';
import type { Matched } from './routes.js';
import {
  NotFound,
  answerHeaders,
  goBool,
  hidden,
  onRequest,
  parseAnswer,
  querySuffix,
  send,
  sendJsonBytes,
} from './core.js';
import type { ForwardOptions, JsonAnswer, ProxyConfig, ProxyCore, SmallAnswer, Upstream } from './core.js';
import { ImageRoutes } from './images.js';
import { BuildRoutes } from './build.js';
import { UploadChannels } from './upload.js';
import type { UploadLink } from './upload.js';

export type { ProxyConfig } from './core.js';
export { platformMatches } from './build.js';

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

/** The turns of a tenant's network creates and (under a container limit) container creates. */
const NETWORK_CREATES = 'network-creates';
const CONTAINER_CREATES = 'container-creates';

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
/**
 * Downloads (export, archive get, save, logs) one guard relays at once. Each holds an engine
 * connection, relay buffers and, for an export or an archive, a `docker-tar` process of dockerd's
 * (about 17 MiB): red-team pass 28 took a host from 1.6 to 13 GB with 1000 exports never read.
 */
const MAX_DOWNLOADS = 32;
/** Downloads relayed byte for byte (see bulk()): large answers the guard never needs to read. */
const BULK: ReadonlySet<string> = new Set(['container.logs', 'container.export', 'container.archive.get']);

/** The networks dockerd names itself, looked up by name even where an endpoint has an ID. */
const PREDEFINED_NETWORKS: ReadonlySet<string> = new Set(['bridge', 'host', 'none', 'default']);

/** Sized upstream answers up to this many bytes are read whole and sent in one write. */
const SMALL_ANSWER = 256 * 1024;

export class GuardProxy implements ProxyCore {
  readonly state: TenantState;
  /** Upload channels the fast front handed over (upload.ts). */
  readonly uploads = new UploadChannels();
  /** The upload channel of a build request the front passed (claimed in handle). */
  private readonly uploadLinks = new WeakMap<IncomingMessage, UploadLink>();
  private networkId: Promise<string> | undefined;
  readonly networkName: string;

  readonly pins: BindPins;

  /** The engine's list of every container carrying the tenant label (ownership still to check). */
  private readonly tenantContainers: string;
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
          const f = await this.images.inspectImage(name).catch(() => null);
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

  /** The tenant's image claims and the image endpoints (images.ts). */
  private readonly images: ImageRoutes;
  /** The build endpoint (build.ts). */
  private readonly builds: BuildRoutes;

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
    // Once the state and the tag records exist: the routes share them.
    this.images = new ImageRoutes(this);
    this.builds = new BuildRoutes(this, this.images);
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
    this.uploads.close();
  }

  /** An engine's error message without the containers it names that are not the tenant's. */
  readonly hide = (message: string): string =>
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
    opts: {
      body?: Buffer | Readable;
      headers?: http.OutgoingHttpHeaders;
      evenStopped?: boolean;
      /** The connection to the engine to send it on (an upload channel), instead of a new one. */
      connection?: UploadLink | undefined;
    } = {},
  ): Promise<Upstream> {
    this.assertRunning(method, opts.evenStopped);
    const base: http.RequestOptions = { ...this.cfg.transport.requestOptions() };
    const link = opts.connection;
    if (link) {
      base.agent = undefined;
      base.createConnection = () => link;
    }
    return new Promise((resolve, reject) => {
      const headers: http.OutgoingHttpHeaders = {
        ...(base.headers as http.OutgoingHttpHeaders | undefined),
        ...opts.headers,
      };
      if (Buffer.isBuffer(opts.body)) headers['content-length'] = opts.body.length;
      const req = this.cfg.transport.request({ ...base, method, path, headers });
      req.on('error', reject);
      // Through an upload channel the head goes at once: the front passes the context only after it.
      if (link) req.flushHeaders();
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

  async upstreamJson<T = unknown>(method: string, path: string, body?: unknown): Promise<JsonAnswer<T>> {
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
    const f = await this.images.inspectImage(image);
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
      const foreign = await this.images.foreignLocalRefusal(facts.image.name, image);
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
    extra: { rule?: RuleName; status?: number; message?: string; via?: 'upload' | undefined } = {},
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
    let link: UploadLink | undefined;
    try {
      // A build whose context the front moves (upload.ts): the channel it names.
      const upload = req.headers['x-berth-upload'];
      if (upload !== undefined) {
        link = await this.uploads.claim(String(upload));
        if (!link) throw new BodyError('the request names an upload channel berth does not know');
        this.uploadLinks.set(req, link);
      }
      const url = requestTarget(req.url);
      normalized = normalizePath(url.path);
      const m = matchRoute(method, normalized);
      if (!m) {
        // dockerd routes /containers/{name:.*}/json: `docker inspect org/image` asks for a
        // container of that name first, and looks for the image on the 404 (no container name
        // has a slash).
        const slashed =
          method === 'GET' ? /^\/containers\/(.+\/.+)\/json$/.exec(splitVersion(normalized).rest) : null;
        if (slashed) throw new NotFound(`No such container: ${slashed[1] ?? ''}`);
        throw new Refusal('endpoint', `${method} ${normalized} is not an endpoint berth allows`);
      }
      let query = new URLSearchParams(url.search);
      let body: Buffer | undefined;
      const ct = contentType(req.headers);
      // Only a build's context gate reads an upload by the front's window: any other reading of
      // the body (form values) gets all of it.
      if (link && (m.route.id !== 'image.build' || ct === 'application/x-www-form-urlencoded')) link.stop();
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
      this.audit(method, m.path, 'allow', { status: res.statusCode, ...(link ? { via: 'upload' } : {}) });
    } catch (err) {
      if (err instanceof Refusal) {
        const d = err.decision();
        this.audit(method, normalized, 'deny', {
          rule: err.rule,
          status: d.status,
          message: d.message,
          ...(link ? { via: 'upload' } : {}),
        });
        send(res, d.status, { message: d.message });
      } else if (err instanceof BodyError || err instanceof PathError) {
        this.audit(method, normalized, 'deny', { rule: 'malformed', status: 400, message: err.message });
        send(res, 400, { message: `berth: malformed: ${err.message}` });
      } else {
        const message = failureMessage(err);
        this.audit(method, normalized, 'error', { status: 502, message });
        send(res, 502, { message: `berth: upstream: ${message}` });
      }
    } finally {
      link?.destroy();
    }
  }

  /** The upload channel of a build request the front passed, if it came that way. */
  uploadLink(req: IncomingMessage): UploadLink | undefined {
    return this.uploadLinks.get(req);
  }

  body(id: SchemaRoute, body: Buffer | undefined): Record<string, unknown> {
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
    const q = querySuffix;
    const p = this.cfg.policy;

    switch (id) {
      case 'image.get':
      case 'image.get-all':
        return this.download(req, res, path() + q(query));
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
      case 'image.push':
        return this.images.imagePush(req, res, m, query);
      case 'auth': {
        const login = this.body('auth', body);
        const server = typeof login.serveraddress === 'string' ? login.serveraddress : '';
        checkRegistry(p, `login to ${server === '' ? 'Docker Hub' : server}`, loginRegistry(server));
        return this.forwardJson(req, res, 'POST', path(), login);
      }
      case 'system.events':
        return this.events(req, res, path() + q(query));
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
        return this.images.imagePrune(res);
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
        return this.builds.build(req, res, path(), query);
      case 'image.create':
        return this.images.imageCreate(req, res, path(), query);
      case 'image.load':
        return this.images.imageLoad(req, res, path() + q(query));
      case 'image.commit':
        return this.images.imageCommit(res, m, query, body);
      case 'image.tag':
        return this.images.imageTag(req, res, m, query);
      case 'image.delete':
        return this.images.imageDelete(req, res, m, query);
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
            if (nid === (await this.networkId?.catch(() => undefined))) await this.forgetTenantNetwork();
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
            return this.download(req, res, path({ id: cid }) + q(query));
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
    opts: ForwardOptions = {},
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

  /** Downloads relayed now, followed logs aside (at most MAX_DOWNLOADS unless `limits` is allowed). */
  private downloading = 0;

  private async download(req: IncomingMessage, res: ServerResponse, target: string): Promise<void> {
    if (this.downloading >= MAX_DOWNLOADS && !this.cfg.policy.allow.has('limits'))
      throw new Refusal(
        'limits',
        `the tenant already has ${this.downloading} downloads in flight (limit ${MAX_DOWNLOADS}); each holds an engine connection, and an export or archive a process of dockerd's: read them, or wait for one to end`,
      );
    this.downloading++;
    try {
      await this.bulk(req, res, target, true);
    } finally {
      this.downloading--;
    }
  }

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
    // A request queued behind one whose answer closed the connection: nobody is there to answer.
    if (req.socket.destroyed) return;
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
      const image =
        ref === undefined ? undefined : await this.images.inspectImage(ref).catch(() => undefined);
      if (named !== undefined && image) await this.images.assertNotForeignLocal(named, image.Id);
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
  readonly turns = new Turns();

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
  async oneCreateAtATime<T>(create: () => Promise<T>): Promise<T> {
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
    const count = (await this.ownedContainerCount()) + this.builds.inFlight;
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
    // Known before the client hears of it: the fast front answers its first inspect too.
    if (typeof created === 'string') this.state.containers.add(created);
    sendSmall(res, 'POST', a, this.hide);
    if (typeof created === 'string') {
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

  async ownedContainerCount(): Promise<number> {
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
    const limit = Number(query.get('limit') ?? '');
    if (id === 'container.list' && Number.isInteger(limit) && limit > 0 && arr.length >= limit)
      return send(res, 200, await this.limitedList(target, qs, limit));
    send(res, 200, kept);
  }

  /**
   * A container list with `limit` whose answer held containers that are not the tenant's: those
   * used up part of the limit (the engine applies it before the guard filters), so the list is
   * asked again without it (and with `all`, which a limit implies) and cut to the limit once
   * filtered. The engine lists the newest first.
   */
  private async limitedList(target: string, qs: URLSearchParams, limit: number): Promise<unknown[]> {
    const again = new URLSearchParams(qs);
    again.delete('limit');
    again.set('all', '1');
    const { status, json } = await this.upstreamJson<unknown[]>('GET', `${target}?${again.toString()}`);
    if (status !== 200 || !Array.isArray(json))
      throw new Error(`cannot list the tenant's containers (engine answered ${status})`);
    const arr = json as { Id: string; ImageID?: string; Labels?: Record<string, string> | null }[];
    return (await this.ownedContainers(arr)).slice(0, limit);
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

  private async events(req: IncomingMessage, res: ServerResponse, target: string): Promise<void> {
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
    // A client that closes its side is gone (as for a followed log): a quiet stream would never
    // find out, and each held an engine connection and dockerd's subscription (red-team pass 31).
    const gone = (): void => {
      req.socket.destroy();
    };
    req.socket.once('end', gone);
    res.once('close', () => req.socket.off('end', gone));
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

  // ---------------------------------------------------------------- hijacked connections

  async upgrade(req: IncomingMessage, client: Duplex, head: Buffer): Promise<void> {
    const method = (req.method ?? 'POST').toUpperCase();
    let normalized = '';
    let startedExec: string | undefined;
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
      if (m.route.id === 'exec.start') {
        const len = Number(req.headers['content-length'] ?? '0');
        if (len > MAX_JSON_BODY) throw new Refusal('body', 'body too large', 400);
        body = await readExactly(client, head, len);
        // What came after the body in the same read is the exec's first stdin (red-team pass 28:
        // it was dropped); what came later was given back to the socket by readExactly.
        rest = head.length > len ? head.subarray(len) : Buffer.alloc(0);
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
      if (err instanceof UpstreamStatus && err.status < 500) {
        // dockerd answered without upgrading: a detached exec start (200, the exec started), or an
        // error (a paused container, 409). Its answer goes back as it is (others' IDs hidden).
        if (err.status < 300 && startedExec !== undefined) this.unstartedExecs.delete(startedExec);
        this.audit(method, normalized, 'allow', { status: err.status });
        if (err.status < 300) answerRaw(client, err.status, 'text/plain', err.message);
        else
          answerRaw(
            client,
            err.status,
            'application/json',
            JSON.stringify({ message: this.hide(err.message) }),
          );
        return;
      }
      const { status, message, rule } =
        err instanceof Refusal
          ? { ...err.decision() }
          : err instanceof BodyError || err instanceof PathError
            ? { status: 400, message: `berth: malformed: ${err.message}`, rule: 'malformed' as RuleName }
            : { status: 502, message: `berth: upstream: ${failureMessage(err)}`, rule: undefined };
      this.audit(method, normalized, status === 502 ? 'error' : 'deny', { rule, status, message });
      answerRaw(client, status, 'application/json', JSON.stringify({ message }));
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
            msg = ((JSON.parse(msg) as { message?: string }).message ?? msg).trim();
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
    await this.images.cleanup(counts);
    return counts;
  }
}

/** An error's message for a 502, cut short: some print whole objects (a Node socket, kilobytes). */
function failureMessage(err: unknown): string {
  const why = errorMessage(err);
  return why.length > 500 ? `${why.slice(0, 500)}…` : why;
}

/** A whole answer written on a raw (not yet upgraded) client connection, which then closes. */
function answerRaw(client: Duplex, status: number, contentType: string, text: string): void {
  client.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ''}\r\nContent-Type: ${contentType}\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`,
  );
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

/** When an event happened (ms). */
function eventMs(ev: DockerEvent): number {
  return ev.timeNano !== undefined ? ev.timeNano / 1e6 : (ev.time ?? 0) * 1000;
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

/** A bind source's key among a create's resolved binds (`Binds` and `Mounts` resolve differently). */
const bindKey = (source: string, create: boolean): string => `${create ? 'B' : 'M'}${source}`;
