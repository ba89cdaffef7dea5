/**
 * What this host can do, found by trying: privileged containers, the explicit-capabilities
 * fallback, runtimes, cgroups, storage and iptables. Shared by `berth doctor` and `berth dind`.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { errorMessage, LABEL_ROLE } from '../common/index.js';
import type { DockerClient, SystemInfo } from '../engine/index.js';
import { containers, images, readLogs } from '../engine/index.js';
import { capLine, decodeCapMask, isCapsFailure, missingCapabilities } from './caps.js';
import type { Capability } from './caps.js';

export const PROBE_IMAGE = 'berth-local/busybox';

export interface ProbeOutcome {
  ok: boolean;
  /** What happened, in one line. */
  detail: string;
}

export interface PrivilegeReport {
  privileged: ProbeOutcome & { missingCapabilities: Capability[] };
  fallback: ProbeOutcome & { capAdd: string[]; capDrop: string[] };
  hostBounding: Capability[] | undefined;
}

/** HostConfig for a nested daemon where --privileged is refused: every capability the host has, unconfined. */
export function fallbackHostConfig(missing: readonly string[]): Record<string, unknown> {
  return {
    CapAdd: ['ALL'],
    CapDrop: [...missing],
    SecurityOpt: ['seccomp=unconfined', 'apparmor=unconfined'],
    // `--security-opt systempaths=unconfined` is a client-side flag: it means empty masked and
    // read-only path lists in the API.
    MaskedPaths: [],
    ReadonlyPaths: [],
    Binds: ['/sys/fs/cgroup:/sys/fs/cgroup:rw'],
  };
}

/** Runs a short-lived probe container; answers its exit code and output, or the engine's refusal. */
async function tryContainer(
  client: DockerClient,
  cmd: string[],
  hostConfig: Record<string, unknown>,
): Promise<{ started: true; exitCode: number; output: string } | { started: false; error: string }> {
  let id: string | undefined;
  try {
    const created = await containers(client).create({
      Image: PROBE_IMAGE,
      Cmd: cmd,
      Labels: { [LABEL_ROLE]: 'doctor-probe' },
      HostConfig: { NetworkMode: 'none', ...hostConfig },
    });
    id = created.Id;
    const { exited } = await containers(client).waitRegistered(id, 'next-exit');
    try {
      await containers(client).start(id);
    } catch (err) {
      return { started: false, error: errorMessage(err) };
    }
    const { StatusCode } = await exited;
    const logs = await readLogs(client, id);
    return { started: true, exitCode: StatusCode, output: logs.stdout + logs.stderr };
  } catch (err) {
    return { started: false, error: errorMessage(err) };
  } finally {
    if (id) await containers(client).remove(id, { force: true });
  }
}

/** The host's capability bounding set: read locally when the engine is on this host. */
export function hostBoundingSet(client: DockerClient): Capability[] | undefined {
  if (client.endpoint.kind !== 'unix') return undefined;
  try {
    const hex =
      capLine(readFileSync('/proc/1/status', 'utf8'), 'CapBnd') ??
      capLine(readFileSync('/proc/self/status', 'utf8'), 'CapBnd');
    return hex ? decodeCapMask(hex) : undefined;
  } catch {
    return undefined;
  }
}

let cached: Promise<PrivilegeReport> | undefined;

/** Probes privileges once per process (dind asks on every start). */
export function probePrivileges(client: DockerClient, fresh = false): Promise<PrivilegeReport> {
  if (fresh || !cached) cached = doProbe(client);
  return cached;
}

async function doProbe(client: DockerClient): Promise<PrivilegeReport> {
  const bounding = hostBoundingSet(client);
  if (!(await images(client).find(PROBE_IMAGE))) {
    const why = `${PROBE_IMAGE} is missing (run \`berth images build-local\`)`;
    return {
      privileged: { ok: false, detail: `not tried: ${why}`, missingCapabilities: [] },
      fallback: { ok: false, detail: `not tried: ${why}`, capAdd: [], capDrop: [] },
      hostBounding: bounding,
    };
  }
  const priv = await tryContainer(client, ['true'], { Privileged: true });
  let missing: Capability[] = bounding ? missingCapabilities(bounding) : [];
  let privileged: PrivilegeReport['privileged'];
  if (priv.started && priv.exitCode === 0) {
    privileged = { ok: true, detail: '--privileged containers start', missingCapabilities: [] };
    missing = [];
  } else if (!priv.started && isCapsFailure(priv.error)) {
    privileged = {
      ok: false,
      detail: `refused: "unable to apply caps" — the host's bounding set lacks ${missing.length ? missing.map((c) => `CAP_${c}`).join(', ') : 'some capabilities'}`,
      missingCapabilities: missing,
    };
  } else {
    privileged = {
      ok: false,
      detail: `refused: ${priv.started ? `exit ${priv.exitCode}` : priv.error}`,
      missingCapabilities: missing,
    };
  }
  const hc = fallbackHostConfig(missing);
  // Prove the privileges are real: mounting a tmpfs needs CAP_SYS_ADMIN and no seccomp filter.
  const fb = await tryContainer(
    client,
    ['sh', '-c', 'mkdir -p /m && mount -t tmpfs none /m && grep CapEff /proc/self/status'],
    hc,
  );
  const fallback: PrivilegeReport['fallback'] =
    fb.started && fb.exitCode === 0
      ? {
          ok: true,
          detail: `all host capabilities${missing.length ? ` except ${missing.join(', ')}` : ''}, unconfined seccomp/apparmor/systempaths, cgroup mount: a mount inside works`,
          capAdd: ['ALL'],
          capDrop: missing,
        }
      : {
          ok: false,
          detail: fb.started
            ? `started but could not mount (exit ${fb.exitCode}): ${fb.output.trim().slice(0, 200)}`
            : `refused: ${fb.error}`,
          capAdd: ['ALL'],
          capDrop: missing,
        };
  return { privileged, fallback, hostBounding: bounding };
}

export function iptablesMode(): string {
  const r = spawnSync('iptables', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) return 'not installed';
  if (r.stdout.includes('nf_tables')) return 'nf_tables';
  if (r.stdout.includes('legacy')) return 'legacy';
  return r.stdout.trim();
}

export function cgroupInfo(info: SystemInfo): { version: string; driver: string } {
  return { version: info.CgroupVersion ?? '?', driver: info.CgroupDriver };
}
