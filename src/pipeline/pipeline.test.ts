import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import {
  PipelineError,
  formatProblems,
  gitInfo,
  loadPipeline,
  maskSecrets,
  parseDuration,
  parsePipeline,
  plan,
} from './index.js';

/** Problems of `text` as `line:col path: message` strings (throws if the text is valid). */
function problems(text: string): string[] {
  try {
    parsePipeline(text, 'berth.yml');
  } catch (err) {
    assert.ok(err instanceof PipelineError, String(err));
    assert.equal(err.code, 'PIPELINE_INVALID');
    assert.equal(err.exitCode, 2);
    return err.problems.map((p) => `${p.line}:${p.column} ${p.path}: ${p.message}`);
  }
  assert.fail('expected the pipeline to be invalid');
}

test('a minimal pipeline gets every default', () => {
  const p = parsePipeline('jobs:\n  build:\n    steps: [make]\n', 'berth.yml');
  assert.equal(p.version, 1);
  assert.equal(p.name, 'pipeline');
  assert.deepEqual(p.jobs, [
    {
      name: 'build',
      image: 'berth-local/tools',
      docker: { mode: 'guard' },
      needs: [],
      steps: [{ index: 0, run: 'make', name: 'make' }],
      services: [],
      env: {},
      workdir: '/workspace',
      timeoutMs: undefined,
      artifacts: [],
      when: 'on_success',
      position: { line: 2, column: 3 },
    },
  ]);
});

test('a full pipeline resolves every field', () => {
  const text = `version: 1
name: webapp
image: berth-local/busybox
docker: host
env: { A: 1, B: true, C: x }
variables: { REGISTRY_USER: me }
secrets: [TOKEN, { name: KEY, file: key.txt }]
services:
  db: berth-local/db
  cache: { image: berth-local/cache, command: [cache, --port, "6379"] }
jobs:
  build:
    image: berth-local/tools
    docker: { mode: dind, cache: layers }
    env: { A: job }
    workdir: /workspace/app
    timeout: 1h30m
    artifacts: [dist/, out.txt]
    services:
      db:
        image: berth-local/db2
        env: { PORT: 5432 }
        ports: [5432]
        ready: { command: pg_isready, timeout: 30s, interval: 500ms }
    steps:
      - make
      - name: test
        run: |
          make test
          make check
  notify:
    needs: [build]
    when: always
    steps: [echo done]
`;
  const p = parsePipeline(text, 'berth.yml');
  assert.equal(p.name, 'webapp');
  assert.deepEqual(p.env, { A: '1', B: 'true', C: 'x' });
  assert.deepEqual(p.variables, { REGISTRY_USER: 'me' });
  assert.deepEqual(p.secrets, [{ name: 'TOKEN' }, { name: 'KEY', file: 'key.txt' }]);
  const [build, notify] = p.jobs;
  assert.ok(build && notify);
  assert.equal(build.image, 'berth-local/tools');
  assert.deepEqual(build.docker, { mode: 'dind', cache: 'layers' });
  assert.deepEqual(build.env, { A: 'job' });
  assert.equal(build.workdir, '/workspace/app');
  assert.equal(build.timeoutMs, 5_400_000);
  assert.deepEqual(build.artifacts, ['dist/', 'out.txt']);
  assert.deepEqual(build.services, [
    { name: 'cache', image: 'berth-local/cache', env: {}, command: ['cache', '--port', '6379'] },
    {
      name: 'db',
      image: 'berth-local/db2',
      env: { PORT: '5432' },
      ports: [5432],
      ready: { command: 'pg_isready', timeoutMs: 30_000, intervalMs: 500 },
    },
  ]);
  assert.deepEqual(build.steps, [
    { index: 0, run: 'make', name: 'make' },
    { index: 1, run: 'make test\nmake check\n', name: 'test' },
  ]);
  assert.equal(notify.image, 'berth-local/busybox');
  assert.deepEqual(notify.docker, { mode: 'host' });
  assert.deepEqual(notify.needs, ['build']);
  assert.equal(notify.when, 'always');
  assert.deepEqual(
    notify.services.map((s) => s.image),
    ['berth-local/db', 'berth-local/cache'],
  );
});

