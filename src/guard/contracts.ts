/**
 * Contracts inside the guard subsystem, shared by its two halves:
 *  - the pure half (request.ts, routes.ts, canonical.ts, policy/*.ts): parses and normalises a
 *    request the way dockerd would read it, and decides on it without touching a daemon;
 *  - the proxy half (server.ts, proxy.ts, core.ts, images.ts, build.ts, ownership.ts, cleanup.ts,
 *    guard.ts): HTTP server, upstream forwarding with backpressure, hijacked streams, ownership
 *    state, name/ID resolution, list and event filtering, cleanup.
 * Policy decisions are pure functions over a ParsedRequest plus facts the proxy resolved upstream.
 */
import type { IncomingHttpHeaders } from 'node:http';

/** The name of a rule, as it appears in refusals (`berth: <rule>: <why>`), audit lines and policy files. */
export type RuleName =
  | 'endpoint'
  | 'privileged'
  | 'capabilities'
  | 'devices'
  | 'namespaces'
  | 'security-opt'
  | 'masked-paths'
  | 'cgroup-parent'
  | 'runtime'
  | 'log-driver'
  | 'volume-driver'
  | 'sysctls'
  | 'volumes-from'
  | 'links'
  | 'ports'
  | 'binds'
  | 'volume-options'
  | 'network-driver'
  | 'network-ipam'
  | 'resources'
  | 'build-options'
  | 'image-import'
  | 'ownership'
  | 'image-tag'
  | 'registries'
  | 'limits'
  | 'body'
  | 'malformed';

/** A route of the Docker Engine API the guard knows; anything else is refused. */
export interface RouteMatch {
  /** Stable route id, e.g. `container.create`, `container.inspect`, `exec.start`, `image.build`. */
  readonly id: string;
  /** Path parameters, decoded: `{ id: 'abc' }`, `{ name: 'busybox:latest' }`. */
  readonly params: Readonly<Record<string, string>>;
}

export interface ParsedRequest {
  /** Upper-case method. */
  readonly method: string;
  /** The request target as received. */
  readonly rawUrl: string;
  /** The path dockerd routes on: percent-decoded, dot segments resolved, `//` collapsed, no version prefix. */
  readonly path: string;
  /** `1.41` for `/v1.41/...`, undefined when unversioned. */
  readonly apiVersion: string | undefined;
  /** Query parameters, with form-encoded body values merged in where dockerd reads them (form wins). */
  readonly query: URLSearchParams;
  readonly headers: IncomingHttpHeaders;
  /** undefined when no known route matches (the request is refused with rule `endpoint`). */
  readonly route: RouteMatch | undefined;
  /**
   * For JSON endpoints: the body decoded as dockerd would (case-insensitive keys, Unicode folding,
   * last duplicate wins) into the endpoint's known schema, canonical key names, unknown keys dropped.
   * The proxy forwards only a re-encoding of this value, never the received bytes.
   */
  readonly body: unknown;
}

/**
 * The answer of the policy. An allowed request may be rewritten: `body` and `query`, when present,
 * replace what the proxy forwards (labels added, bind sources translated, the tenant network
 * defaulted, limits applied). A refusal is answered as `{"message": "berth: <rule>: <why>"}`.
 */
export type Decision =
  | { readonly allow: true; readonly body?: unknown; readonly query?: URLSearchParams }
  | {
      readonly allow: false;
      readonly status: 400 | 403 | 404 | 409;
      readonly rule: RuleName;
      readonly message: string;
    };

/** What a referenced object turned out to be, resolved once upstream by the proxy. */
export interface ResolvedRef {
  /** Full ID upstream; undefined when it does not exist (or is invisible to the tenant). */
  readonly id: string | undefined;
  /** Whether the tenant owns it. */
  readonly owned: boolean;
  /** The object's name upstream (containers: without the leading slash). */
  readonly name?: string | undefined;
}

/**
 * Facts the proxy gathered upstream (or on the host filesystem) before the pure decision, keyed by
 * the reference exactly as it appears in the request. The pure half says what it needs via
 * `references(req)`; the proxy resolves each and passes them here.
 */
export interface Facts {
  readonly containers: ReadonlyMap<string, ResolvedRef>;
  readonly networks: ReadonlyMap<string, ResolvedRef>;
  readonly volumes: ReadonlyMap<string, ResolvedRef>;
  /** Bind source (job path as written) -> the path to forward (map root or pin, see pin.ts), or undefined if outside every map. */
  readonly binds: ReadonlyMap<string, string | undefined>;
  /** Number of containers the tenant owns now (for the container-count limit). */
  readonly containerCount: number;
}

/** The tenant a decision is made for. */
export interface TenantContext {
  readonly tenant: string;
  /** Labels to put on everything the tenant creates (always includes io.berth.tenant). */
  readonly labels: Readonly<Record<string, string>>;
  /** Name of the per-tenant network containers join when they name none. */
  readonly network: string;
  readonly maps: readonly PathMap[];
  readonly policy: Policy;
}

/** What the pure half asks the proxy to resolve for a request. */
export interface References {
  readonly containers: readonly string[];
  readonly networks: readonly string[];
  readonly volumes: readonly string[];
  readonly binds: readonly string[];
}

export interface PathMap {
  /** Path as the job sees it (inside the job container), absolute. */
  readonly jobPath: string;
  /** The same folder on the daemon's host, absolute. */
  readonly hostPath: string;
}

/** Per-tenant limits from the policy. */
export interface TenantLimits {
  readonly maxContainers?: number;
  /** Networks the tenant may create and have at once, besides its own network (default 8). */
  readonly maxNetworks?: number;
  readonly defaultMemoryBytes?: number;
  readonly maxMemoryBytes?: number;
  readonly defaultNanoCpus?: number;
  readonly maxNanoCpus?: number;
  readonly defaultPidsLimit?: number;
  readonly maxPidsLimit?: number;
}

/** The effective policy for a tenant: default-deny rules, some of which a policy file may loosen. */
export interface Policy {
  /** Rules this tenant is allowed to bypass (trusted tenants only). */
  readonly allow: ReadonlySet<RuleName>;
  /** Sysctls a container may set. */
  readonly safeSysctls: ReadonlySet<string>;
  readonly limits: TenantLimits;
  /**
   * The registries (`host[:port]`, lowercase; `docker.io` for Docker Hub) the tenant's pulls,
   * pushes, logins, searches and distribution inspects may name; undefined: any.
   */
  readonly registries?: ReadonlySet<string> | undefined;
}

/** One audit line (JSON), written for every decision. */
export interface AuditRecord {
  readonly time: string;
  readonly tenant: string;
  readonly method: string;
  readonly path: string;
  readonly decision: 'allow' | 'deny' | 'error';
  readonly rule?: RuleName | undefined;
  readonly status?: number | undefined;
  readonly message?: string | undefined;
  /**
   * `front`: answered by the fast front (front.ts), which writes its own lines; `upload`: a
   * build whose context the front carried (upload.ts), answered by the guard.
   */
  readonly via?: 'front' | 'upload' | undefined;
}
