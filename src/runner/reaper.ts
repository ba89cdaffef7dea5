/**
 * The reaper: removes what runs left behind when their runner died (kill -9, crash, power loss).
 * Every object of a run carries `io.berth.run` and the owner's pid and host; an object whose owner
 * runs on this host and is no longer alive is a leftover. A run's host folder is judged by the
 * owner file the runner wrote in it (and the store), never by an object's labels.
 */
import { hostname } from 'node:os';
import { existsSync, rmSync } from 'node:fs';
import {
  LABEL_OWNER_HOST,
  LABEL_OWNER_PID,
  LABEL_RUN,
  LABEL_TENANT,
  errorMessage,
  pidAlive,
  sleep,
  tenantOf,
} from '../common/index.js';
import { EngineError, containers, images, networks, volumes } from '../engine/index.js';
import { recordedTag, recordsOf } from '../guard/index.js';
import type { DockerClient } from '../engine/index.js';
import type { Store } from './store.js';
import { jobTempRoot, readRunOwner, runOwnerGone, runTempBaseProblem } from './paths.js';
import type { RunOwner } from './paths.js';

export interface ReapOptions {
  /** Only this run (its owner must be dead unless `force`). */
  runId?: string;
  /** Remove even if the owner looks alive (for a run id given explicitly). */
  force?: boolean;
  /** Also mark the store's runs of dead owners as abandoned. */
  store?: Store;
  /** Extra label filters (`k=v`), e.g. a test session. */
  labelFilter?: string[];
}

export interface ReapResult {
  runs: string[];
  containers: number;
  networks: number;
  volumes: number;
  errors: string[];
}

/**
 * False for objects of a persistent tenant (env/production…): they may carry a run's labels only
 * because their image was built in that run (containers inherit image labels), and must survive.
 */
export function ofRunTenant(labels: Record<string, string>): boolean {
  const tenant = labels[LABEL_TENANT];
  // Empty: the runner's own job and service containers, which set it so (an image's label would
  // be inherited otherwise).
  return tenant === undefined || tenant === '' || tenant.startsWith(`run/${labels[LABEL_RUN] ?? ''}/`);
}

/** Whether objects with these labels belong to a run whose runner is gone. */
export function isStale(labels: Record<string, string> | null | undefined, host = hostname()): boolean {
  if (!labels || !ofRunTenant(labels)) return false;
  if (labels[LABEL_OWNER_HOST] !== host) return false;
  return !pidAlive(Number(labels[LABEL_OWNER_PID]));
}

/** Whether a run id is one path segment (it names a folder under the run temp root). */
export function isRunIdSegment(runId: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(runId) && !runId.includes('..');
}

/** What the reaper does with a candidate run's temp root (see folderVerdict). */
export interface FolderVerdict {
  /** Remove the folder. */
  remove: boolean;
  /** Report the run as reaped. */
  reaped: boolean;
}

/**
 * Whether a candidate run's temp root goes, judged by what the runner wrote in it (`owner`, from
 * its owner file) and never by labels on engine objects: a tenant's build step container carries
 * whatever `io.berth.*` labels its Dockerfile set, and no tenant label.
 * - `forced`: the operator named this run with --force: it goes.
 * - an owner file: the folder goes only when it names this host and a dead pid.
 * - no owner file: an absent folder has nothing to remove; a folder without one (an older berth's,
 *   or not berth's) goes only for a run the store says is dead (the store is the runner's own
 *   record), never for a run seen only on labels.
 */
export function folderVerdict(
  owner: RunOwner | undefined,
  folderExists: boolean,
  how: { fromStore: boolean; forced: boolean; host?: string },
): FolderVerdict {
  if (how.forced) return { remove: true, reaped: true };
  if (owner !== undefined) {
    const gone = runOwnerGone(owner, how.host);
    return { remove: gone, reaped: gone || how.fromStore };
  }
  if (!folderExists) return { remove: false, reaped: true };
  return { remove: how.fromStore, reaped: how.fromStore };
}

