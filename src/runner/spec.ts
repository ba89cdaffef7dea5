/**
 * The runner's view of a pipeline, and a reader for `berth.yml` that produces it.
 *
 * `src/pipeline/` (berth.yml parsing, validation, matrix, DAG) is owned by another engineer and had
 * not landed when the runner was written; this module is the runner's self-contained reader so the
 * runner works today. It validates everything the runner depends on, with file, line and what to
 * change. When `src/pipeline/index.ts` lands, `loadRunSpec` should delegate to it and map its
 * `Pipeline` onto `RunSpec`.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { LineCounter, isMap, isScalar, isSeq, parseDocument } from 'yaml';
import type { Document, Node as YamlNode } from 'yaml';
import { BerthError } from '../common/index.js';

export const DOCKER_MODES = ['guard', 'dind', 'host', 'none'] as const;
export type DockerMode = (typeof DOCKER_MODES)[number];
export const WHEN_VALUES = ['on_success', 'on_failure', 'always'] as const;
export type When = (typeof WHEN_VALUES)[number];

export interface DockerSpec {
  mode: DockerMode;
  /** A persistent tenant whose objects outlive the job (guard mode). */
  tenant?: string;
  /** Keep the tenant's objects when the job ends. */
  keep: boolean;
}

export interface ServiceSpec {
  name: string;
  image: string;
  command?: string[];
  env: Record<string, string>;
  /** A shell command run inside the service until it exits 0. */
  ready?: string;
  /** How long to wait for `ready`, in ms. */
  readyTimeoutMs: number;
}

export interface StepSpec {
  name: string;
  run: string;
  env: Record<string, string>;
}

export interface JobSpec {
  name: string;
  image: string;
  needs: string[];
  when: When;
  timeoutMs?: number;
  docker: DockerSpec;
  env: Record<string, string>;
  services: ServiceSpec[];
  steps: StepSpec[];
  /** Paths (relative to /workspace or absolute) copied out of the job container at the end. */
  artifacts: string[];
}

export interface RunSpec {
  name: string;
  file: string;
  /** The workspace: the folder holding the pipeline file. */
  workspace: string;
  env: Record<string, string>;
  /** Names of environment variables whose values are secrets (masked in every log). */
  secrets: string[];
  jobs: JobSpec[];
}

export interface SpecProblem {
  file: string;
  line: number;
  column: number;
  path: string;
  message: string;
}

export const DEFAULT_IMAGE = 'berth-local/tools';
const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
const ENV_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Reads and validates a pipeline file. Throws PIPELINE_NOT_FOUND / PIPELINE_INVALID. */
export function loadRunSpec(file: string, opts: { defaultDocker?: DockerMode } = {}): RunSpec {
  const path = resolve(file);
  if (!existsSync(path)) {
    throw new BerthError('PIPELINE_NOT_FOUND', `${path}: no such pipeline file`, {
      hint: 'create a berth.yml in the repository, or pass its path: berth run path/to/berth.yml',
    });
  }
  return parseRunSpec(readFileSync(path, 'utf8'), path, opts);
}

/** Parses pipeline text; `file` is used for messages and as the workspace anchor. */
export function parseRunSpec(text: string, file: string, opts: { defaultDocker?: DockerMode } = {}): RunSpec {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false });
  const problems: SpecProblem[] = [];
  const at = (node: YamlNode | null | undefined, path: string, message: string) => {
    const off = node?.range?.[0] ?? 0;
    const pos = lc.linePos(off);
    problems.push({ file, line: pos.line, column: pos.col, path, message });
  };
  for (const e of doc.errors) {
    const pos = e.linePos?.[0] ?? { line: 1, col: 1 };
    problems.push({
      file,
      line: pos.line,
      column: pos.col,
      path: '',
      message: e.message.split('\n')[0] ?? '',
    });
  }
  if (problems.length) throw invalid(problems);
  const spec = readRoot(doc, at, file, opts.defaultDocker);
  if (problems.length || !spec) throw invalid(problems);
  return spec;
}

function invalid(problems: SpecProblem[]): BerthError {
  const lines = problems.map(
    (p) => `${p.file}:${p.line}:${p.column}: ${p.path ? `${p.path}: ` : ''}${p.message}`,
  );
  return new BerthError('PIPELINE_INVALID', `invalid pipeline:\n  ${lines.join('\n  ')}`, {
    hint: 'fix the lines above; `berth validate` checks a pipeline without running it',
    details: { problems },
  });
}

type At = (node: YamlNode | null | undefined, path: string, message: string) => void;