test('many problems are reported together, sorted by position, with file, line and column', () => {
  const text = `verison: 1
jobs:
  Build:
    stepz: [x]
  test:
    needs: [biuld]
    timeout: 10 minutes
    when: allways
    steps:
      - run: echo
        nam: x
`;
  assert.deepEqual(problems(text), [
    '1:1 verison: unknown key `verison` in the pipeline (top level) — did you mean `version`? (allowed: version, name, image, docker, env, variables, secrets, services, jobs)',
    '3:3 jobs.Build: invalid job name `Build`: use lowercase letters, digits, _ . - (starting with a letter or digit); job names become parts of container names',
    '3:3 jobs.Build: job `Build` has no `steps`: add a list of shell lines',
    '4:5 jobs.Build.stepz: unknown key `stepz` in job `Build` — did you mean `steps`? (allowed: image, docker, needs, steps, services, env, workdir, timeout, artifacts, when, matrix)',
    '6:13 jobs.test.needs: unknown job `biuld`: needs must name jobs of this file — did you mean `Build`?',
    '7:14 jobs.test.timeout: expected a duration such as 90s, 10m or 1h30m, found "10 minutes"',
    '8:11 jobs.test.when: expected one of on_success, always, on_failure — did you mean `always`?',
    '11:9 jobs.test.steps[0].nam: unknown key `nam` in a step — did you mean `name`? (allowed: name, run)',
  ]);
  try {
    parsePipeline(text, 'ci/berth.yml');
  } catch (err) {
    assert.ok(err instanceof PipelineError);
    const first = formatProblems(err.problems).split('\n')[0];
    assert.equal(
      first,
      'ci/berth.yml:1:1: verison: unknown key `verison` in the pipeline (top level) — did you mean `version`? (allowed: version, name, image, docker, env, variables, secrets, services, jobs)',
    );
  }
});

test('YAML syntax errors carry their position', () => {
  const got = problems('jobs:\n  build:\n    steps: [make\n');
  assert.equal(got.length >= 1, true);
  assert.match(got[0] ?? '', /^\d+:\d+ : YAML syntax: /);
  assert.deepEqual(
    problems('jobs:\n  a: {steps: [x]}\n  a: {steps: [y]}\n').map((l) => l.slice(0, 4)),
    ['3:3 '],
  );
});

test('wrong types say what is expected', () => {
  const text = `jobs: []
`;
  assert.deepEqual(problems(text), ['1:7 jobs: expected jobs (a mapping), found a list']);
  assert.deepEqual(
    problems(`env: { A: { b: 1 } }
jobs:
  x:
    steps: echo
    artifacts: 3
    workdir: src
    docker: { mode: dind, keep: true }
`),
    [
      '1:11 env.A: expected a string value, found a mapping: quote it or flatten it into separate variables',
      '4:12 jobs.x.steps: expected a list of shell lines, found a string',
      '5:16 jobs.x.artifacts: expected artifact paths (a list of strings), found a number',
      '6:14 jobs.x.workdir: workdir must be an absolute path inside the container (e.g. /workspace/app), found `src`',
      '7:27 jobs.x.docker.keep: `keep` applies only to `mode: guard`: remove it or switch the mode to guard',
    ],
  );
});

test('docker modes and per-mode options', () => {
  const ok = parsePipeline(
    'jobs:\n  deploy:\n    docker: { mode: guard, tenant: env/production, keep: true }\n    steps: [x]\n',
    'f',
  );
  assert.deepEqual(ok.jobs[0]?.docker, { mode: 'guard', tenant: 'env/production', keep: true });
  assert.deepEqual(
    problems(`jobs:
  a:
    docker: gaurd
    steps: [x]
  b:
    docker: { mode: dind, tenant: t, cache: Big }
    steps: [x]
  c:
    docker: { tenant: env/prod }
    steps: [x]
  d:
    docker: { mode: guard, tenant: Env/Prod, keep: true, privileged: true }
    steps: [x]
  e:
    docker: { mode: guard, keep: true }
    steps: [x]
`),
    [
      '3:13 jobs.a.docker: unknown docker mode "gaurd": use one of guard, dind, host, none — did you mean `guard`?',
      '6:27 jobs.b.docker.tenant: `tenant` applies only to `mode: guard`: remove it or switch the mode to guard',
      '6:45 jobs.b.docker.cache: invalid cache name `Big`: use lowercase letters, digits, _ . -',
      '9:13 jobs.c.docker: missing `mode`: add `mode: guard` (or guard, dind, host, none)',
      '12:36 jobs.d.docker.tenant: invalid tenant name `Env/Prod`: use lowercase letters, digits, / _ . - (e.g. env/production)',
      '12:58 jobs.d.docker.privileged: unknown key `privileged` in `docker` (allowed: mode, cache, tenant, keep)',
      '15:28 jobs.e.docker.keep: `keep: true` needs a `tenant` (e.g. `tenant: env/production`) so later jobs can find the objects',
    ],
  );
});

test('services: string or object, readiness, unknown keys', () => {
  assert.deepEqual(
    problems(`services:
  db: { image: x, readiness: pg_isready }
  web: { env: { A: b } }
jobs:
  a:
    services:
      q: { image: q, ready: { timeout: 5s }, ports: [http] }
    steps: [x]
`),
    [
      '2:19 services.db.readiness: unknown key `readiness` in a service (allowed: image, env, command, ports, ready)',
      '3:8 services.web: missing `image`: name the image the service runs',
      '7:29 jobs.a.services.q.ready: missing `command`: a shell command that exits 0 once the service is ready',
      '7:54 jobs.a.services.q.ports[0]: expected a port number between 1 and 65535',
    ],
  );
});

