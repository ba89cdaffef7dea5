/**
 * Parses and validates `berth.yml`. Every problem is collected (never the first only) with file,
 * line, column, dotted path and a message saying what to change; then defaults are applied and
 * matrix jobs expanded.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { LineCounter, isMap, isScalar, isSeq, parseDocument, visit } from 'yaml';
import type { Node as YamlNode, YAMLMap } from 'yaml';
import { BerthError } from '../common/index.js';
import { DEFAULT_IMAGE, DEFAULT_WORKDIR, DOCKER_MODES, WHEN_VALUES } from './types.js';
import type {
  DockerMode,
  DockerSpec,
  JobSpec,
  Pipeline,
  Problem,
  SecretSpec,
  ServiceSpec,
  StepSpec,
  When,
} from './types.js';

/** A pipeline file that failed validation; `problems` holds all of them, sorted by position. */
export class PipelineError extends BerthError {
  readonly problems: Problem[];
  constructor(problems: Problem[]) {
    super(
      'PIPELINE_INVALID',
      `invalid pipeline (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n${formatProblems(problems)}`,
      {
        hint: 'fix the lines above; `berth validate FILE` checks a pipeline without running it',
        details: { problems },
      },
    );
    this.problems = problems;
  }
}

/** Renders problems as `file:line:col: path: message` lines. */
export function formatProblems(problems: readonly Problem[]): string {
  return problems
    .map((p) => `${p.file}:${p.line}:${p.column}: ${p.path ? `${p.path}: ` : ''}${p.message}`)
    .join('\n');
}

/** Reads and parses a pipeline file. Throws PIPELINE_NOT_FOUND or PipelineError. */
export function loadPipeline(path: string): Pipeline {
  if (!existsSync(path)) {
    throw new BerthError('PIPELINE_NOT_FOUND', `${path}: no such pipeline file`, {
      hint: 'create a berth.yml (see docs/pipeline.md) or pass the path of one',
    });
  }
  // Not followed into a device or read past the bound (red-team pass 21: a berth.yml linked to
  // /dev/zero grew a server to 17 GB).
  const st = statSync(path);
  if (!st.isFile())
    throw new BerthError('PIPELINE_INVALID', `${path}: not a regular file`, {
      hint: 'a pipeline is a YAML file',
    });
  if (st.size > MAX_PIPELINE_BYTES) throw tooBig(path, st.size);
  return parsePipeline(readFileSync(path, 'utf8'), path);
}

/** The largest pipeline file read (bytes). */
export const MAX_PIPELINE_BYTES = 1024 * 1024;
/** The most jobs one `matrix` makes, and the most jobs a pipeline has once its matrices are expanded. */
export const MAX_MATRIX_JOBS = 256;
export const MAX_JOBS = 1000;

function tooBig(file: string, size: number): BerthError {
  return new BerthError(
    'PIPELINE_INVALID',
    `${file}: the pipeline file is ${size} bytes; at most ${MAX_PIPELINE_BYTES} are read`,
    { hint: 'a pipeline that large is not one anyone wrote: split the work, or generate fewer jobs' },
  );
}

const DURATION_RE = /^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$/;

/** `90s`, `10m`, `1h30m`, `500ms` (a bare number is seconds) → milliseconds; undefined if invalid. */
export function parseDuration(value: string | number): number | undefined {
  if (typeof value === 'number')
    return Number.isFinite(value) && value > 0 ? Math.round(value * 1000) : undefined;
  const s = value.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return parseDuration(Number(s));
  const m = DURATION_RE.exec(s);
  if (!m || s === '') return undefined;
  const [, h, min, sec, ms] = m;
  const total =
    Number(h ?? 0) * 3_600_000 + Number(min ?? 0) * 60_000 + Number(sec ?? 0) * 1000 + Number(ms ?? 0);
  return total > 0 ? total : undefined;
}

const JOB_NAME_RE = /^[a-z0-9][a-z0-9_.-]*$/;
const TENANT_RE = /^[a-z0-9][a-z0-9/_.-]*$/;
const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]*$/;
const MATRIX_REF_RE = /\$\{\{\s*matrix\.([A-Za-z0-9_-]+)\s*\}\}|\$\{matrix\.([A-Za-z0-9_-]+)\}/g;