function readRoot(
  doc: Document,
  at: At,
  file: string,
  defaultDocker: DockerMode | undefined,
): RunSpec | undefined {
  const root = doc.contents;
  if (!isMap(root)) {
    at(root, '', 'the pipeline must be a mapping with a `jobs:` key');
    return undefined;
  }
  const known = new Set(['name', 'image', 'env', 'secrets', 'docker', 'jobs']);
  for (const pair of root.items) {
    const k = isScalar(pair.key) ? String(pair.key.value) : '';
    if (!known.has(k))
      at(pair.key as YamlNode, k, `unknown key "${k}" (expected one of: ${[...known].join(', ')})`);
  }
  const get = (key: string) => root.get(key, true) as YamlNode | undefined;
  const name = str(get('name'), 'name', at) ?? 'pipeline';
  const image = str(get('image'), 'image', at) ?? DEFAULT_IMAGE;
  const env = strMap(get('env'), 'env', at);
  const secrets = strList(get('secrets'), 'secrets', at);
  for (const s of secrets)
    if (!ENV_RE.test(s)) at(get('secrets'), 'secrets', `"${s}" is not an environment variable name`);
  const docker = readDocker(get('docker'), 'docker', at, { mode: defaultDocker ?? 'guard', keep: false });
  const jobsNode = get('jobs');
  if (!isMap(jobsNode) || jobsNode.items.length === 0) {
    at(jobsNode ?? root, 'jobs', '`jobs:` must map job names to jobs (at least one)');
    return undefined;
  }
  const jobs: JobSpec[] = [];
  for (const pair of jobsNode.items) {
    const jname = isScalar(pair.key) ? String(pair.key.value) : '';
    const path = `jobs.${jname}`;
    if (!NAME_RE.test(jname))
      at(pair.key as YamlNode, path, 'job names use letters, digits, `_`, `.` and `-`');
    const job = readJob(jname, pair.value as YamlNode, path, at, { image, docker });
    if (job) jobs.push(job);
  }
  const names = new Set(jobs.map((j) => j.name));
  for (const j of jobs) {
    for (const n of j.needs) {
      if (!names.has(n)) {
        const node = (
          jobsNode.get(j.name, true) as { get?: (k: string, keep: boolean) => unknown } | undefined
        )?.get?.('needs', true);
        at(
          node as YamlNode,
          `jobs.${j.name}.needs`,
          `needs unknown job "${n}" (jobs: ${[...names].join(', ')})`,
        );
      }
    }
  }
  const cycle = findCycle(jobs);
  if (cycle) at(jobsNode, 'jobs', `jobs depend on each other in a cycle: ${cycle.join(' -> ')}`);
  return { name, file, workspace: dirname(file), env, secrets, jobs };
}

