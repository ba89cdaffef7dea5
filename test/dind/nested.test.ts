/**
 * DinD inside DinD: berth runs in a job container that talks to a nested daemon and starts another
 * nested daemon there with `berth dind up`; the inner daemon runs a container.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { basename } from 'node:path';
import { containers, readLogs } from '../../src/engine/index.js';
import { startDind } from '../../src/dind/index.js';
import { DOCKER_CLI, ROOT, engine, run, sessionLabels, uniqueName } from '../support/index.js';

const HOST = 'unix:///var/run/docker.sock';
const NODE_DIR = '/opt/berth-node';

/** Bind mounts that bring this host's node and its shared libraries into a container, and the command to run it. */
function hostNode(): { binds: string[]; node: string } {
  const out = execFileSync('ldd', [process.execPath], { encoding: 'utf8' });
  const libs = [...out.matchAll(/(\/\S+\.so[.\d]*)/g)].map((m) => m[1] ?? '');
  const loader = libs.find((l) => /ld-linux/.test(l));
  assert.ok(loader, `no loader in ldd output: ${out}`);
  const binds = [`${process.execPath}:${NODE_DIR}/node:ro`];
  for (const l of new Set(libs)) binds.push(`${l}:${NODE_DIR}/lib/${basename(l)}:ro`);
  return {
    binds,
    node: `${NODE_DIR}/lib/${basename(loader)} --library-path ${NODE_DIR}/lib ${NODE_DIR}/node`,
  };
}

async function copyImage(image: string, to: string): Promise<void> {
  const r = await run('sh', ['-c', `${DOCKER_CLI} -H ${HOST} save ${image} | ${DOCKER_CLI} -H ${to} load`], {
    timeoutMs: 300_000,
  });
  assert.equal(r.code, 0, r.stderr);
}

test('berth dind up works inside a job that talks to a nested daemon (DinD in DinD)', async () => {
  using c = engine();
  const outer = await startDind({
    name: uniqueName('outer'),
    network: 'none',
    labels: sessionLabels(),
    readyTimeoutMs: 90_000,
  });
  let jobId: string | undefined;
  try {
    await copyImage('berth-local/busybox', outer.dockerHost);
    await copyImage('berth-local/dind', outer.dockerHost);
    const sidecar = await containers(c).inspect(outer.containerId);
    const { binds, node } = hostNode();
    const inner = uniqueName('inner');
    const berth = `${node} --import tsx ${ROOT}src/cli/main.ts`;
    const script = [
      'set -e',
      `H=$(${berth} dind up --name ${inner} --network none --socket-dir /var/run/berth-dind/${inner} --timeout 90)`,
      'echo "inner DOCKER_HOST=$H"',
      `docker -H ${outer.jobDockerHost} save berth-local/busybox | docker -H "$H" load >/dev/null`,
      'docker -H "$H" run --rm berth-local/busybox echo inner-container-ran',
      `${berth} dind ls`,
      `${berth} dind down ${inner}`,
      'echo inner-down',
    ].join('\n');
    // The job gets the sidecar's privileges, so the inner berth finds the same bounding set.
    jobId = (
      await containers(c).create({
        Image: 'berth-local/dind',
        Entrypoint: ['sh', '-c', script],
        Cmd: [],
        WorkingDir: ROOT,
        Env: [`DOCKER_HOST=${outer.jobDockerHost}`, 'HOME=/tmp'],
        Labels: sessionLabels({ 'io.berth.role': 'test-job' }),
        HostConfig: {
          NetworkMode: 'none',
          CapAdd: sidecar.HostConfig.CapAdd,
          CapDrop: sidecar.HostConfig.CapDrop,
          Privileged: sidecar.HostConfig.Privileged,
          SecurityOpt: sidecar.HostConfig.SecurityOpt,
          Binds: [`${outer.socketDir}:/var/run/berth-dind`, `${ROOT}:${ROOT}:ro`, ...binds],
        },
      })
    ).Id;
    const waiting = containers(c).wait(jobId, 'next-exit');
    await containers(c).start(jobId);
    const { StatusCode } = await waiting;
    const logs = await readLogs(c, jobId);
    const all = `${logs.stdout}\n${logs.stderr}`;
    assert.equal(StatusCode, 0, all);
    assert.match(logs.stdout, /inner DOCKER_HOST=unix:\/\/\/var\/run\/berth-dind\/.*\/docker\.sock/);
    assert.match(logs.stdout, /inner-container-ran/);
    assert.match(logs.stdout, new RegExp(`${inner}\\s+running`));
    assert.match(logs.stdout, /inner-down/);
    assert.match(logs.stderr, /ready \(/);
  } finally {
    if (jobId) await containers(c).remove(jobId, { force: true });
    await outer.close();
  }
});