const TOP_KEYS = ['version', 'name', 'image', 'docker', 'env', 'variables', 'secrets', 'services', 'jobs'];
const JOB_KEYS = [
  'image',
  'docker',
  'needs',
  'steps',
  'services',
  'env',
  'workdir',
  'timeout',
  'artifacts',
  'when',
  'matrix',
];
const DOCKER_KEYS = ['mode', 'cache', 'tenant', 'keep'];
const SERVICE_KEYS = ['image', 'env', 'command', 'ports', 'ready'];
const READY_KEYS = ['command', 'timeout', 'interval'];
const STEP_KEYS = ['name', 'run'];
const SECRET_KEYS = ['name', 'file'];

/** Optimal-string-alignment distance: insertions, deletions, substitutions, transpositions. */
function editDistance(a: string, b: string): number {
  const rows: number[][] = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  const at = (i: number, j: number): number => rows[i]?.[j] ?? 0;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        d = Math.min(d, at(i - 2, j - 2) + 1);
      const row = rows[i];
      if (row) row[j] = d;
    }
  }
  return at(a.length, b.length);
}

function suggest(word: string, options: readonly string[]): string {
  let best: string | undefined;
  let bestD = Infinity;
  for (const o of options) {
    const dist = editDistance(word.toLowerCase(), o.toLowerCase());
    if (dist < bestD) [best, bestD] = [o, dist];
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(word.length / 3))
    ? ` — did you mean \`${best}\`?`
    : '';
}

function typeName(node: unknown): string {
  if (isMap(node)) return 'a mapping';
  if (isSeq(node)) return 'a list';
  if (isScalar(node)) {
    const v = node.value;
    if (v === null) return 'empty';
    if (typeof v === 'string') return 'a string';
    if (typeof v === 'number') return 'a number';
    if (typeof v === 'boolean') return 'a boolean';
  }
  return 'empty';
}

/** Source of the raw (unexpanded) job, kept for matrix expansion. */
interface RawJob {
  name: string;
  node: YAMLMap;
  keyNode: YamlNode;
  job: Omit<JobSpec, 'needs'> & { needsRaw: { name: string; node: YamlNode }[] };
  matrix: { keys: string[]; values: string[][] } | undefined;
}

class Checker {
  readonly problems: Problem[] = [];
  constructor(
    readonly file: string,
    readonly lc: LineCounter,
  ) {}

  at(node: YamlNode | null | undefined, path: string, message: string, offset?: number): void {
    const pos = offset ?? node?.range?.[0] ?? 0;
    const { line, col } = this.lc.linePos(pos);
    this.problems.push({ file: this.file, line, column: col, path, message });
  }

  pos(node: YamlNode | null | undefined): { line: number; column: number } {
    const { line, col } = this.lc.linePos(node?.range?.[0] ?? 0);
    return { line, column: col };
  }

  /** Entries of a mapping, reporting unknown keys (with a suggestion) and non-string keys. */
  entries(
    node: YamlNode | null | undefined,
    path: string,
    allowed: readonly string[] | null,
    what: string,
  ): [string, YamlNode | null, YamlNode][] {
    if (!isMap(node)) {
      this.at(node, path, `expected ${what} (a mapping), found ${typeName(node)}`);
      return [];
    }
    const out: [string, YamlNode | null, YamlNode][] = [];
    for (const pair of node.items) {
      const key = pair.key as YamlNode;
      if (!isScalar(key) || (typeof key.value !== 'string' && typeof key.value !== 'number')) {
        this.at(key, path, 'keys must be plain strings');
        continue;
      }
      const k = String(key.value);
      const sub = join(path, k);
      if (allowed && !allowed.includes(k)) {
        this.at(
          key,
          sub,
          `unknown key \`${k}\` in ${what}${suggest(k, allowed)} (allowed: ${allowed.join(', ')})`,
        );
        continue;
      }
      out.push([k, (pair.value as YamlNode | null) ?? null, key]);
    }
    return out;
  }

  str(node: YamlNode | null, path: string, what = 'a string'): string | undefined {
    if (isScalar(node) && typeof node.value === 'string' && node.value !== '') return node.value;
    if (isScalar(node) && (typeof node.value === 'number' || typeof node.value === 'boolean'))
      return String(node.value);
    const found = isScalar(node) && node.value === '' ? 'an empty string' : typeName(node);
    this.at(node, path, `expected ${what}, found ${found}`);
    return undefined;
  }

  bool(node: YamlNode | null, path: string): boolean | undefined {
    if (isScalar(node) && typeof node.value === 'boolean') return node.value;
    this.at(node, path, `expected true or false, found ${typeName(node)}`);
    return undefined;
  }

