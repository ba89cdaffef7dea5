import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { hostname, tmpdir } from 'node:os';
import {
  LABEL_OWNER_HOST,
  LABEL_OWNER_PID,
  LABEL_RUN,
  LABEL_TEST_SESSION,
  isBerthError,
} from '../common/index.js';
import { containers, readLogs, volumes } from '../engine/index.js';
import {
  DOCKER_CLI,
  SESSION,
  docker,
  engine,
  run,
  sessionLabels,
  uniqueName,
} from '../../test/support/index.js';
import { dindNames, purgeCache, startDind, stopDind } from './index.js';
import type { DindHandle, DindOptions } from './index.js';

const HOST = 'unix:///var/run/docker.sock';

function opts(extra: Partial<DindOptions> = {}): DindOptions {
  return {
    name: uniqueName('dind'),
    network: 'none',
    labels: sessionLabels(),
    readyTimeoutMs: 90_000,
    ...extra,
  };
}

/** Copies berth-local/busybox into the nested daemon (no registry here). */
async function loadBusybox(dockerHost: string): Promise<void> {
  const r = await run('sh', [
    '-c',
    `${DOCKER_CLI} -H ${HOST} save berth-local/busybox | ${DOCKER_CLI} -H ${dockerHost} load`,
  ]);
  assert.equal(r.code, 0, r.stderr);
}

function contextDir(dockerfile: string): { path: string; [Symbol.dispose](): void } {
  const path = mkdtempSync(join(tmpdir(), 'berth-dind-ctx-'));
  writeFileSync(join(path, 'Dockerfile'), dockerfile);
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) };
}

async function leftovers(name: string) {
  using c = engine();
  const cs = await containers(c).list({ all: true, filters: { label: [`io.berth.dind=${name}`] } });
  const vs = await volumes(c).list({ label: [`io.berth.dind=${name}`] });
  return { containers: cs.length, volumes: vs.length };
}

test('a nested daemon starts (with fallback privileges where --privileged is refused), builds and runs; down leaves nothing', async () => {
  const o = opts();
  const lines: string[] = [];
  const h = await startDind({ ...o, log: (l) => lines.push(l) });
  let closed = false;
  try {
    assert.match(h.dockerHost, /^unix:\/\/.*\/docker\.sock$/);
    assert.equal(h.jobDockerHost, 'unix:///var/run/berth-dind/docker.sock');
    assert.ok(['overlay2', 'fuse-overlayfs', 'vfs'].includes(h.storageDriver), h.storageDriver);
    // What the engine really does with --privileged decides the mode.
    using c = engine();
    const probe = await containers(c).create({
      Image: 'berth-local/busybox',
      Cmd: ['true'],
      Labels: sessionLabels(),
      HostConfig: { Privileged: true, NetworkMode: 'none' },
    });
    let privOk = true;
    try {
      await containers(c).start(probe.Id);
    } catch {
      privOk = false;
    } finally {
      await containers(c).remove(probe.Id);
    }
    if (!privOk) {
      assert.equal(h.privilegeMode, 'fallback-caps');
      assert.equal(lines.filter((l) => /--privileged is refused/.test(l)).length <= 1, true);
    }
    const info = await docker(h.dockerHost, ['info', '--format', '{{.Driver}} {{.ServerVersion}}']);
    assert.equal(info.code, 0, info.stderr);
    assert.match(info.stdout, new RegExp(`^${h.storageDriver} `));
    await loadBusybox(h.dockerHost);
    using ctx = contextDir('FROM berth-local/busybox\nRUN echo built-inside > /msg\nCMD ["cat", "/msg"]\n');
    const b = await docker(h.dockerHost, ['build', '-t', 'inner:1', ctx.path]);
    assert.equal(b.code, 0, b.stderr);
    const r = await docker(h.dockerHost, ['run', '--rm', 'inner:1']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'built-inside');
    // A long-running container inside dies with the daemon.
    // A duration of this run's own: other tests and jobs on the host run `sleep 600` too.
    const secs = String(1000 + Math.floor(Math.random() * 8000));
    const bg = await docker(h.dockerHost, ['run', '-d', 'berth-local/busybox', 'sleep', secs]);
    assert.equal(bg.code, 0, bg.stderr);
    assert.ok(existsSync(h.socketDir ?? '/nonexistent'));
    const count = async () =>
      (await run('sh', ['-c', `ps -eo args | grep -c "^[s]leep ${secs}$" || true`])).stdout.trim();
    assert.equal(await count(), '1', 'the nested container runs, as a host process');
    await h.close();
    closed = true;
    assert.deepEqual(await leftovers(h.name), { containers: 0, volumes: 0 });
    assert.equal(existsSync(h.socketDir ?? '/nonexistent'), false, 'socket dir removed');
    const cg = `/sys/fs/cgroup/memory${dindNames.cgroupParent(h.name)}`;
    assert.equal(existsSync(cg), false, `nested cgroups left: ${cg}`);
    assert.equal(await count(), '0', 'the nested container died with its daemon');
  } finally {
    if (!closed) await h.close();
  }
});

