#!/usr/bin/env node
// The test runner: node's own test runner (via tsx for TypeScript) over every *.test.ts, plus a
// leak check after the run: no container, network, volume or process of this test session may
// remain. In CI (CI=true) the check is strict: anything on the engine that was not there before
// the run — images included — is a leak. Locally it is scoped to objects and processes carrying
// this run's session id, so several developers' runs can share one engine.
//
//   node scripts/run-tests.mjs [--unit | --integration | --e2e] [file-or-substring …]
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  readdirSync,
  readFileSync,
  statSync,
  lstatSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  writeFileSync,
  rmSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const args = process.argv.slice(2);
const only = args.find((a) => ['--unit', '--integration', '--e2e'].includes(a));
const filters = args.filter((a) => !a.startsWith('--'));

function* walk(dir) {
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) {
    if (name === 'node_modules' || name === 'dist' || name.startsWith('.')) continue;
    const p = join(dir, name);
    if (statSync(p).isDirectory()) yield* walk(p);
    else if (p.endsWith('.test.ts')) yield relative(root, p);
  }
}

const kindOf = (f) => (f.startsWith('test/') ? 'e2e' : f.endsWith('.int.test.ts') ? 'integration' : 'unit');
let files = [...walk(join(root, 'src')), ...walk(join(root, 'test'))].sort();
if (only) files = files.filter((f) => kindOf(f) === only.slice(2));
if (filters.length) files = files.filter((f) => filters.some((s) => f.includes(s)));
if (files.length === 0) {
  console.error('no test files matched');
  process.exit(1);
}

const session = process.env.BERTH_TEST_SESSION ?? `ts${randomBytes(4).toString('hex')}`;
const strict = process.env.CI === 'true' || process.env.BERTH_LEAK_CHECK === 'strict';
const needsEngine = files.some((f) => kindOf(f) !== 'unit');
const docker = existsSync('/usr/bin/docker') ? '/usr/bin/docker' : 'docker';

function engineSnapshot() {
  const q = (what) => {
    try {
      return execFileSync(docker, what, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
        .split('\n')
        .filter(Boolean);
    } catch {
      return null;
    }
  };
  const c = q(['ps', '-aq', '--no-trunc']);
  if (c === null) return null;
  return {
    containers: c,
    networks: q(['network', 'ls', '-q', '--no-trunc']) ?? [],
    volumes: q(['volume', 'ls', '-q']) ?? [],
    // With intermediate layers: a build or pull a test made and did not remove shows here.
    images: q(['image', 'ls', '-a', '-q', '--no-trunc']) ?? [],
  };
}

function labelled(kind) {
  const cmd =
    kind === 'containers'
      ? ['ps', '-a', '--format', '{{.ID}} {{.Names}} {{.Labels}}']
      : kind === 'networks'
        ? ['network', 'ls', '--format', '{{.ID}} {{.Name}} {{.Labels}}']
        : ['volume', 'ls', '--format', '{{.Name}} {{.Labels}}'];
  try {
    return execFileSync(docker, cmd, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .split('\n')
      .filter((l) => l.includes(session));
  } catch {
    return [];
  }
}

function sessionProcesses() {
  const found = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid) || Number(pid) === process.pid) continue;
    try {
      const env = readFileSync(`/proc/${pid}/environ`, 'utf8');
      if (env.split('\0').includes(`BERTH_TEST_SESSION=${session}`)) {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').trim();
        found.push(`${pid} ${cmd}`);
      }
    } catch {
      /* gone or not ours */
    }
  }
  return found;
}