  duration(node: YamlNode | null, path: string): number | undefined {
    const v = isScalar(node) ? node.value : undefined;
    const ms = typeof v === 'string' || typeof v === 'number' ? parseDuration(v) : undefined;
    if (ms === undefined)
      this.at(
        node,
        path,
        `expected a duration such as 90s, 10m or 1h30m, found ${isScalar(node) ? JSON.stringify(node.value) : typeName(node)}`,
      );
    return ms;
  }

  /** A string map; numbers and booleans are coerced to strings. */
  stringMap(node: YamlNode | null, path: string, what: string): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [k, v, key] of this.entries(node, path, null, what)) {
      if (!ENV_NAME_RE.test(k)) {
        this.at(
          key,
          join(path, k),
          `\`${k}\` is not a valid variable name: use letters, digits and _, not starting with a digit`,
        );
        continue;
      }
      const text = scalarText(v);
      if (text !== undefined) out[k] = text;
      else if (isScalar(v) && v.value === null) out[k] = '';
      else
        this.at(
          v,
          join(path, k),
          `expected a string value, found ${typeName(v)}: quote it or flatten it into separate variables`,
        );
    }
    return out;
  }

  stringList(node: YamlNode | null, path: string, what: string): string[] {
    if (isScalar(node) && typeof node.value === 'string') return [node.value];
    if (!isSeq(node)) {
      this.at(node, path, `expected ${what} (a list of strings), found ${typeName(node)}`);
      return [];
    }
    const out: string[] = [];
    node.items.forEach((item, i) => {
      const s = this.str(item as YamlNode, `${path}[${i}]`);
      if (s !== undefined) out.push(s);
    });
    return out;
  }
}

/** The text of a string, number or boolean scalar. */
function scalarText(n: unknown): string | undefined {
  if (!isScalar(n)) return undefined;
  const v = n.value;
  return typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean' ? String(v) : undefined;
}

function join(path: string, key: string): string {
  return path ? `${path}.${key}` : key;
}

/** Parses and validates pipeline text. Throws PipelineError with every problem found. */
export function parsePipeline(text: string, file: string): Pipeline {
  if (text.length > MAX_PIPELINE_BYTES) throw tooBig(file, Buffer.byteLength(text));
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  const c = new Checker(file, lc);
  for (const err of doc.errors) {
    c.at(null, '', `YAML syntax: ${err.message.split('\n')[0] ?? err.message}`, err.pos[0]);
  }
  // Aliases are not read (a pipeline says what it means where it means it; and `*a` of a list
  // of lists of `*b`… would multiply). Named here, not as the "empty" value they would read as.
  visit(doc, {
    Alias(_key, node) {
      c.at(
        node,
        '',
        `YAML aliases (\`*${node.source}\`) are not supported in a pipeline: write the value out where it is used (a matrix repeats a job)`,
      );
    },
  });
  if (c.problems.length > 0) throw new PipelineError(sortProblems(c.problems));

  const root = doc.contents as YamlNode | null;
  const top = new Map<string, { value: YamlNode | null; key: YamlNode }>();
  for (const [k, v, key] of c.entries(root, '', TOP_KEYS, 'the pipeline (top level)'))
    top.set(k, { value: v, key });

  let version = 1;
  const v = top.get('version');
  if (v) {
    if (!isScalar(v.value) || (v.value.value !== 1 && v.value.value !== '1'))
      c.at(v.value, 'version', 'unsupported version: the only version is 1 (write `version: 1`)');
  }
  version = 1;
  const nameEntry = top.get('name');
  const name = nameEntry ? (c.str(nameEntry.value, 'name', 'a pipeline name') ?? 'pipeline') : 'pipeline';
  const defImage = top.get('image')
    ? (c.str(top.get('image')?.value ?? null, 'image', 'an image name') ?? DEFAULT_IMAGE)
    : DEFAULT_IMAGE;
  const defDocker = top.get('docker')
    ? parseDocker(c, top.get('docker')?.value ?? null, 'docker')
    : { mode: 'guard' as DockerMode };
  const env = top.get('env') ? c.stringMap(top.get('env')?.value ?? null, 'env', 'env') : {};
  const variables = top.get('variables')
    ? c.stringMap(top.get('variables')?.value ?? null, 'variables', 'variables')
    : {};
  const secrets = top.get('secrets') ? parseSecrets(c, top.get('secrets')?.value ?? null) : [];
  const topServices = top.get('services')
    ? parseServices(c, top.get('services')?.value ?? null, 'services')
    : [];

  const jobsEntry = top.get('jobs');
  const raws: RawJob[] = [];
  if (!jobsEntry) {
    if (isMap(root))
      c.at(
        root,
        '',
        'missing `jobs:`: add a mapping of job names to jobs, e.g. `jobs: { build: { steps: [make] } }`',
      );
  } else {
    const entries = c.entries(jobsEntry.value, 'jobs', null, 'jobs');
    if (isMap(jobsEntry.value) && entries.length === 0 && jobsEntry.value.items.length === 0)
      c.at(jobsEntry.value, 'jobs', 'no jobs: add at least one job');
    for (const [name, node, key] of entries) {
      const path = `jobs.${name}`;
      if (!JOB_NAME_RE.test(name)) {
        c.at(
          key,
          path,
          `invalid job name \`${name}\`: use lowercase letters, digits, _ . - (starting with a letter or digit); job names become parts of container names`,
        );
      }
      const raw = parseJob(c, name, node, key, path, { defImage, defDocker, topServices });
      if (raw) raws.push(raw);
    }
  }

  const jobs = expandAndLink(c, raws);
  if (c.problems.length > 0) throw new PipelineError(sortProblems(c.problems));
  return { file, name, version, jobs, env, variables, secrets };
}