export async function reap(client: DockerClient, opts: ReapOptions = {}): Promise<ReapResult> {
  const host = hostname();
  const label = [opts.runId ? `${LABEL_RUN}=${opts.runId}` : LABEL_RUN, ...(opts.labelFilter ?? [])];
  const pick = (labels: Record<string, string>) =>
    opts.force === true ? opts.runId !== undefined : isStale(labels, host);
  const result: ReapResult = { runs: [], containers: 0, networks: 0, volumes: 0, errors: [] };
  // Runs seen on labels are only candidates: the labels are not proof (a guard tenant's objects,
  // its build step containers included, may carry any run and owner labels).
  const candidates = new Set<string>();
  const fromStore = new Set<string>();
  await removeLabelled(client, label, result, (labels) => {
    if (!pick(labels)) return false;
    const r = labels[LABEL_RUN];
    if (r && tenantOf(labels) === undefined && isRunIdSegment(r)) candidates.add(r);
    return true;
  });
  if (opts.store) {
    for (const r of opts.store.runningRuns()) {
      if (opts.runId !== undefined && r.id !== opts.runId) continue;
      if (r.owner_host === host && (!pidAlive(r.owner_pid) || opts.force === true)) {
        opts.store.abandonRun(r.id, new Date().toISOString());
        fromStore.add(r.id);
      }
    }
  }
  // A run the operator names with --force goes, folder included, even with no objects left.
  if (opts.force === true && opts.runId !== undefined) candidates.add(opts.runId);
  const runs = new Set<string>(fromStore);
  for (const r of new Set([...candidates, ...fromStore])) {
    if (!isRunIdSegment(r)) continue;
    const verdict = folderVerdict(readRunOwner(r), existsSync(jobTempRoot(r)), {
      fromStore: fromStore.has(r),
      forced: opts.force === true && opts.runId === r,
      host,
    });
    // Only under a base that is this user's alone (runTempBaseProblem): a base someone else made
    // would send the removal wherever they pointed it (red-team pass 29).
    if (verdict.remove && runTempBaseProblem() === undefined)
      rmSync(jobTempRoot(r), { recursive: true, force: true });
    if (verdict.reaped) runs.add(r);
  }
  result.runs = [...runs].sort();
  return result;
}

/**
 * Removes every container, network and volume of a tenant — a kept environment such as
 * `env/production`, whose objects outlive the runs that deployed them on purpose — whoever made
 * them. `labelFilter` narrows it further (e.g. a test session).
 */
export async function reapTenant(
  client: DockerClient,
  tenant: string,
  labelFilter: readonly string[] = [],
): Promise<ReapResult> {
  const result: ReapResult = { runs: [], containers: 0, networks: 0, volumes: 0, errors: [] };
  await removeLabelled(client, [`${LABEL_TENANT}=${tenant}`, ...labelFilter], result, () => true);
  // The records of tags its guard wrote (they carry no tenant label): a guard that died before its
  // cleanup left them, and each one whose tag no longer names its image goes (removeLabelled).
  await removeLabelled(client, [...recordsOf(tenant), ...labelFilter], result, () => true);
  return result;
}

/**
 * Removes the containers (with their anonymous volumes), then networks, then volumes matching
 * `label` that `pick` accepts, counting into `result`; a failure is noted and the rest goes on.
 */
async function removeLabelled(
  client: DockerClient,
  label: string[],
  result: ReapResult,
  pick: (labels: Record<string, string>) => boolean,
): Promise<void> {
  const picked = (labels: Record<string, string> | null | undefined) => !!labels && pick(labels);
  for (const c of await containers(client).list({ all: true, filters: { label } })) {
    if (!picked(c.Labels)) continue;
    try {
      if (await retrying(() => containers(client).remove(c.Id, { force: true, volumes: true })))
        result.containers++;
    } catch (err) {
      result.errors.push(`container ${c.Names[0] ?? c.Id}: ${errorMessage(err)}`);
    }
  }
  for (const n of await networks(client).list({ label })) {
    if (!picked(n.Labels)) continue;
    try {
      if (await retrying(() => networks(client).remove(n.Id))) result.networks++;
    } catch (err) {
      result.errors.push(`network ${n.Name}: ${errorMessage(err)}`);
    }
  }
  for (const v of await volumes(client).list({ label })) {
    if (!picked(v.Labels)) continue;
    // A guard's record of a tag its tenant set, where the tag outlived the tenant's cleanup (a
    // container of someone else's used the image): it keeps marking the name while the name
    // still names that image, or the next tenant naming it would run the image.
    const rec = recordedTag(v.Labels);
    if (
      rec &&
      (
        await images(client)
          .find(rec.tag)
          .catch(() => undefined)
      )?.Id === rec.image
    )
      continue;
    try {
      if (await retrying(() => volumes(client).remove(v.Name))) result.volumes++;
    } catch (err) {
      result.errors.push(`volume ${v.Name}: ${errorMessage(err)}`);
    }
  }
}

/**
 * Removal that tolerates a concurrent reaper (another `berth run` starting reaps too): a 409
 * ("removal already in progress", "in use", "active endpoints") is retried for a few seconds, and
 * an object that is gone meanwhile counts as not removed by us.
 */
async function retrying(remove: () => Promise<boolean>): Promise<boolean> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await remove();
    } catch (err) {
      const status = err instanceof EngineError ? err.statusCode : undefined;
      if ((status !== 409 && status !== 403) || attempt >= 20) throw err;
      await sleep(250);
    }
  }
}