test('durations', () => {
  assert.equal(parseDuration('90s'), 90_000);
  assert.equal(parseDuration('10m'), 600_000);
  assert.equal(parseDuration('1h30m'), 5_400_000);
  assert.equal(parseDuration('1h2m3s'), 3_723_000);
  assert.equal(parseDuration('250ms'), 250);
  assert.equal(parseDuration(45), 45_000);
  assert.equal(parseDuration('45'), 45_000);
  assert.equal(parseDuration('0s'), undefined);
  assert.equal(parseDuration('10 minutes'), undefined);
  assert.equal(parseDuration('m'), undefined);
  assert.equal(parseDuration(''), undefined);
});

test('needs: unknown jobs, self, and cycles are named', () => {
  assert.deepEqual(
    problems(`jobs:
  build:
    needs: [deploy]
    steps: [x]
  test:
    needs: [build]
    steps: [x]
  deploy:
    needs: [test, deploy]
    steps: [x]
`),
    [
      '2:3 jobs.build.needs: cycle in needs: build -> deploy -> test -> build: remove one of these needs',
      '9:19 jobs.deploy.needs: job `deploy` cannot need itself',
    ],
  );
});

test('matrix expands into container-safe jobs with substitution; needs on a matrix job means all', () => {
  const p = parsePipeline(
    `jobs:
  test:
    matrix:
      node: [18, 20]
      os: [Debian 12]
    image: "node:\${{ matrix.node }}"
    env: { OS: "\${matrix.os}" }
    steps: ["echo \${{matrix.node}} on \${matrix.os}"]
  report:
    needs: [test]
    steps: [x]
`,
    'f',
  );
  assert.deepEqual(
    p.jobs.map((j) => [j.name, j.image, j.env, j.steps[0]?.run, j.matrix, j.base]),
    [
      [
        'test-18-debian-12',
        'node:18',
        { OS: 'Debian 12' },
        'echo 18 on Debian 12',
        { node: '18', os: 'Debian 12' },
        'test',
      ],
      [
        'test-20-debian-12',
        'node:20',
        { OS: 'Debian 12' },
        'echo 20 on Debian 12',
        { node: '20', os: 'Debian 12' },
        'test',
      ],
      ['report', 'berth-local/tools', {}, 'x', undefined, undefined],
    ],
  );
  assert.deepEqual(p.jobs[2]?.needs, ['test-18-debian-12', 'test-20-debian-12']);
});

test('matrix problems: unknown keys, references outside a matrix, name collisions', () => {
  assert.deepEqual(
    problems(`jobs:
  a:
    matrix: { v: [1, [2]], w: x }
    steps: ["echo \${{ matrix.vv }}"]
  b:
    steps: ["echo \${matrix.v}"]
  c:
    matrix: { v: [1] }
    steps: [x]
  c-1:
    steps: [x]
`),
    [
      '3:22 jobs.a.matrix.v[1]: expected a string, number or boolean, found a list',
      '3:31 jobs.a.matrix.w: expected a non-empty list of values, found a string',
      '4:13 jobs.a.steps[0]: unknown matrix key `vv` in `${{ matrix.vv }}`: the matrix has v — did you mean `v`?',
      '6:13 jobs.b.steps[0]: `${matrix.v}` used in a job without `matrix`: add a matrix with key `v` or remove the reference',
      '10:3 jobs.c-1: job name `c-1` (from c-1) collides with `c-1` from c: rename one of them',
    ],
  );
});

test('plan: topological layers, and --job selection pulls in what is needed', () => {
  const p = parsePipeline(
    `jobs:
  lint: { steps: [x] }
  build: { steps: [x] }
  test:
    needs: [build]
    matrix: { n: [1, 2] }
    steps: [x]
  package: { needs: [test, lint], steps: [x] }
  docs: { steps: [x] }
`,
    'f',
  );
  const all = plan(p);
  assert.deepEqual(all.layers, [['lint', 'build', 'docs'], ['test-1', 'test-2'], ['package']]);
  assert.deepEqual(all.dependencies.package, ['test-1', 'test-2', 'lint']);
  const one = plan(p, { only: ['package'] });
  assert.deepEqual(
    one.jobs.map((j) => j.name),
    ['lint', 'build', 'test-1', 'test-2', 'package'],
  );
  assert.deepEqual(plan(p, { only: ['test-2'] }).layers, [['build'], ['test-2']]);
  assert.deepEqual(plan(p, { only: ['test'] }).layers, [['build'], ['test-1', 'test-2']]);
  assert.throws(() => plan(p, { only: ['nope'] }), /no job named `nope`/);
});