function sortProblems(problems: Problem[]): Problem[] {
  return [...problems].sort(
    (a, b) => a.line - b.line || a.column - b.column || a.message.localeCompare(b.message),
  );
}

function parseDocker(c: Checker, node: YamlNode | null, path: string): DockerSpec {
  const modeOf = (n: YamlNode | null, p: string): DockerMode | undefined => {
    const s = isScalar(n) && typeof n.value === 'string' ? n.value : undefined;
    if (s !== undefined && (DOCKER_MODES as readonly string[]).includes(s)) return s as DockerMode;
    c.at(
      n,
      p,
      `unknown docker mode ${isScalar(n) ? JSON.stringify(n.value) : typeName(n)}: use one of ${DOCKER_MODES.join(', ')}${s ? suggest(s, DOCKER_MODES) : ''}`,
    );
    return undefined;
  };
  if (isScalar(node)) return { mode: modeOf(node, path) ?? 'guard' };
  const entries = c.entries(node, path, DOCKER_KEYS, '`docker`');
  const get = (k: string) => entries.find((e) => e[0] === k);
  const m = get('mode');
  const spec: DockerSpec = { mode: 'guard' };
  if (!m) {
    if (isMap(node))
      c.at(node, path, `missing \`mode\`: add \`mode: guard\` (or ${DOCKER_MODES.join(', ')})`);
  } else spec.mode = modeOf(m[1], `${path}.mode`) ?? 'guard';
  const cache = get('cache');
  if (cache) {
    if (spec.mode !== 'dind')
      c.at(
        cache[2],
        `${path}.cache`,
        '`cache` applies only to `mode: dind`: remove it or switch the mode to dind',
      );
    else {
      const s = c.str(cache[1], `${path}.cache`, 'a cache name');
      if (s !== undefined && !JOB_NAME_RE.test(s))
        c.at(cache[1], `${path}.cache`, `invalid cache name \`${s}\`: use lowercase letters, digits, _ . -`);
      else if (s !== undefined) spec.cache = s;
    }
  }
  const tenant = get('tenant');
  if (tenant) {
    if (spec.mode !== 'guard')
      c.at(
        tenant[2],
        `${path}.tenant`,
        '`tenant` applies only to `mode: guard`: remove it or switch the mode to guard',
      );
    else {
      const s = c.str(tenant[1], `${path}.tenant`, 'a tenant name');
      if (s !== undefined && !TENANT_RE.test(s))
        c.at(
          tenant[1],
          `${path}.tenant`,
          `invalid tenant name \`${s}\`: use lowercase letters, digits, / _ . - (e.g. env/production)`,
        );
      else if (s !== undefined) spec.tenant = s;
    }
  }
  const keep = get('keep');
  if (keep) {
    if (spec.mode !== 'guard')
      c.at(
        keep[2],
        `${path}.keep`,
        '`keep` applies only to `mode: guard`: remove it or switch the mode to guard',
      );
    else {
      const b = c.bool(keep[1], `${path}.keep`);
      if (b !== undefined) {
        if (b && !tenant)
          c.at(
            keep[2],
            `${path}.keep`,
            '`keep: true` needs a `tenant` (e.g. `tenant: env/production`) so later jobs can find the objects',
          );
        spec.keep = b;
      }
    }
  }
  return spec;
}

