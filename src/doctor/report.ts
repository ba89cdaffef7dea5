/** The doctor report: data, verdicts on berth's modes, and its text table. Verdicts are pure. */
import type { PrivilegeReport } from './probe.js';

export interface DoctorReport {
  engine: { reachable: boolean; endpoint: string; version?: string; apiVersion?: string; error?: string };
  storageDriver?: string;
  cgroup?: { version: string; driver: string };
  privileges?: PrivilegeReport;
  runtimes: string[];
  sysbox: boolean;
  iptables: string;
  dindImage: { name: string; present: boolean };
  modes: { guard: ModeVerdict; dind: ModeVerdict; host: ModeVerdict };
}

export interface ModeVerdict {
  available: boolean;
  reason: string;
}

export function verdicts(r: Omit<DoctorReport, 'modes'>): DoctorReport['modes'] {
  const noEngine: ModeVerdict = { available: false, reason: `no engine answers at ${r.engine.endpoint}` };
  if (!r.engine.reachable) return { guard: noEngine, dind: noEngine, host: noEngine };
  const host: ModeVerdict = {
    available: true,
    reason: 'raw socket: works, but a job is root on the host — use only for trusted jobs',
  };
  const guard: ModeVerdict = r.engine.endpoint.startsWith('unix://')
    ? { available: true, reason: 'guarded socket onto the shared daemon' }
    : {
        available: true,
        reason: 'guarded socket onto a remote daemon (bind paths must exist on the daemon host)',
      };
  let dind: ModeVerdict;
  const p = r.privileges;
  const how = r.sysbox
    ? 'sysbox-runc (unprivileged)'
    : p?.privileged.ok
      ? '--privileged'
      : p?.fallback.ok
        ? 'explicit-capabilities fallback'
        : undefined;
  if (!how) {
    dind = {
      available: false,
      reason: `nested dockerd needs --privileged, the capabilities fallback or sysbox: ${p?.fallback.detail ?? 'not probed'}`,
    };
  } else if (!r.dindImage.present) {
    dind = {
      available: false,
      reason: `${r.dindImage.name} is missing: run \`berth images build-local dind\` (or pull docker:dind from a registry and pass \`--image docker:dind\`)`,
    };
  } else {
    dind = { available: true, reason: `nested daemons via ${how}` };
  }
  return { guard, dind, host };
}

function yesNo(ok: boolean): string {
  return ok ? 'yes' : 'no';
}

export function reportRows(r: DoctorReport): [string, string, string][] {
  const rows: [string, string, string][] = [];
  rows.push([
    'engine',
    yesNo(r.engine.reachable),
    r.engine.reachable
      ? `${r.engine.endpoint} · Docker ${r.engine.version ?? '?'} · API ${r.engine.apiVersion ?? '?'}`
      : `${r.engine.endpoint}: ${r.engine.error ?? 'unreachable'}`,
  ]);
  if (r.storageDriver) rows.push(['storage driver', r.storageDriver, '']);
  if (r.cgroup) rows.push(['cgroups', `v${r.cgroup.version}`, `driver ${r.cgroup.driver}`]);
  if (r.privileges) {
    rows.push(['--privileged', yesNo(r.privileges.privileged.ok), r.privileges.privileged.detail]);
    rows.push(['capabilities fallback', yesNo(r.privileges.fallback.ok), r.privileges.fallback.detail]);
  }
  rows.push([
    'runtimes',
    r.runtimes.join(', ') || '–',
    r.sysbox ? 'sysbox-runc present: dind runs unprivileged' : 'no sysbox-runc',
  ]);
  rows.push(['iptables', r.iptables, '']);
  rows.push(['dind image', yesNo(r.dindImage.present), r.dindImage.name]);
  for (const mode of ['guard', 'dind', 'host'] as const) {
    rows.push([`mode ${mode}`, r.modes[mode].available ? 'available' : 'unavailable', r.modes[mode].reason]);
  }
  return rows;
}