function readJob(
  name: string,
  node: YamlNode | undefined,
  path: string,
  at: At,
  defaults: { image: string; docker: DockerSpec },
): JobSpec | undefined {
  if (!isMap(node)) {
    at(node, path, 'a job must be a mapping with `steps:`');
    return undefined;
  }
  const known = new Set([
    'image',
    'needs',
    'when',
    'timeout',
    'docker',
    'env',
    'services',
    'steps',
    'artifacts',
  ]);
  for (const pair of node.items) {
    const k = isScalar(pair.key) ? String(pair.key.value) : '';
    if (!known.has(k))
      at(
        pair.key as YamlNode,
        `${path}.${k}`,
        `unknown key "${k}" (expected one of: ${[...known].join(', ')})`,
      );
  }
  const get = (key: string) => node.get(key, true) as YamlNode | undefined;
  const whenNode = get('when');
  const when = (str(whenNode, `${path}.when`, at) ?? 'on_success') as When;
  if (!WHEN_VALUES.includes(when))
    at(whenNode, `${path}.when`, `"${when}" is not one of ${WHEN_VALUES.join(', ')}`);
  const timeoutNode = get('timeout');
  let timeoutMs: number | undefined;
  if (timeoutNode) {
    const raw = isScalar(timeoutNode) ? String(timeoutNode.value) : '';
    timeoutMs = parseDuration(raw);
    if (timeoutMs === undefined)
      at(timeoutNode, `${path}.timeout`, `"${raw}" is not a duration (write 90s, 10m, 1h or seconds)`);
  }
  const stepsNode = get('steps');
  const steps: StepSpec[] = [];
  if (!isSeq(stepsNode) || stepsNode.items.length === 0) {
    at(stepsNode ?? node, `${path}.steps`, '`steps:` must be a list of steps (at least one)');
  } else {
    stepsNode.items.forEach((item, i) => {
      const sp = `${path}.steps[${i}]`;
      const it = item as YamlNode;
      if (isScalar(it) && typeof it.value === 'string') {
        steps.push({ name: firstLine(it.value), run: it.value, env: {} });
      } else if (isMap(it)) {
        for (const pair of it.items) {
          const k = isScalar(pair.key) ? String(pair.key.value) : '';
          if (!['name', 'run', 'env'].includes(k))
            at(pair.key as YamlNode, `${sp}.${k}`, `unknown key "${k}" (expected name, run, env)`);
        }
        const run = str(it.get('run', true), `${sp}.run`, at);
        if (run === undefined) at(it, sp, 'a step needs `run:` (a shell script)');
        const sname = str(it.get('name', true), `${sp}.name`, at);
        steps.push({
          name: sname ?? firstLine(run ?? ''),
          run: run ?? '',
          env: strMap(it.get('env', true), `${sp}.env`, at),
        });
      } else {
        at(it, sp, 'a step is a shell command string or a mapping with `run:`');
      }
    });
  }
  const services: ServiceSpec[] = [];
  const servicesNode = get('services');
  if (servicesNode !== undefined) {
    if (!isMap(servicesNode))
      at(
        servicesNode,
        `${path}.services`,
        '`services:` maps service names to { image, command, env, ready }',
      );
    else
      for (const pair of servicesNode.items) {
        const sname = isScalar(pair.key) ? String(pair.key.value) : '';
        const sp = `${path}.services.${sname}`;
        if (!NAME_RE.test(sname))
          at(pair.key as YamlNode, sp, 'service names use letters, digits, `_`, `.` and `-`');
        const v = pair.value as YamlNode;
        if (!isMap(v)) {
          at(v, sp, 'a service is a mapping with `image:`');
          continue;
        }
        for (const p of v.items) {
          const k = isScalar(p.key) ? String(p.key.value) : '';
          if (!['image', 'command', 'env', 'ready', 'ready_timeout'].includes(k))
            at(
              p.key as YamlNode,
              `${sp}.${k}`,
              `unknown key "${k}" (expected image, command, env, ready, ready_timeout)`,
            );
        }
        const image = str(v.get('image', true), `${sp}.image`, at);
        if (!image) at(v, `${sp}.image`, 'a service needs `image:`');
        const cmdNode = v.get('command', true) as YamlNode | undefined;
        let command: string[] | undefined;
        if (cmdNode !== undefined) {
          if (isScalar(cmdNode)) command = ['sh', '-c', String(cmdNode.value)];
          else command = strList(cmdNode, `${sp}.command`, at);
        }
        const rtNode = v.get('ready_timeout', true) as YamlNode | undefined;
        const rt = rtNode && isScalar(rtNode) ? parseDuration(String(rtNode.value)) : undefined;
        if (rtNode && rt === undefined) at(rtNode, `${sp}.ready_timeout`, 'not a duration (write 30s, 2m)');
        services.push({
          name: sname,
          image: image ?? '',
          command,
          env: strMap(v.get('env', true), `${sp}.env`, at),
          ready: str(v.get('ready', true), `${sp}.ready`, at),
          readyTimeoutMs: rt ?? 60_000,
        });
      }
  }
  return {
    name,
    image: str(get('image'), `${path}.image`, at) ?? defaults.image,
    needs: readNeeds(get('needs'), `${path}.needs`, at),
    when,
    timeoutMs,
    docker: readDocker(get('docker'), `${path}.docker`, at, defaults.docker),
    env: strMap(get('env'), `${path}.env`, at),
    services,
    steps,
    artifacts: strList(get('artifacts'), `${path}.artifacts`, at),
  };
}

function readNeeds(node: YamlNode | undefined, path: string, at: At): string[] {
  if (node === undefined) return [];
  if (isScalar(node)) return [String(node.value)];
  return strList(node, path, at);
}