function parseSecrets(c: Checker, node: YamlNode | null): SecretSpec[] {
  if (!isSeq(node)) {
    c.at(node, 'secrets', `expected a list of secret names or { name, file }, found ${typeName(node)}`);
    return [];
  }
  const out: SecretSpec[] = [];
  node.items.forEach((item, i) => {
    const path = `secrets[${i}]`;
    const n = item as YamlNode;
    if (isScalar(n)) {
      const s = c.str(n, path, 'a secret name');
      if (s !== undefined && !ENV_NAME_RE.test(s))
        c.at(n, path, `\`${s}\` is not a valid variable name: use letters, digits and _`);
      else if (s !== undefined) out.push({ name: s });
      return;
    }
    const entries = c.entries(n, path, SECRET_KEYS, 'a secret');
    const nameE = entries.find((e) => e[0] === 'name');
    const fileE = entries.find((e) => e[0] === 'file');
    if (!nameE) {
      if (isMap(n)) c.at(n, path, 'missing `name`: the environment variable the secret is exposed as');
      return;
    }
    const name = c.str(nameE[1], `${path}.name`, 'a secret name');
    if (name !== undefined && !ENV_NAME_RE.test(name)) {
      c.at(nameE[1], `${path}.name`, `\`${name}\` is not a valid variable name: use letters, digits and _`);
      return;
    }
    const f = fileE ? c.str(fileE[1], `${path}.file`, 'a file path') : undefined;
    if (name !== undefined) out.push(f !== undefined ? { name, file: f } : { name });
  });
  return out;
}

function parseServices(c: Checker, node: YamlNode | null, path: string): ServiceSpec[] {
  const out: ServiceSpec[] = [];
  for (const [name, v, key] of c.entries(node, path, null, '`services`')) {
    const p = join(path, name);
    if (!JOB_NAME_RE.test(name))
      c.at(
        key,
        p,
        `invalid service name \`${name}\`: use lowercase letters, digits, _ . - (it is the service's host name)`,
      );
    if (isScalar(v)) {
      const image = c.str(v, p, 'an image name');
      if (image !== undefined) out.push({ name, image, env: {} });
      continue;
    }
    const entries = c.entries(v, p, SERVICE_KEYS, 'a service');
    const get = (k: string) => entries.find((e) => e[0] === k);
    const svc: ServiceSpec = { name, image: '', env: {} };
    const img = get('image');
    if (!img) {
      if (isMap(v)) c.at(v, p, 'missing `image`: name the image the service runs');
    } else svc.image = c.str(img[1], `${p}.image`, 'an image name') ?? '';
    const e = get('env');
    if (e) svc.env = c.stringMap(e[1], `${p}.env`, 'env');
    const cmd = get('command');
    if (cmd)
      svc.command = isScalar(cmd[1])
        ? ['sh', '-c', c.str(cmd[1], `${p}.command`) ?? '']
        : c.stringList(cmd[1], `${p}.command`, 'a command');
    const ports = get('ports');
    if (ports) {
      if (!isSeq(ports[1]))
        c.at(ports[1], `${p}.ports`, `expected a list of port numbers, found ${typeName(ports[1])}`);
      else {
        svc.ports = [];
        ports[1].items.forEach((it, i) => {
          const n = it as YamlNode;
          if (
            isScalar(n) &&
            typeof n.value === 'number' &&
            Number.isInteger(n.value) &&
            n.value > 0 &&
            n.value < 65536
          )
            svc.ports?.push(n.value);
          else c.at(n, `${p}.ports[${i}]`, 'expected a port number between 1 and 65535');
        });
      }
    }
    const ready = get('ready');
    if (ready) {
      const r = ready[1];
      if (isScalar(r)) {
        const s = c.str(r, `${p}.ready`, 'a readiness command');
        if (s !== undefined) svc.ready = { command: s, timeoutMs: 60_000, intervalMs: 1000 };
      } else {
        const re = c.entries(r, `${p}.ready`, READY_KEYS, '`ready`');
        const rc = re.find((x) => x[0] === 'command');
        const rt = re.find((x) => x[0] === 'timeout');
        const ri = re.find((x) => x[0] === 'interval');
        if (!rc && isMap(r))
          c.at(r, `${p}.ready`, 'missing `command`: a shell command that exits 0 once the service is ready');
        const command = rc ? c.str(rc[1], `${p}.ready.command`, 'a shell command') : undefined;
        const timeoutMs = rt ? c.duration(rt[1], `${p}.ready.timeout`) : 60_000;
        const intervalMs = ri ? c.duration(ri[1], `${p}.ready.interval`) : 1000;
        if (command !== undefined)
          svc.ready = { command, timeoutMs: timeoutMs ?? 60_000, intervalMs: intervalMs ?? 1000 };
      }
    }
    out.push(svc);
  }
  return out;
}

