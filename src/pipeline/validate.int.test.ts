import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, berth, run, tempDir } from '../../test/support/index.js';

test('berth validate: exit 0 and the stages for a valid pipeline', async () => {
  using dir = tempDir();
  const file = join(dir.path, 'berth.yml');
  writeFileSync(
    file,
    'jobs:\n  build: { steps: [make] }\n  test:\n    needs: [build]\n    matrix: { n: [1, 2] }\n    steps: [make test]\n',
  );
  const r = await berth(['validate', file]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `${file}: valid (3 jobs)\n  stage 1: build\n  stage 2: test-1, test-2\n`);
  const j = await berth(['validate', '--json', file]);
  assert.equal(j.code, 0, j.stderr);
  const parsed = JSON.parse(j.stdout) as { valid: boolean; layers: string[][] };
  assert.equal(parsed.valid, true);
  assert.deepEqual(parsed.layers, [['build'], ['test-1', 'test-2']]);
});

test('berth validate: exit 2 with every problem as file:line:col: path: message', async () => {
  using dir = tempDir();
  const file = join(dir.path, 'berth.yml');
  writeFileSync(file, 'jobs:\n  a:\n    needs: [b]\n    steps: [x]\n  b:\n    needs: [a]\n    stpes: [x]\n');
  const r = await berth(['validate', file]);
  assert.equal(r.code, 2);
  assert.equal(r.stdout, '');
  assert.equal(
    r.stderr,
    [
      `${file}:2:3: jobs.a.needs: cycle in needs: a -> b -> a: remove one of these needs`,
      `${file}:5:3: jobs.b: job \`b\` has no \`steps\`: add a list of shell lines`,
      `${file}:7:5: jobs.b.stpes: unknown key \`stpes\` in job \`b\` — did you mean \`steps\`? (allowed: image, docker, needs, steps, services, env, workdir, timeout, artifacts, when, matrix)`,
      `${file}: 3 problems`,
      '',
    ].join('\n'),
  );
  const j = await berth(['validate', '--json', file]);
  assert.equal(j.code, 2);
  const parsed = JSON.parse(j.stdout) as { valid: boolean; problems: { line: number; path: string }[] };
  assert.equal(parsed.valid, false);
  assert.deepEqual(
    parsed.problems.map((p) => [p.line, p.path]),
    [
      [2, 'jobs.a.needs'],
      [5, 'jobs.b'],
      [7, 'jobs.b.stpes'],
    ],
  );
});

test('berth validate: a missing file exits 2 with PIPELINE_NOT_FOUND', async () => {
  using dir = tempDir();
  const r = await berth(['validate', join(dir.path, 'nope.yml')]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /nope\.yml: no such pipeline file/);
});

test('berth validate: the default file is ./berth.yml', async () => {
  using dir = tempDir();
  writeFileSync(join(dir.path, 'berth.yml'), 'jobs:\n  only: { steps: [true] }\n');
  // tsx resolved from this repo, since the CLI runs with the temp dir as its working directory.
  const tsx = import.meta.resolve('tsx');
  const r = await run(process.execPath, ['--import', tsx, join(ROOT, 'src/cli/main.ts'), 'validate'], {
    cwd: dir.path,
  });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, 'berth.yml: valid (1 job)\n  stage 1: only\n');
});
