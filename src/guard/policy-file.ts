/**
 * Policy files: which rules a trusted tenant may bypass, limits, extra safe sysctls, and the registries it may use.
 *
 *   tenants:
 *     "ci/*":            # a glob over tenant names; the first match wins
 *       allow: [binds]   # rule names from the guard's refusals
 *       limits: { maxContainers: 20, maxMemoryBytes: 2147483648, defaultPidsLimit: 512 }
 *       sysctls: [net.ipv4.tcp_tw_reuse]
 *       registries: [127.0.0.1:5000, docker.io]   # pulls, pushes, logins, searches: these only
 *   defaults: { limits: {...} }
 *
 * Every problem is reported at once, with its dotted path.
 */
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { BerthError, errorMessage } from '../common/index.js';
import type { Policy, RuleName, TenantLimits } from './contracts.js';
import { DEFAULT_SAFE_SYSCTLS } from './policy.js';

export const RULES: readonly RuleName[] = [
  'privileged',
  'capabilities',
  'devices',
  'namespaces',
  'security-opt',
  'masked-paths',
  'cgroup-parent',
  'runtime',
  'log-driver',
  'volume-driver',
  'sysctls',
  'volumes-from',
  'links',
  'ports',
  'binds',
  'volume-options',
  'network-driver',
  'network-ipam',
  'resources',
  'build-options',
  'image-import',
  'limits',
];
const LIMIT_KEYS: readonly (keyof TenantLimits)[] = [
  'maxContainers',
  'maxNetworks',
  'defaultMemoryBytes',
  'maxMemoryBytes',
  'defaultNanoCpus',
  'maxNanoCpus',
  'defaultPidsLimit',
  'maxPidsLimit',
];

interface Section {
  allow?: RuleName[];
  limits?: TenantLimits;
  sysctls?: string[];
  registries?: string[];
}

/** A registry as a policy names it: `host`, `host:port` or `[v6]:port`; Docker Hub is `docker.io`. */
const REGISTRY =
  /^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?$/;

function globToRegExp(glob: string): RegExp {
  return new RegExp(
    `^${glob
      .replace(/[.+^${}()|[\]\\]/g, '\\$&')
      .replace(/\*/g, '.*')
      .replace(/\?/g, '.')}$`,
  );
}

function checkSection(v: unknown, path: string, problems: string[]): Section {
  const out: Section = {};
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    problems.push(`${path}: expected a mapping with allow, limits, sysctls, registries`);
    return out;
  }
  for (const [k, val] of Object.entries(v)) {
    if (k === 'allow') {
      if (!Array.isArray(val)) problems.push(`${path}.allow: expected a list of rule names`);
      else
        out.allow = val.filter((r, i) => {
          const ok = typeof r === 'string' && (RULES as readonly string[]).includes(r);
          if (!ok)
            problems.push(
              `${path}.allow[${i}]: unknown rule ${JSON.stringify(r)}; one of ${RULES.join(', ')}`,
            );
          return ok;
        }) as RuleName[];
    } else if (k === 'limits') {
      const lim: Record<string, number> = {};
      if (typeof val !== 'object' || val === null) problems.push(`${path}.limits: expected a mapping`);
      else
        for (const [lk, lv] of Object.entries(val as Record<string, unknown>)) {
          if (!(LIMIT_KEYS as readonly string[]).includes(lk))
            problems.push(`${path}.limits.${lk}: unknown limit; one of ${LIMIT_KEYS.join(', ')}`);
          else if (typeof lv !== 'number' || !Number.isInteger(lv) || lv <= 0)
            problems.push(`${path}.limits.${lk}: expected a positive whole number`);
          else lim[lk] = lv;
        }
      out.limits = lim;
    } else if (k === 'sysctls') {
      if (!Array.isArray(val) || !val.every((s) => typeof s === 'string'))
        problems.push(`${path}.sysctls: expected a list of sysctl names`);
      else out.sysctls = val;
    } else if (k === 'registries') {
      if (!Array.isArray(val)) problems.push(`${path}.registries: expected a list of registry hosts`);
      else
        out.registries = val.flatMap((r, i) => {
          const host = typeof r === 'string' ? r.toLowerCase() : '';
          if (REGISTRY.test(host)) return [host === 'index.docker.io' ? 'docker.io' : host];
          problems.push(
            `${path}.registries[${i}]: ${JSON.stringify(r)} is not a registry host; write host or host:port (docker.io for Docker Hub), no scheme or path`,
          );
          return [];
        });
    } else problems.push(`${path}.${k}: unknown key; expected allow, limits, sysctls or registries`);
  }
  return out;
}

/** Parses a policy document and answers the effective Policy for `tenant`. Pure. */
export function policyFor(text: string, file: string, tenant: string): Policy {
  let doc: unknown;
  try {
    doc = parse(text);
  } catch (err) {
    throw new BerthError('GUARD_POLICY', `${file}: ${errorMessage(err)}`);
  }
  const problems: string[] = [];
  const root = (doc ?? {}) as Record<string, unknown>;
  let defaults: Section = {};
  const tenants: [RegExp, Section][] = [];
  if (typeof root !== 'object' || Array.isArray(root))
    problems.push('(root): expected a mapping with tenants and defaults');
  else
    for (const [k, v] of Object.entries(root)) {
      if (k === 'defaults') defaults = checkSection(v, 'defaults', problems);
      else if (k === 'tenants') {
        if (typeof v !== 'object' || v === null || Array.isArray(v))
          problems.push('tenants: expected a mapping of tenant globs');
        else
          for (const [g, s] of Object.entries(v))
            tenants.push([globToRegExp(g), checkSection(s, `tenants.${g}`, problems)]);
      } else problems.push(`${k}: unknown key; expected tenants or defaults`);
    }
  if (problems.length) {
    throw new BerthError(
      'GUARD_POLICY',
      `${file} has ${problems.length} problem(s):\n${problems.map((p) => `  ${file}: ${p}`).join('\n')}`,
    );
  }
  const hit = tenants.find(([re]) => re.test(tenant))?.[1] ?? {};
  return {
    allow: new Set([...(defaults.allow ?? []), ...(hit.allow ?? [])]),
    safeSysctls: new Set([...DEFAULT_SAFE_SYSCTLS, ...(defaults.sysctls ?? []), ...(hit.sysctls ?? [])]),
    limits: { ...defaults.limits, ...hit.limits },
    // A tenant's own list replaces the default one.
    registries: (() => {
      const list = hit.registries ?? defaults.registries;
      return list === undefined ? undefined : new Set(list);
    })(),
  };
}

export function loadPolicyFile(file: string, tenant: string): Policy {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new BerthError('GUARD_POLICY', `cannot read policy file ${file}: ${errorMessage(err)}`);
  }
  return policyFor(text, file, tenant);
}