function parseSteps(c: Checker, node: YamlNode | null, path: string): StepSpec[] {
  if (!isSeq(node)) {
    c.at(node, path, `expected a list of shell lines, found ${typeName(node)}`);
    return [];
  }
  if (node.items.length === 0) c.at(node, path, 'no steps: add at least one shell line');
  const out: StepSpec[] = [];
  node.items.forEach((item, i) => {
    const p = `${path}[${i}]`;
    const n = item as YamlNode;
    let run: string | undefined;
    let name: string | undefined;
    if (isScalar(n)) run = c.str(n, p, 'a shell line');
    else if (isMap(n)) {
      const entries = c.entries(n, p, STEP_KEYS, 'a step');
      const r = entries.find((e) => e[0] === 'run');
      const nm = entries.find((e) => e[0] === 'name');
      if (!r) c.at(n, p, 'missing `run`: the shell command of the step');
      else run = c.str(r[1], `${p}.run`, 'a shell command');
      if (nm) name = c.str(nm[1], `${p}.name`, 'a step name');
    } else c.at(n, p, `expected a shell line (or { name, run }), found ${typeName(n)}`);
    if (run !== undefined) out.push({ index: i, run, name: name ?? (run.split('\n')[0] ?? run).trim() });
  });
  return out;
}

function parseJob(
  c: Checker,
  name: string,
  node: YamlNode | null,
  keyNode: YamlNode,
  path: string,
  defs: { defImage: string; defDocker: DockerSpec; topServices: ServiceSpec[] },
): RawJob | undefined {
  const entries = c.entries(node, path, JOB_KEYS, `job \`${name}\``);
  if (!isMap(node)) return undefined;
  const get = (k: string) => entries.find((e) => e[0] === k);
  const job: RawJob['job'] = {
    name,
    image: defs.defImage,
    docker: { ...defs.defDocker },
    needsRaw: [],
    steps: [],
    services: [...defs.topServices],
    env: {},
    workdir: DEFAULT_WORKDIR,
    timeoutMs: undefined,
    artifacts: [],
    when: 'on_success',
    position: c.pos(keyNode),
  };
  const img = get('image');
  if (img) job.image = c.str(img[1], `${path}.image`, 'an image name') ?? job.image;
  const d = get('docker');
  if (d) job.docker = parseDocker(c, d[1], `${path}.docker`);
  const needs = get('needs');
  if (needs) {
    const n = needs[1];
    const items = isSeq(n) ? (n.items as YamlNode[]) : isScalar(n) ? [n] : [];
    if (!isSeq(n) && !isScalar(n))
      c.at(n, `${path}.needs`, `expected a list of job names, found ${typeName(n)}`);
    items.forEach((it, i) => {
      const s = c.str(it, isSeq(n) ? `${path}.needs[${i}]` : `${path}.needs`, 'a job name');
      if (s !== undefined) job.needsRaw.push({ name: s, node: it });
    });
  }
  const steps = get('steps');
  if (!steps) c.at(keyNode, path, `job \`${name}\` has no \`steps\`: add a list of shell lines`);
  else job.steps = parseSteps(c, steps[1], `${path}.steps`);
  const svc = get('services');
  if (svc) {
    const own = parseServices(c, svc[1], `${path}.services`);
    job.services = [...job.services.filter((s) => !own.some((o) => o.name === s.name)), ...own];
  }
  const env = get('env');
  if (env) job.env = c.stringMap(env[1], `${path}.env`, 'env');
  const wd = get('workdir');
  if (wd) {
    const s = c.str(wd[1], `${path}.workdir`, 'an absolute path');
    if (s !== undefined && !s.startsWith('/'))
      c.at(
        wd[1],
        `${path}.workdir`,
        `workdir must be an absolute path inside the container (e.g. /workspace/app), found \`${s}\``,
      );
    else if (s !== undefined) job.workdir = s;
  }
  const t = get('timeout');
  if (t) job.timeoutMs = c.duration(t[1], `${path}.timeout`);
  const a = get('artifacts');
  if (a) job.artifacts = c.stringList(a[1], `${path}.artifacts`, 'artifact paths');
  const w = get('when');
  if (w) {
    const s = isScalar(w[1]) && typeof w[1].value === 'string' ? w[1].value : undefined;
    if (s !== undefined && (WHEN_VALUES as readonly string[]).includes(s)) job.when = s as When;
    else
      c.at(
        w[1],
        `${path}.when`,
        `expected one of ${WHEN_VALUES.join(', ')}${s ? suggest(s, WHEN_VALUES) : ''}`,
      );
  }
  let matrix: RawJob['matrix'];
  const m = get('matrix');
  if (m) {
    const keys: string[] = [];
    const values: string[][] = [];
    for (const [k, v, key] of c.entries(m[1], `${path}.matrix`, null, '`matrix`')) {
      if (!/^[A-Za-z0-9_-]+$/.test(k)) {
        c.at(key, `${path}.matrix.${k}`, `invalid matrix key \`${k}\`: use letters, digits, _ and -`);
        continue;
      }
      if (!isSeq(v) || v.items.length === 0) {
        c.at(v, `${path}.matrix.${k}`, `expected a non-empty list of values, found ${typeName(v)}`);
        continue;
      }
      const vals: string[] = [];
      v.items.forEach((it, i) => {
        const n = it as YamlNode;
        const text = scalarText(n);
        if (text !== undefined) vals.push(text);
        else
          c.at(n, `${path}.matrix.${k}[${i}]`, `expected a string, number or boolean, found ${typeName(n)}`);
      });
      keys.push(k);
      values.push(vals);
    }
    // Counted before anything is expanded (red-team pass 21: seven keys of ten values, 10^7 jobs
    // from 265 bytes, took a server's heap).
    const jobs = values.reduce((n, v) => n * v.length, 1);
    if (jobs > MAX_MATRIX_JOBS)
      c.at(
        m[2],
        `${path}.matrix`,
        `the matrix makes ${jobs} jobs (the product of its lists' lengths); at most ${MAX_MATRIX_JOBS}`,
      );
    else if (keys.length > 0) matrix = { keys, values };
  }
  // ${{ matrix.x }} outside a matrix job, or naming an unknown key.
  checkMatrixRefs(c, node, path, matrix?.keys ?? []);
  return { name, node, keyNode, job, matrix };
}

