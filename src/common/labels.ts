/** Labels berth puts on everything it creates on an engine, so ownership and cleanup never guess. */
export const LABEL_PREFIX = 'io.berth.';
/** The guard tenant that owns an object. */
export const LABEL_TENANT = 'io.berth.tenant';
/** The pipeline run an object belongs to. */
export const LABEL_RUN = 'io.berth.run';
/** The job (within a run) an object belongs to. */
export const LABEL_JOB = 'io.berth.job';
/** What berth component made the object: guard-network, dind, job, service, image-build, test … */
export const LABEL_ROLE = 'io.berth.role';
/** The dind sidecar name. */
export const LABEL_DIND = 'io.berth.dind';
/** The cache key of a dind cache volume. */
export const LABEL_DIND_CACHE = 'io.berth.dind.cache';
/** Process id and host of the runner that owns a run, for the reaper. */
export const LABEL_OWNER_PID = 'io.berth.owner.pid';
export const LABEL_OWNER_HOST = 'io.berth.owner.host';
/** Set on objects a test creates, with the test session's id, so the leak check finds them. */
export const LABEL_TEST_SESSION = 'io.berth.test-session';
/** The local image namespace built by `berth images build-local`. */
export const LOCAL_IMAGE_PREFIX = 'berth-local/';

/**
 * The guard tenant named by an object's labels, or undefined when it names none (absent or
 * empty). Everything a tenant creates through the guard carries a non-empty tenant label that it
 * cannot override; berth's own host-side objects (dind sidecars, their cache volumes and locks,
 * bench objects) never do. Host-side code that finds objects by name or label must not act on one
 * that names a tenant as if it were its own.
 */
export function tenantOf(labels: Record<string, string> | null | undefined): string | undefined {
  const t = labels?.[LABEL_TENANT];
  return t === undefined || t === '' ? undefined : t;
}