function readDocker(node: YamlNode | undefined, path: string, at: At, fallback: DockerSpec): DockerSpec {
  if (node === undefined) return { ...fallback };
  const mode = (m: string, n: YamlNode): DockerMode => {
    if ((DOCKER_MODES as readonly string[]).includes(m)) return m as DockerMode;
    at(n, path, `docker mode "${m}" is not one of ${DOCKER_MODES.join(', ')}`);
    return fallback.mode;
  };
  if (isScalar(node)) return { mode: mode(String(node.value), node), keep: false };
  if (!isMap(node)) {
    at(node, path, '`docker:` is a mode (guard, dind, host, none) or { mode, tenant, keep }');
    return { ...fallback };
  }
  for (const p of node.items) {
    const k = isScalar(p.key) ? String(p.key.value) : '';
    if (!['mode', 'tenant', 'keep'].includes(k))
      at(p.key as YamlNode, `${path}.${k}`, `unknown key "${k}" (expected mode, tenant, keep)`);
  }
  const modeNode = node.get('mode', true) as YamlNode | undefined;
  const m = modeNode ? mode(str(modeNode, `${path}.mode`, at) ?? '', modeNode) : fallback.mode;
  const tenant = str(node.get('tenant', true), `${path}.tenant`, at);
  if (tenant !== undefined && !/^[a-zA-Z0-9][a-zA-Z0-9_./-]*$/.test(tenant))
    at(node.get('tenant', true), `${path}.tenant`, 'tenant names use letters, digits, `_`, `.`, `/` and `-`');
  const keepNode = node.get('keep', true) as YamlNode | undefined;
  let keep = false;
  if (keepNode !== undefined) {
    if (isScalar(keepNode) && typeof keepNode.value === 'boolean') keep = keepNode.value;
    else at(keepNode, `${path}.keep`, '`keep:` is true or false');
  }
  if (keep && tenant === undefined)
    at(keepNode, `${path}.keep`, '`keep: true` needs a named `tenant:` (for example env/production)');
  if (tenant !== undefined && m !== 'guard')
    at(node, path, `a persistent tenant needs mode guard (this job says ${m})`);
  return { mode: m, tenant, keep };
}

function str(node: YamlNode | undefined, path: string, at: At): string | undefined {
  if (node === undefined || (isScalar(node) && node.value === null)) return undefined;
  if (isScalar(node) && ['string', 'number', 'boolean'].includes(typeof node.value))
    return String(node.value);
  at(node, path, 'expected a string');
  return undefined;
}

function strList(node: YamlNode | undefined, path: string, at: At): string[] {
  if (node === undefined) return [];
  if (!isSeq(node)) {
    at(node, path, 'expected a list of strings');
    return [];
  }
  const out: string[] = [];
  node.items.forEach((item, i) => {
    const v = str(item as YamlNode, `${path}[${i}]`, at);
    if (v !== undefined) out.push(v);
  });
  return out;
}

function strMap(node: YamlNode | undefined, path: string, at: At): Record<string, string> {
  const out: Record<string, string> = {};
  if (node === undefined) return out;
  if (!isMap(node)) {
    at(node, path, 'expected a mapping of NAME: value');
    return out;
  }
  for (const pair of node.items) {
    const k = isScalar(pair.key) ? String(pair.key.value) : '';
    if (!ENV_RE.test(k))
      at(pair.key as YamlNode, `${path}.${k}`, `"${k}" is not an environment variable name`);
    const v = str(pair.value as YamlNode, `${path}.${k}`, at);
    out[k] = v ?? '';
  }
  return out;
}

/** "90s", "10m", "1h", "1500ms" or a number of seconds → ms. */
export function parseDuration(raw: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(raw);
  if (!m) return undefined;
  const n = Number(m[1]);
  const unit = m[2] ?? 's';
  const factor = unit === 'ms' ? 1 : unit === 's' ? 1000 : unit === 'm' ? 60_000 : 3_600_000;
  return Math.round(n * factor);
}

function firstLine(s: string): string {
  const l = s.trim().split('\n')[0] ?? '';
  return l.length > 60 ? `${l.slice(0, 57)}...` : l;
}

/** A dependency cycle among jobs, or undefined. */
export function findCycle(jobs: readonly Pick<JobSpec, 'name' | 'needs'>[]): string[] | undefined {
  const byName = new Map(jobs.map((j) => [j.name, j]));
  const state = new Map<string, 'visiting' | 'done'>();
  const stack: string[] = [];
  const visit = (n: string): string[] | undefined => {
    if (state.get(n) === 'done') return undefined;
    if (state.get(n) === 'visiting') return [...stack.slice(stack.indexOf(n)), n];
    state.set(n, 'visiting');
    stack.push(n);
    for (const d of byName.get(n)?.needs ?? []) {
      if (!byName.has(d)) continue;
      const c = visit(d);
      if (c) return c;
    }
    stack.pop();
    state.set(n, 'done');
    return undefined;
  };
  for (const j of jobs) {
    const c = visit(j.name);
    if (c) return c;
  }
  return undefined;
}

/** Masks every secret value (and its lines) in text. Values shorter than 3 characters are not masked. */
export function maskSecrets(text: string, secrets: readonly string[]): string {
  let out = text;
  const values = [...new Set(secrets.filter((s) => s.length >= 3))].sort((a, b) => b.length - a.length);
  for (const v of values) out = out.split(v).join('***');
  return out;
}