// Live sessions are registered by pid, so a run can tell a dead run's leftovers (a run killed
// mid-way cannot clean up after itself) from a neighbour's objects, and remove them first.
// One folder per user, made private and checked as ours: in a shared /tmp another user could have
// made it first and fed us pids (or a symlink).
const sessionsDir = join(tmpdir(), `berth-test-sessions-${process.getuid?.() ?? 'user'}`);
mkdirSync(sessionsDir, { recursive: true, mode: 0o700 });
{
  const st = lstatSync(sessionsDir);
  if (!st.isDirectory() || (process.getuid && st.uid !== process.getuid()) || (st.mode & 0o077) !== 0) {
    console.error(`${sessionsDir} is not a private folder of this user; remove it and run again`);
    process.exit(2);
  }
}
const sessionFile = join(sessionsDir, session);
writeFileSync(sessionFile, String(process.pid));
const alive = (pid) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
};
function liveSession(id) {
  try {
    return alive(Number(readFileSync(join(sessionsDir, id), 'utf8')));
  } catch {
    return false;
  }
}
function reapDeadSessions() {
  const run = (...a) => {
    try {
      return execFileSync(docker, a, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    } catch {
      return '';
    }
  };
  const key = 'io.berth.test-session';
  const fmt = `{{.ID}} {{.Label "${key}"}}`;
  const dead = (out) =>
    out
      .split('\n')
      .map((l) => l.split(' '))
      .filter(([id, s]) => id && s && s !== session && !liveSession(s));
  const removed = { containers: 0, networks: 0, volumes: 0, tags: 0 };
  for (const [id] of dead(run('ps', '-a', '--filter', `label=${key}`, '--format', fmt)))
    if (run('rm', '-fv', id)) removed.containers++;
  for (const [id] of dead(run('network', 'ls', '--filter', `label=${key}`, '--format', fmt)))
    if (run('network', 'rm', id)) removed.networks++;
  for (const [id] of dead(
    run('volume', 'ls', '--filter', `label=${key}`, '--format', `{{.Name}} {{.Label "${key}"}}`),
  ))
    if (run('volume', 'rm', '-f', id)) removed.volumes++;
  // Tags: the tests name their repositories berth-…-<session>[-…] (berth-atk-load-ts1a2b3c4d, on a
  // test registry 127.0.0.1:PORT/berth-…), and images they build carry the session label.
  const sessionOf = (repo) =>
    /^(?:[^/]+\/)?berth-[a-z0-9-]*?-(ts[0-9a-f]{8})(?:-[a-z0-9-]*)?$/.exec(repo)?.[1];
  const deadSession = (s) => s !== undefined && s !== session && !liveSession(s);
  const refs = run('image', 'ls', '--digests', '--format', '{{.Repository}} {{.Tag}} {{.Digest}}')
    .split('\n')
    .map((l) => l.split(' '))
    .filter(([repo = '']) => deadSession(sessionOf(repo)))
    .map(([repo, tag, digest]) => (tag && tag !== '<none>' ? `${repo}:${tag}` : `${repo}@${digest}`));
  for (const ref of new Set(refs)) if (run('image', 'rm', ref)) removed.tags++;
  const labelled = run('image', 'ls', '-aq', '--no-trunc', '--filter', `label=${key}`).split('\n');
  const imageFmt = `{{.Id}} {{index .Config.Labels "${key}"}}`;
  if (labelled.some(Boolean))
    for (const [id] of dead(run('image', 'inspect', '--format', imageFmt, ...labelled.filter(Boolean))))
      if (run('image', 'rm', id)) removed.tags++;
  if (removed.containers + removed.networks + removed.volumes + removed.tags)
    console.log(
      `removed leftovers of killed test runs: ${removed.containers} containers, ${removed.networks} networks, ${removed.volumes} volumes, ${removed.tags} image references`,
    );
  for (const f of readdirSync(sessionsDir))
    if (f !== session && !liveSession(f)) rmSync(join(sessionsDir, f), { force: true });
}
if (needsEngine) reapDeadSessions();

const before = needsEngine && strict ? engineSnapshot() : null;
const concurrency = process.env.BERTH_TEST_CONCURRENCY ?? '3';
console.log(
  `berth tests: ${files.length} files, session ${session}, leak check ${strict ? 'strict' : 'session-scoped'}`,
);

// The runs' stores (berth run keeps them outside the workspace): this session's own, removed after.
const stateDir = mkdtempSync(join(tmpdir(), 'berth-test-state-'));
const child = spawn(
  process.execPath,
  ['--import', 'tsx', '--test', `--test-concurrency=${concurrency}`, '--test-reporter=spec', ...files],
  {
    cwd: root,
    stdio: 'inherit',
    env: { ...process.env, BERTH_TEST_SESSION: session, BERTH_STATE_DIR: stateDir },
  },
);
const code = await new Promise((resolve) => child.on('exit', (c, sig) => resolve(c ?? (sig ? 1 : 0))));
rmSync(stateDir, { recursive: true, force: true });

// Leak check. Give asynchronous cleanups a moment to land, then look.
await new Promise((r) => setTimeout(r, 500));
const leaks = [];
for (const p of sessionProcesses()) leaks.push(`process ${p}`);
if (needsEngine) {
  for (const kind of ['containers', 'networks', 'volumes'])
    for (const l of labelled(kind)) leaks.push(`${kind}: ${l}`);
  if (before) {
    const after = engineSnapshot();
    if (after) {
      for (const kind of ['containers', 'networks', 'volumes', 'images']) {
        const was = new Set(before[kind]);
        for (const id of after[kind])
          if (!was.has(id)) leaks.push(`${kind}: ${id} (new since the run started)`);
      }
    }
  }
}
rmSync(sessionFile, { force: true });
const unique = [...new Set(leaks)];
if (unique.length) {
  console.error(`\nleak check: FAILED, ${unique.length} leftover(s) after the tests:`);
  for (const l of unique) console.error(`  ${l}`);
  process.exit(1);
}
console.log(
  `leak check: ok (no containers, networks, volumes${before ? ', images' : ''} or processes left behind)`,
);
process.exit(code);