function checkMatrixRefs(c: Checker, node: YamlNode | null, path: string, keys: string[]): void {
  const visit = (n: unknown, p: string): void => {
    if (isScalar(n) && typeof n.value === 'string') {
      for (const m of n.value.matchAll(MATRIX_REF_RE)) {
        const k = m[1] ?? m[2] ?? '';
        if (!keys.includes(k)) {
          c.at(
            n,
            p,
            keys.length === 0
              ? `\`${m[0]}\` used in a job without \`matrix\`: add a matrix with key \`${k}\` or remove the reference`
              : `unknown matrix key \`${k}\` in \`${m[0]}\`: the matrix has ${keys.join(', ')}${suggest(k, keys)}`,
          );
        }
      }
    } else if (isMap(n)) {
      for (const pair of n.items) {
        const k = isScalar(pair.key) ? String(pair.key.value) : '?';
        if (k === 'matrix' && p === path) continue;
        visit(pair.value, join(p, k));
      }
    } else if (isSeq(n)) n.items.forEach((it, i) => visit(it, `${p}[${i}]`));
  };
  visit(node, path);
}

/** `18` → `18`, `Ubuntu 22.04` → `ubuntu-22.04`: values made container-name safe. */
function safePart(v: string): string {
  return (
    v
      .toLowerCase()
      .replace(/[^a-z0-9_.-]+/g, '-')
      .replace(/^-+|-+$/g, '') || 'x'
  );
}

function cartesian(values: string[][]): string[][] {
  return values.reduce<string[][]>((acc, vals) => acc.flatMap((a) => vals.map((v) => [...a, v])), [[]]);
}

function substitute(s: string, combo: Record<string, string>): string {
  return s.replace(
    MATRIX_REF_RE,
    (all, a: string | undefined, b: string | undefined) => combo[a ?? b ?? ''] ?? all,
  );
}