test('the cache keeps layers across two up/down cycles; --purge removes it', async () => {
  const key = uniqueName('ck');
  using ctx = contextDir('FROM berth-local/busybox\nRUN echo layer-one > /one\nRUN echo layer-two > /two\n');
  const cycle = async (purge: boolean) => {
    const h = await startDind(opts({ cache: key }));
    try {
      assert.equal(h.cacheVolume, dindNames.cacheVolume(key));
      await loadBusybox(h.dockerHost);
      const b = await docker(h.dockerHost, ['build', '-t', 'cached:1', ctx.path]);
      assert.equal(b.code, 0, b.stderr);
      return b.stdout;
    } finally {
      await h.close({ purge });
    }
  };
  using c = engine();
  try {
    const first = await cycle(false);
    assert.doesNotMatch(first, /Using cache/);
    assert.ok(await volumes(c).inspect(dindNames.cacheVolume(key)), 'cache volume kept after down');
    const second = await cycle(true);
    assert.equal((second.match(/Using cache/g) ?? []).length, 2, second);
    await assert.rejects(volumes(c).inspect(dindNames.cacheVolume(key)), 'purged');
  } finally {
    await volumes(c).remove(dindNames.cacheVolume(key));
  }
});

test('a busy cache is refused, run on an ephemeral volume, or waited for; never two daemons on one data root', async () => {
  const key = uniqueName('ckb');
  using c = engine();
  const handles: DindHandle[] = [];
  try {
    const first = await startDind(opts({ cache: key }));
    handles.push(first);
    await assert.rejects(startDind(opts({ cache: key, cacheBusy: 'fail' })), (e: unknown) =>
      isBerthError(e, 'DIND_CACHE_BUSY'),
    );
    const eph = await startDind(opts({ cache: key, cacheBusy: 'ephemeral' }));
    handles.push(eph);
    assert.equal(eph.cacheVolume, undefined);
    const sidecar = await containers(c).inspect(eph.containerId);
    const data = sidecar.Mounts.find((m) => m.Destination === '/var/lib/docker');
    assert.notEqual(data?.Name, dindNames.cacheVolume(key));
    // A waiting daemon starts once the first one is down (the close runs while it waits).
    const lines: string[] = [];
    const waiting = startDind(opts({ cache: key, cacheBusy: 'wait', log: (l) => lines.push(l) }));
    while (!lines.some((l) => /waiting for it/.test(l))) await new Promise((r) => setTimeout(r, 100));
    await first.close();
    handles.shift();
    const third = await waiting;
    handles.push(third);
    assert.equal(third.cacheVolume, dindNames.cacheVolume(key));
  } finally {
    for (const h of handles) await h.close().catch(() => undefined);
    await volumes(c).remove(dindNames.cacheVolume(key));
  }
});

test('a cache held by the daemon of a run whose runner is gone is taken over; a purge of a cache in use names its holder', async () => {
  const key = uniqueName('ckd');
  using c = engine();
  // A pid that was alive a moment ago and is not now: the runner that was killed.
  const gone = Number((await run('sh', ['-c', 'echo $$'])).stdout.trim());
  const handles: DindHandle[] = [];
  try {
    const orphan = await startDind(
      opts({
        cache: key,
        // Not this session's label: a reaper of this session, running in another test file at
        // the same moment, would take the stale daemon first (it is stale on purpose).
        labels: {
          [LABEL_TEST_SESSION]: `${SESSION}-orphan`,
          [LABEL_RUN]: uniqueName('killedrun'),
          [LABEL_OWNER_PID]: String(gone),
          [LABEL_OWNER_HOST]: hostname(),
        },
      }),
    );
    handles.push(orphan);
    await assert.rejects(purgeCache(c, key), (e: unknown) => {
      assert.ok(isBerthError(e, 'DIND_CACHE_BUSY'), String(e));
      assert.match(e.message, new RegExp(`in use by the nested daemon "${orphan.name}"`));
      assert.match(e.hint ?? '', new RegExp(`berth dind down ${orphan.name}`));
      return true;
    });
    const lines: string[] = [];
    const next = await startDind(
      opts({ cache: key, cacheBusy: 'wait', cacheWaitMs: 120_000, log: (l) => lines.push(l) }),
    );
    handles.push(next);
    assert.equal(next.cacheVolume, dindNames.cacheVolume(key));
    assert.ok(
      lines.some((l) => /belongs to a run whose runner is gone; stopping it/.test(l)),
      lines.join('\n'),
    );
    assert.equal(await containers(c).find(orphan.containerId), undefined, 'the orphan daemon was stopped');
  } finally {
    for (const h of handles) await h.close().catch(() => undefined);
    for (const x of await containers(c).list({
      all: true,
      filters: { label: [`${LABEL_TEST_SESSION}=${SESSION}-orphan`] },
    }))
      await containers(c).remove(x.Id, { force: true, volumes: true });
    await volumes(c).remove(dindNames.cacheVolume(key));
  }
});

