/**
 * Contracts inside the guard subsystem, shared by its two halves:
 *  - the pure half (request.ts, routes.ts, canonical.ts, policy/*.ts): parses and normalises a
 *    request the way dockerd would read it, and decides on it without touching a daemon;
 *  - the proxy half (server.ts, proxy.ts, ownership.ts, cleanup.ts, guard.ts): HTTP server, upstream
 *    forwarding with backpressure, hijacked streams, ownership state, name/ID resolution, list and
 *    event filtering, cleanup.
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
  | 'binds'
  | 'volume-options'
  | 'build-options'
  | 'image-import'
  | 'ownership'
  | 'image-tag'
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

export type Decision =
  | { readonly allow: true; readonly rule?: undefined }
  | { readonly allow: false; readonly status: 400 | 403 | 404 | 409; readonly rule: RuleName; readonly message: string };

export interface PathMap {
  /** Path as the job sees it (inside the job container), absolute. */
  readonly jobPath: string;
  /** The same folder on the daemon's host, absolute. */
  readonly hostPath: string;
}

/** Per-tenant limits from the policy. */
export interface TenantLimits {
  readonly maxContainers?: number;
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
}
