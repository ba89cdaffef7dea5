/**
 * Bench leftovers. Everything the bench creates carries `io.berth.bench` and its owner's pid
 * and host; a bench killed mid-run (SIGKILL, a crash) leaves objects whose owner is gone, and the
 * next bench removes them before it measures anything. A bench interrupted by SIGINT/SIGTERM cleans
 * up itself (see `onInterrupt` in run.ts).
 *
 * Objects that name a guard tenant are skipped whatever other `io.berth.*` labels they carry (a
 * tenant can set any of them but its own tenant label), except what the bench's own guard
 * contender's tenant left behind a killed bench (`benchTenantLeft`).
 */
import {
  LABEL_OWNER_PID,
  LABEL_ROLE,
  errorMessage,
  ownerGone,
  ownerLabels,
  tenantOf,
} from '../common/index.js';
import { containers, networks, volumes } from '../engine/index.js';
import type { DockerClient } from '../engine/index.js';
import { ownSidecarName, stopDind } from '../dind/index.js';

/** Marks every bench object (its value names the contender where there is one). */
export const LABEL_BENCH = 'io.berth.bench';

/**
 * Labels for every object the bench creates. The role may be overwritten by the component that
 * makes the object (a dind sidecar is role=dind), so the reaper looks for `io.berth.bench`.
 */
export function benchLabels(extra: Record<string, string> = {}): Record<string, string> {
  return { [LABEL_ROLE]: 'bench', [LABEL_BENCH]: 'bench', ...ownerLabels(), ...extra };
}

/**
 * What the guard contender's tenant (`bench-<pid of the bench>`) left when the bench was killed
 * with it: the guard's own network, and objects the scenarios made through it. Those carry the
 * tenant label, which the reaper otherwise never touches; these it may, as only a guard serving
 * that tenant name can set it, and its owner (the bench) is gone. Never the live bench's own: a
 * guard child removes its tenant's objects itself when the bench stops it.
 */
function benchTenantLeft(l: Record<string, string> | null | undefined): boolean {
  const pid = l?.[LABEL_OWNER_PID];
  return (
    pid !== undefined &&
    /^[1-9][0-9]*$/.test(pid) &&
    l?.[LABEL_BENCH] === 'guard' &&
    tenantOf(l) === `bench-${pid}` &&
    ownerGone(l)
  );
}

export interface BenchReapResult {
  containers: number;
  networks: number;
  volumes: number;
  errors: string[];
  /** What was left in place on purpose (e.g. a socket dir berth did not make). */
  notes: string[];
}

/**
 * Removes bench objects whose owner is gone (or, with `all`, every bench object of this process
 * too: the interrupt path uses it for what its own run made). `labelFilter` (`k=v`) narrows it
 * further (e.g. a test session). Objects that name a guard tenant are never touched, but for a
 * killed bench's guard tenant.
 */
export async function reapBench(
  client: DockerClient,
  opts: { includeOwn?: boolean; labelFilter?: readonly string[] } = {},
): Promise<BenchReapResult> {
  const label = [LABEL_BENCH, ...(opts.labelFilter ?? [])];
  const mine = (l: Record<string, string> | null | undefined) =>
    (tenantOf(l) === undefined &&
      (ownerGone(l) || (opts.includeOwn === true && l?.[LABEL_OWNER_PID] === String(process.pid)))) ||
    benchTenantLeft(l);
  const out: BenchReapResult = { containers: 0, networks: 0, volumes: 0, errors: [], notes: [] };
  const attempt = async (what: string, fn: () => Promise<unknown>, count: () => void) => {
    try {
      await fn();
      count();
    } catch (err) {
      out.errors.push(`${what}: ${errorMessage(err)}`);
    }
  };
  for (const c of await containers(client).list({ all: true, filters: { label } })) {
    if (!mine(c.Labels)) continue;
    // Only a container that is itself berth's sidecar (its own name and labels) is stopped as a
    // daemon, with its socket dir and cache lock; one whose labels merely name a daemon (a
    // tenant's build step container carries any io.berth.* labels and no tenant label) is at
    // most removed itself, never used to stop another container.
    // Never a tenant's container (ownSidecarName names none): a killed bench's guard tenant's
    // containers are only removed.
    const dind = ownSidecarName(c);
    if (dind !== undefined)
      await attempt(
        `dind ${dind}`,
        () =>
          stopDind(client, dind, {
            id: c.Id,
            purge: true,
            log: (line) => out.notes.push(line),
          }),
        () => out.containers++,
      );
    else
      await attempt(
        `container ${c.Id.slice(0, 12)}`,
        () => containers(client).remove(c.Id, { force: true, volumes: true }),
        () => out.containers++,
      );
  }
  for (const n of await networks(client).list({ label }))
    if (mine(n.Labels))
      await attempt(
        `network ${n.Name}`,
        () => networks(client).remove(n.Id),
        () => out.networks++,
      );
  for (const v of await volumes(client).list({ label }))
    if (mine(v.Labels))
      await attempt(
        `volume ${v.Name}`,
        () => volumes(client).remove(v.Name, true),
        () => out.volumes++,
      );
  return out;
}