test('a daemon that cannot start fails with its last log lines and the likely cause, and leaves nothing', async () => {
  const o = opts({ storageDriver: 'btrfs' });
  await assert.rejects(startDind(o), (e: unknown) => {
    assert.ok(isBerthError(e, 'DIND_START_FAILED'), String(e));
    assert.equal(e.details?.cause, 'storage');
    assert.match(e.message, /\| .*btrfs|graphdriver/);
    return true;
  });
  assert.deepEqual(await leftovers(o.name), { containers: 0, volumes: 0 });
  await assert.rejects(stopDind(engine(), o.name), (e: unknown) => isBerthError(e, 'DIND_NOT_FOUND'));
});

test('--tcp: a job sharing the sidecar network namespace reaches the daemon on localhost, with TLS or explicitly without', async () => {
  using c = engine();
  for (const tls of [true, false]) {
    const h = await startDind(opts({ tcp: { port: tls ? 2376 : 2375, tls } }));
    let jobId: string | undefined;
    try {
      assert.equal(h.jobDockerHost, `tcp://localhost:${tls ? 2376 : 2375}`);
      if (tls)
        for (const f of ['ca.pem', 'cert.pem', 'key.pem']) assert.ok(existsSync(join(h.certDir ?? '', f)), f);
      const env = [
        `DOCKER_HOST=${h.jobDockerHost}`,
        ...(tls ? ['DOCKER_TLS_VERIFY=1', 'DOCKER_CERT_PATH=/certs'] : []),
      ];
      // A plain-HTTP client (no TLS, no client certificate) is refused by the TLS daemon.
      const script = tls
        ? 'docker version --format "{{.Server.Version}}" && env -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH docker version >/dev/null 2>&1 && echo NO-TLS-ACCEPTED || echo tls-enforced'
        : 'docker version --format "{{.Server.Version}}"';
      jobId = (
        await containers(c).create({
          Image: 'berth-local/dind',
          Entrypoint: ['sh', '-c', script],
          Cmd: [],
          Env: env,
          Labels: sessionLabels(),
          HostConfig: {
            NetworkMode: `container:${h.containerId}`,
            Binds: tls ? [`${h.certDir}:/certs:ro`] : [],
          },
        })
      ).Id;
      const waiting = containers(c).wait(jobId, 'next-exit');
      await containers(c).start(jobId);
      const { StatusCode } = await waiting;
      const logs = await readLogs(c, jobId);
      assert.equal(StatusCode, 0, logs.stdout + logs.stderr);
      assert.match(logs.stdout, /^\d+\.\d+/);
      if (tls) assert.match(logs.stdout, /tls-enforced/);
    } finally {
      if (jobId) await containers(c).remove(jobId, { force: true });
      await h.close();
    }
    assert.equal(existsSync(h.certDir ?? '/nonexistent'), false);
  }
});

test('on a per-job network, nested containers inherit its MTU and resolve the job network names', async () => {
  using c = engine();
  const net = uniqueName('dindnet');
  await c.json('POST', '/networks/create', {
    body: {
      Name: net,
      Internal: true,
      Labels: sessionLabels(),
      Options: { 'com.docker.network.driver.mtu': '1400' },
    },
  });
  let svc: string | undefined;
  let h: DindHandle | undefined;
  try {
    svc = (
      await containers(c).create({
        Image: 'berth-local/busybox',
        Cmd: ['sleep', '600'],
        Labels: sessionLabels(),
        HostConfig: { NetworkMode: net },
        NetworkingConfig: { EndpointsConfig: { [net]: { Aliases: ['websvc'] } } },
      })
    ).Id;
    await containers(c).start(svc);
    const svcIp = (await containers(c).inspect(svc)).NetworkSettings.Networks?.[net]?.IPAddress;
    h = await startDind(opts({ network: net }));
    await loadBusybox(h.dockerHost);
    const r = await docker(h.dockerHost, [
      'run',
      '--rm',
      'berth-local/busybox',
      'sh',
      '-c',
      'cat /sys/class/net/eth0/mtu; nslookup websvc',
    ]);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /^1400\n/);
    assert.match(r.stdout, new RegExp(`Address:\\s*${(svcIp ?? 'x').replace(/\./g, '\\.')}`));
  } finally {
    await h?.close();
    if (svc) await containers(c).remove(svc, { force: true });
    await c.json('DELETE', `/networks/${net}`);
  }
});

test('a cache over its size cap is pruned when the daemon goes down', async () => {
  const key = uniqueName('ckcap');
  using c = engine();
  try {
    const first = await startDind(opts({ cache: key, cacheMaxBytes: 1 }));
    try {
      await loadBusybox(first.dockerHost);
      const imgs = await docker(first.dockerHost, ['images', '-q']);
      assert.notEqual(imgs.stdout.trim(), '');
    } finally {
      await first.close();
    }
    const second = await startDind(opts({ cache: key }));
    try {
      const imgs = await docker(second.dockerHost, ['images', '-q']);
      assert.equal(imgs.code, 0, imgs.stderr);
      assert.equal(imgs.stdout.trim(), '', 'the over-cap cache was pruned');
    } finally {
      await second.close({ purge: true });
    }
  } finally {
    await volumes(c).remove(dindNames.cacheVolume(key));
  }
});
