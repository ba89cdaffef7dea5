/** `berth run` in each docker mode: the job gets exactly the Docker its pipeline asks for. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { defaultStoreDir } from '../../src/runner/index.js';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { images } from '../../src/engine/index.js';
import { engine } from '../support/index.js';
import { jobStatus, logLines, runChecked, workspace } from './helpers.js';

test('docker: none — steps run in order in /workspace, no Docker inside, history and logs saved', async () => {
  using ws = workspace(`
name: none-mode
image: berth-local/busybox
docker: none
jobs:
  only:
    steps:
      - echo one > /workspace/out.txt
      - name: second
        run: echo two >> out.txt && cat out.txt && pwd
      - test -z "$DOCKER_HOST$COMPOSE_PROJECT_NAME" && ! test -S /var/run/docker.sock && echo no-docker
    artifacts: [out.txt]
`);
  await runChecked((r) => {
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(logLines(r.events, 'only'), ['one', 'two', '/workspace', 'no-docker']);
    assert.equal(readFileSync(join(ws.path, 'out.txt'), 'utf8'), 'one\ntwo\n');
    assert.ok(existsSync(join(defaultStoreDir(ws.path), 'berth.db')));
    const log = readFileSync(join(defaultStoreDir(ws.path), 'runs', r.runId, 'only.log'), 'utf8');
    assert.match(log, /--- step 2: second\none\ntwo\n/);
    const artifact = join(defaultStoreDir(ws.path), 'runs', r.runId, 'artifacts', 'only', 'out.txt');
    assert.equal(readFileSync(artifact, 'utf8'), 'one\ntwo\n', 'artifact copied out of the job');
  }, ws.file);
});

test('docker: host — the raw engine socket, with a loud warning', async () => {
  using ws = workspace(`
name: host-mode
jobs:
  h:
    docker: host
    steps:
      - docker version --format 'server {{.Server.APIVersion}}'
`);
  await runChecked((r) => {
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.ok(logLines(r.events, 'h').some((l) => /^server 1\.\d+$/.test(l)));
    const warning = r.events.find((e) => e.kind === 'warning');
    assert.ok(warning?.kind === 'warning' && /host's Docker socket/.test(warning.message));
  }, ws.file);
});

test('docker: guard (default) — /workspace translated for nested bind mounts, job objects removed at the end', async () => {
  using ws = workspace(`
name: guard-mode
jobs:
  g:
    steps:
      - echo from-the-workspace > /workspace/data.txt
      - docker run --rm --network none -v /workspace:/src berth-local/busybox cat /src/data.txt
      - docker run -d --network none --name left-running berth-local/busybox sleep 300
      - docker volume create job-volume
      - docker ps --format '{{.Names}}'
      - echo "compose=$COMPOSE_PROJECT_NAME"
`);
  await runChecked((r) => {
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const lines = logLines(r.events, 'g');
    assert.ok(lines.includes('from-the-workspace'), lines.join('\n'));
    assert.ok(lines.includes('left-running'), 'the job sees its own container');
    // The job's own container list shows only what it created, not the job container itself.
    assert.ok(!lines.some((l) => l.startsWith(`berth-${r.runId}`)), lines.join('\n'));
    // docker-compose projects of their own per job (not /workspace's name, shared by every job).
    assert.ok(lines.includes(`compose=${r.runId}-g`), lines.join('\n'));
  }, ws.file);
});

test('docker: dind — a nested daemon per job: builds land in it, not on the host; sidecar removed at the end', async () => {
  using ws = workspace(`
name: dind-mode
jobs:
  d:
    docker: dind
    steps:
      - docker info --format 'driver {{.Driver}}'
      - echo payload > /workspace/f
      - printf 'FROM scratch\\nCOPY f /f\\n' > /workspace/Dockerfile.nested
      - docker build -q -t nested-only:1 -f Dockerfile.nested . >/dev/null
      - docker images --format '{{.Repository}}:{{.Tag}}'
`);
  await runChecked(async (r) => {
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal(jobStatus(r.events, 'd'), 'passed');
    const lines = logLines(r.events, 'd');
    assert.ok(
      lines.some((l) => /^driver \S+$/.test(l)),
      lines.join('\n'),
    );
    const listed = lines.filter((l) => !l.startsWith('driver '));
    assert.ok(listed.includes('nested-only:1'), listed.join(', '));
    assert.ok(
      listed.every((l) => l === 'nested-only:1' || l.startsWith('berth-local/')),
      `the nested daemon holds what the job built and the preloaded berth-local images only: ${listed.join(', ')}`,
    );
    using c = engine();
    assert.equal(await images(c).find('nested-only:1'), undefined, 'the host engine never saw the build');
  }, ws.file);
});