test('maskSecrets: longest first, short values ignored, multi-line values line by line', () => {
  assert.equal(maskSecrets('token=abcd1234 and abcd', ['abcd', 'abcd1234']), 'token=*** and ***');
  assert.equal(maskSecrets('x=1 on', ['1', 'on', '']), 'x=1 on');
  assert.equal(maskSecrets('line two of key: BBBBBB', ['AAAAAA\nBBBBBB']), 'line two of key: ***');
  assert.equal(maskSecrets('nothing here', ['secretvalue']), 'nothing here');
});

test('gitInfo: sha and branch inside a repo, undefined outside', () => {
  const dir = mkdtempSync(join(tmpdir(), 'berth-git-'));
  try {
    assert.equal(gitInfo(dir), undefined);
    const git = (...args: string[]) => execFileSync('git', args, { cwd: dir, encoding: 'utf8' }).trim();
    git('init', '-q', '-b', 'feature-x');
    writeFileSync(join(dir, 'f'), 'x');
    git('add', 'f');
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-q', '-m', 'm');
    assert.deepEqual(gitInfo(dir), { sha: git('rev-parse', 'HEAD'), branch: 'feature-x' });
    git('checkout', '-q', '--detach');
    assert.deepEqual(gitInfo(dir), { sha: git('rev-parse', 'HEAD'), branch: undefined });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the example in docs/pipeline.md is valid and plans as documented', () => {
  const md = readFileSync(new URL('../../docs/pipeline.md', import.meta.url), 'utf8');
  const example = /```yaml\n([\s\S]*?)```/.exec(md)?.[1];
  assert.ok(example);
  const p = parsePipeline(example, 'docs/pipeline.md');
  assert.deepEqual(plan(p).layers, [
    ['build', 'build-cached'],
    ['test-1', 'test-2', 'test-3'],
    ['deploy'],
    ['notify'],
  ]);
  assert.deepEqual(p.jobs.find((j) => j.name === 'deploy')?.docker, {
    mode: 'guard',
    tenant: 'env/production',
    keep: true,
  });
  assert.deepEqual(p.jobs.find((j) => j.name === 'test-2')?.env, { SHARD: '2' });
});

test('empty strings are named as such', () => {
  assert.deepEqual(problems('jobs:\n  a:\n    image: ""\n    steps: [{ run: "" }]\n'), [
    '3:12 jobs.a.image: expected an image name, found an empty string',
    '4:20 jobs.a.steps[0].run: expected a shell command, found an empty string',
  ]);
});

test('bounds (red-team pass 21): a matrix of more than 256 jobs, a pipeline of more than 1000, a file over 1 MiB or not a file', () => {
  const seven = Array.from({ length: 7 }, (_, i) => `      k${i}: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]`).join('\n');
  assert.deepEqual(problems(`jobs:\n  bomb:\n    matrix:\n${seven}\n    steps: [x]\n`), [
    "3:5 jobs.bomb.matrix: the matrix makes 10000000 jobs (the product of its lists' lengths); at most 256",
  ]);
  // 256 is fine; five such jobs are over the pipeline's 1000.
  const job = (n: number) =>
    `  j${n}:\n    matrix:\n      a: [${Array.from({ length: 16 }, (_, i) => i).join(', ')}]\n      b: [${Array.from({ length: 16 }, (_, i) => i).join(', ')}]\n    steps: [x]\n`;
  assert.equal(parsePipeline(`jobs:\n${job(0)}`, 'berth.yml').jobs.length, 256);
  const many = problems(`jobs:\n${[0, 1, 2, 3, 4].map(job).join('')}`);
  assert.deepEqual(many, [
    '17:3 jobs.j3: the pipeline has more than 1000 jobs once its matrices are expanded',
  ]);
  assert.throws(
    () => parsePipeline(`jobs:\n  a:\n    steps: [x]\n#${'x'.repeat(1024 * 1024)}\n`, 'big.yml'),
    /big\.yml: the pipeline file is \d+ bytes; at most 1048576 are read/,
  );
  const dir = mkdtempSync(join(tmpdir(), 'berth-bounds-'));
  try {
    assert.throws(() => loadPipeline(dir), /not a regular file/);
    writeFileSync(join(dir, 'berth.yml'), `#${'x'.repeat(1024 * 1024 + 1)}\n`);
    assert.throws(() => loadPipeline(join(dir, 'berth.yml')), /at most 1048576 are read/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('YAML aliases are named as such, not read as empty values (red-team pass 23)', () => {
  assert.deepEqual(problems('x: &a [make]\njobs:\n  a:\n    steps: *a\n').slice(-1), [
    '4:12 : YAML aliases (`*a`) are not supported in a pipeline: write the value out where it is used (a matrix repeats a job)',
  ]);
});