function expandAndLink(c: Checker, raws: RawJob[]): JobSpec[] {
  const expanded: (JobSpec & { needsRaw: RawJob['job']['needsRaw']; keyNode: YamlNode })[] = [];
  const byBase = new Map<string, string[]>();
  const seen = new Map<string, string>();
  let total = 0;
  for (const raw of raws) {
    total += raw.matrix ? raw.matrix.values.reduce((n, v) => n * v.length, 1) : 1;
    if (total > MAX_JOBS) {
      c.at(
        raw.keyNode,
        `jobs.${raw.name}`,
        `the pipeline has more than ${MAX_JOBS} jobs once its matrices are expanded`,
      );
      break;
    }
    const combos = raw.matrix
      ? cartesian(raw.matrix.values).map((vals) =>
          Object.fromEntries(raw.matrix?.keys.map((k, i) => [k, vals[i] ?? '']) ?? []),
        )
      : [undefined];
    const names: string[] = [];
    for (const combo of combos) {
      const { needsRaw, ...base } = raw.job;
      const sub = (s: string) => (combo ? substitute(s, combo) : s);
      const name = combo ? `${raw.name}-${Object.values(combo).map(safePart).join('-')}` : raw.name;
      const prior = seen.get(name);
      if (prior !== undefined) {
        c.at(
          raw.keyNode,
          `jobs.${raw.name}`,
          `job name \`${name}\` (from ${raw.name}${combo ? ' matrix' : ''}) collides with \`${name}\` from ${prior}: rename one of them`,
        );
        continue;
      }
      seen.set(name, raw.name);
      names.push(name);
      const job: JobSpec & { needsRaw: RawJob['job']['needsRaw']; keyNode: YamlNode } = {
        ...base,
        name,
        image: sub(base.image),
        docker: { ...base.docker },
        needs: [],
        needsRaw,
        keyNode: raw.keyNode,
        steps: base.steps.map((s) => ({ index: s.index, run: sub(s.run), name: sub(s.name) })),
        services: base.services.map((s) => ({
          ...s,
          image: sub(s.image),
          env: Object.fromEntries(Object.entries(s.env).map(([k, v]) => [k, sub(v)])),
        })),
        env: Object.fromEntries(Object.entries(base.env).map(([k, v]) => [k, sub(v)])),
        artifacts: base.artifacts.map(sub),
        workdir: sub(base.workdir),
      };
      if (combo) {
        job.matrix = combo;
        job.base = raw.name;
      }
      expanded.push(job);
    }
    byBase.set(raw.name, names);
  }
  const all = new Set(expanded.map((j) => j.name));
  for (const job of expanded) {
    const path = `jobs.${job.base ?? job.name}.needs`;
    for (const n of job.needsRaw) {
      const targets = byBase.get(n.name) ?? (all.has(n.name) ? [n.name] : undefined);
      if (!targets) {
        c.at(
          n.node,
          path,
          `unknown job \`${n.name}\`: needs must name jobs of this file${suggest(n.name, [...byBase.keys()])}`,
        );
        continue;
      }
      if (targets.includes(job.name) || (job.base !== undefined && n.name === job.base)) {
        c.at(n.node, path, `job \`${job.base ?? job.name}\` cannot need itself`);
        continue;
      }
      for (const t of targets) if (!job.needs.includes(t)) job.needs.push(t);
    }
  }
  // De-duplicate problems from matrix expansions of one job (same node, same message).
  reportCycles(c, expanded);
  const dedup = new Map<string, Problem>();
  for (const p of c.problems) dedup.set(`${p.line}:${p.column}:${p.path}:${p.message}`, p);
  c.problems.splice(0, c.problems.length, ...dedup.values());
  return expanded.map(({ needsRaw: _n, keyNode: _k, ...j }) => j);
}

function reportCycles(c: Checker, jobs: (JobSpec & { keyNode: YamlNode })[]): void {
  const byName = new Map(jobs.map((j) => [j.name, j]));
  const state = new Map<string, 1 | 2>();
  const stack: string[] = [];
  const reported = new Set<string>();
  const visit = (name: string): void => {
    state.set(name, 1);
    stack.push(name);
    for (const dep of byName.get(name)?.needs ?? []) {
      const s = state.get(dep);
      if (s === 1) {
        const cycle = [...stack.slice(stack.indexOf(dep)), dep];
        const key = [...new Set(cycle)].sort().join(',');
        if (!reported.has(key)) {
          reported.add(key);
          const first = byName.get(dep);
          c.at(
            first?.keyNode,
            `jobs.${first?.base ?? dep}.needs`,
            `cycle in needs: ${cycle.join(' -> ')}: remove one of these needs`,
          );
        }
      } else if (s === undefined) visit(dep);
    }
    stack.pop();
    state.set(name, 2);
  };
  for (const j of jobs) if (!state.has(j.name)) visit(j.name);
}
