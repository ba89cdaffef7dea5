/** `berth run` over whole pipelines: parallel jobs, secrets, vars, job selection, invalid files. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { defaultStoreDir } from '../../src/runner/index.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { berth } from '../support/index.js';
import { LABEL_ARG, jobStatus, leftovers, logLines, removeRun, runJson, workspace } from './helpers.js';

const PARALLEL = `
name: parallel
image: berth-local/busybox
docker: none
jobs:
${['a', 'b', 'c']
  .map(
    (j) => `  ${j}:
    services:
      web:
        image: berth-local/busybox
        command: mkdir -p /www && echo service-of-${j} > /www/index.html && httpd -f -p 80 -h /www
        ready: wget -q -O- http://127.0.0.1/
    steps:
      - echo $(wget -q -O- http://web/) > /workspace/${j}.seen
      - touch /workspace/${j}.running; for i in $(seq 1 100); do [ -e /workspace/a.running ] && [ -e /workspace/b.running ] && [ -e /workspace/c.running ] && break; sleep 0.1; done
      - cat /workspace/${j}.seen; ls /workspace | grep -c running
`,
  )
  .join('')}
`;

test('independent jobs run in parallel, each with its own network and service names; two runs at once do not collide', async () => {
  using ws1 = workspace(PARALLEL);
  using ws2 = workspace(PARALLEL);
  const [r1, r2] = await Promise.all([
    runJson(ws1.file, ['--parallel', '3']),
    runJson(ws2.file, ['--parallel', '3']),
  ]);
  try {
    for (const r of [r1, r2]) {
      assert.equal(r.code, 0, r.stdout + r.stderr);
      for (const j of ['a', 'b', 'c']) {
        const lines = logLines(r.events, j);
        assert.ok(lines.includes(`service-of-${j}`), `job ${j} reached its own "web": ${lines.join(' | ')}`);
        assert.equal(lines.at(-1), '3', `all three jobs were running at once (seen by ${j})`);
      }
      assert.deepEqual(await leftovers(r.runId), []);
    }
    assert.notEqual(r1.runId, r2.runId);
  } finally {
    await removeRun(r1.runId);
    await removeRun(r2.runId);
  }
});

test('a warning or step name that quotes a secret is masked in the events (red-team pass 34)', async () => {
  // An artifact path named after the secret that is a folder in one artifact and a file in the
  // other: collecting them fails, and the warning quotes the path.
  using ws = workspace(`
name: warned
image: berth-local/busybox
docker: none
secrets: [API_KEY]
jobs:
  clash:
    steps:
      - name: made with key-0123456789
        run: mkdir -p a/d1 "b/d1/$API_KEY" && echo a > "a/d1/$API_KEY"
    artifacts: [a/d1, b/d1]
`);
  const secret = 'key-0123456789';
  const r = await runJson(ws.file, [], { API_KEY: secret });
  try {
    assert.ok(!r.stdout.includes(secret) && !r.stderr.includes(secret), r.stdout + r.stderr);
    const warnings = r.events.flatMap((e) => (e.kind === 'warning' ? [e.message] : []));
    assert.ok(
      warnings.some((m) => m.includes('***')),
      `a warning quoting the masked path: ${JSON.stringify(warnings)}`,
    );
    const names = r.events.flatMap((e) => (e.kind === 'step.started' ? [e.name] : []));
    assert.deepEqual(names, ['made with ***']);
  } finally {
    await removeRun(r.runId);
  }
});

test('artifacts past the bound on files and folders: the warning names that bound', async () => {
  using ws = workspace(`
name: many
image: berth-local/busybox
docker: none
jobs:
  many:
    steps:
      - mkdir out && cd out && seq 1 10050 | xargs touch
    artifacts: [out]
`);
  const r = await runJson(ws.file);
  try {
    assert.equal(r.code, 0, r.stderr);
    const warnings = r.events.flatMap((e) => (e.kind === 'warning' ? [e.message] : []));
    assert.ok(
      warnings.some((m) => /^artifacts: over 10000 files and folders; /.test(m)),
      JSON.stringify(warnings),
    );
  } finally {
    await removeRun(r.runId);
  }
});

test('what steps see, later wins: CI variables, variables, --var, env, job env, secrets', async () => {
  using ws = workspace(`
name: precedence
image: berth-local/busybox
docker: none
variables: { A: variables, B: variables, C: variables, D: variables, E: variables, CI: variables }
env: { C: top-env, D: top-env, E: top-env }
secrets: [E]
jobs:
  p:
    env: { D: job-env, E: job-env }
    steps:
      - echo "A=$A B=$B C=$C D=$D E-length=\${#E} CI=$CI job=$BERTH_JOB"
`);
  const secret = 'the-secret-of-e';
  const r = await runJson(ws.file, ['--var', 'B=var', '--var', 'C=var'], { E: secret });
  try {
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(logLines(r.events, 'p'), [
      `A=variables B=var C=top-env D=job-env E-length=${secret.length} CI=variables job=p`,
    ]);
  } finally {
    await removeRun(r.runId);
  }
});

test('secrets are masked in live output (JSON and text) and saved logs; --var reaches the steps', async () => {
  using ws = workspace(`
name: secrets
image: berth-local/busybox
docker: none
secrets: [DEPLOY_TOKEN]
jobs:
  s:
    steps:
      - echo "token=$DEPLOY_TOKEN"
      - echo "$DEPLOY_TOKEN" >&2
      - echo "greeting=$GREETING"
      - echo "in the middle xx\${DEPLOY_TOKEN}yy of a line"
`);
  const secret = 's3cr3t-value-42';
  const r = await runJson(ws.file, ['--var', 'GREETING=hello there'], { DEPLOY_TOKEN: secret });
  try {
    assert.equal(r.code, 0, r.stderr);
    assert.ok(!r.stdout.includes(secret), 'no secret in the live output');
    const log = readFileSync(join(defaultStoreDir(ws.path), 'runs', r.runId, 's.log'), 'utf8');
    assert.ok(!log.includes(secret), 'no secret in the saved log');
    assert.deepEqual(logLines(r.events, 's'), [
      'token=***',
      '***',
      'greeting=hello there',
      'in the middle xx***yy of a line',
    ]);
    const text = await berth(['run', ws.file, ...LABEL_ARG], {
      env: { DEPLOY_TOKEN: secret, NO_COLOR: '1', BERTH_NO_REAP_ON_START: '1' },
    });
    assert.equal(text.code, 0);
    assert.ok(!text.stdout.includes(secret) && text.stdout.includes('token=***'));
    const textRun = /run (\S+) passed/.exec(text.stdout)?.[1] ?? '';
    assert.deepEqual(await leftovers(textRun), []);
  } finally {
    await removeRun(r.runId);
  }
});

test('--job runs the named job and what it needs, nothing else', async () => {
  using ws = workspace(`
name: select
image: berth-local/busybox
docker: none
jobs:
  base: { steps: [echo base] }
  mid: { needs: [base], steps: [echo mid] }
  top: { needs: [mid], steps: [echo top] }
  other: { steps: [echo other] }
`);
  const r = await runJson(ws.file, ['--job', 'mid']);
  try {
    assert.equal(r.code, 0, r.stderr);
    const started = r.events.flatMap((e) => (e.kind === 'job.started' ? [e.job] : []));
    assert.deepEqual(started, ['base', 'mid']);
    assert.equal(jobStatus(r.events, 'top'), undefined);
    const bad = await berth(['run', ws.file, '--job', 'nope', ...LABEL_ARG]);
    assert.equal(bad.code, 64);
    assert.match(bad.stderr, /--job nope: no such job/);
  } finally {
    await removeRun(r.runId);
  }
});

test('a matrix job’s steps get its values as BERTH_MATRIX_<KEY>; the job’s env may set them', async () => {
  using ws = workspace(`
name: matrix
image: berth-local/busybox
docker: none
jobs:
  t:
    matrix: { node-version: ["18", "20"], os: [linux] }
    steps: ['echo "node=$BERTH_MATRIX_NODE_VERSION os=$BERTH_MATRIX_OS"']
  u:
    matrix: { os: [linux] }
    env: { BERTH_MATRIX_OS: mine }
    steps: ['echo "os=$BERTH_MATRIX_OS"']
`);
  const r = await runJson(ws.file);
  try {
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(logLines(r.events, 't-18-linux'), ['node=18 os=linux']);
    assert.deepEqual(logLines(r.events, 't-20-linux'), ['node=20 os=linux']);
    assert.deepEqual(logLines(r.events, 'u-linux'), ['os=mine']);
  } finally {
    await removeRun(r.runId);
  }
});

test('invalid pipelines exit 2 with file, line and what to change, and start nothing', async () => {
  const cases: [string, RegExp][] = [
    [
      'jobs:\n  a:\n    steps:\n      - echo hi\n    needs: [ghost]\n',
      /berth\.yml:5:\d+: jobs\.a\.needs: unknown job `ghost`/,
    ],
    [
      'jobs:\n  a:\n    stepz:\n      - echo hi\n',
      /berth\.yml:3:5: jobs\.a\.stepz: unknown key `stepz`.*did you mean `steps`/,
    ],
    [
      'jobs:\n  a:\n    docker: magic\n    steps: [echo]\n',
      /berth\.yml:3:13: jobs\.a\.docker: unknown docker mode "magic": use one of guard, dind, host, none/,
    ],
    [
      'jobs:\n  a: { needs: [b], steps: [x] }\n  b: { needs: [a], steps: [x] }\n',
      /cycle in needs: a -> b -> a/,
    ],
    [
      'jobs:\n  a:\n    timeout: soon\n    steps: [x]\n',
      /berth\.yml:3:14: jobs\.a\.timeout: expected a duration/,
    ],
    ['jobs: [\n', /berth\.yml:\d+:\d+: YAML syntax: Flow sequence/],
    [
      'jobs:\n  a:\n    docker: { mode: guard, keep: true }\n    steps: [x]\n',
      /jobs\.a\.docker\.keep: `keep: true` needs a `tenant`/,
    ],
  ];
  for (const [yaml, expected] of cases) {
    using ws = workspace(yaml);
    const r = await berth(['run', ws.file, ...LABEL_ARG]);
    assert.equal(r.code, 2, `${yaml}\n${r.stderr}`);
    assert.match(r.stderr, expected);
    assert.equal(r.stdout, '', 'nothing ran');
  }
  const missing = await berth(['run', '/nonexistent/berth.yml']);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /\/nonexistent\/berth\.yml: no such pipeline file/);
});
