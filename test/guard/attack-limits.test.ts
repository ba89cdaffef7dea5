/**
 * Attack: the tenant's resource limits. A policy caps the container count, memory, CPU and pids;
 * a tenant tries to get past the caps through the raw API: a CFS quota of its own (`CpuQuota: -1`
 * is no limit at all to dockerd, whatever NanoCpus says), updates, and creates sent in parallel
 * so that each counts the same number of containers. Every check reads the engine, not the status.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { containers } from '../../src/engine/index.js';
import { createGuard, defaultPolicy } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, postJson, send } from '../support/rawhttp.js';
import { entry } from '../support/tar.js';

const IMAGE = 'berth-local/busybox';
const MiB = 1024 * 1024;

describe('attack: getting past the tenant’s resource limits', () => {
  const c = engine();
  const dir = tempDir('berth-limits-');
  const sock = join(dir.path, 'g.sock');
  const tenant = uniqueName('limits');
  let guard: GuardHandle;

  before(async () => {
    guard = await createGuard({
      tenant,
      listen: sock,
      labels: sessionLabels(),
      policy: {
        ...defaultPolicy(),
        limits: {
          maxContainers: 3,
          maxNanoCpus: 500_000_000,
          maxMemoryBytes: 256 * MiB,
          defaultPidsLimit: 100,
          maxPidsLimit: 200,
        },
      },
    });
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    c.close();
    dir[Symbol.dispose]();
  });

  const owned = async () =>
    containers(c).list({ all: true, filters: { label: [`io.berth.tenant=${tenant}`] } });
  const create = (hostConfig: Record<string, unknown>, name = uniqueName('lim')) =>
    postJson(
      sock,
      `/v1.41/containers/create?name=${name}`,
      JSON.stringify({ Image: IMAGE, Cmd: ['true'], HostConfig: { NetworkMode: 'none', ...hostConfig } }),
    );

  test('a container gets the caps and defaults; values over a cap are refused', async () => {
    const r = await create({});
    assert.equal(r.status, 201, r.text);
    const id = (JSON.parse(r.text) as { Id: string }).Id;
    const hc = (await containers(c).inspect(id)).HostConfig;
    assert.equal(hc.NanoCpus, 500_000_000);
    assert.equal(hc.Memory, 256 * MiB);
    assert.equal(hc.PidsLimit, 100);
    for (const [what, body] of [
      ['memory over the cap', { Memory: 512 * MiB }],
      ['CPUs over the cap', { NanoCpus: 2_000_000_000 }],
      ['pids over the cap', { PidsLimit: 1000 }],
    ] as const) {
      const before = (await owned()).length;
      expectRefused(await create(body), 'limits', what);
      assert.equal((await owned()).length, before, `${what}: nothing made`);
    }
    await containers(c).remove(id, { force: true });
  });

  test('a CFS quota or period of the tenant’s own cannot replace the CPU cap (create and update)', async () => {
    for (const [what, body] of [
      ['CpuQuota -1 (unlimited)', { CpuQuota: -1 }],
      ['a quota of four CPUs', { CpuQuota: 400_000, CpuPeriod: 100_000 }],
      ['a period alone', { cpuperiod: 1000 }],
    ] as const) {
      const before = (await owned()).length;
      expectRefused(await create(body), 'limits', what);
      assert.equal((await owned()).length, before, `${what}: nothing made`);
    }
    const r = await create({});
    assert.equal(r.status, 201, r.text);
    const id = (JSON.parse(r.text) as { Id: string }).Id;
    for (const body of ['{"CpuQuota":-1}', '{"CPUQUOTA":-1}', '{"CpuPeriod":1000,"CpuQuota":1000000}']) {
      const u = await postJson(sock, `/v1.41/containers/${id}/update`, body);
      expectRefused(u, 'limits', `update ${body}`);
    }
    const hc = (await containers(c).inspect(id)).HostConfig;
    assert.equal(hc.CpuQuota, 0, 'the engine kept no quota of the tenant’s');
    assert.equal(hc.CpuPeriod, 0);
    assert.equal(hc.NanoCpus, 500_000_000);
    await containers(c).remove(id, { force: true });
  });

  test('a build’s CPU quota is read as dockerd reads it: 1e3 is not a small quota but none', async () => {
    for (const v of ['1e3', '0x10', '1.5', '99999999999999999999']) {
      const r = await send(sock, {
        method: 'POST',
        path: `/v1.41/build?cpuquota=${v}`,
        headers: [['Content-Type', 'application/x-tar']],
        body: Buffer.concat([
          entry('Dockerfile', 'FROM berth-local/busybox\nRUN true\n'),
          Buffer.alloc(1024),
        ]),
      });
      expectRefused(r, 'malformed', `cpuquota=${v}`, 400);
    }
  });

  test('creates sent in parallel cannot all count the same number: the tenant ends with the limit', async () => {
    assert.equal((await owned()).length, 0);
    const answers = await Promise.all(Array.from({ length: 8 }, () => create({})));
    const made = answers.filter((a) => a.status === 201).length;
    assert.equal(made, 3, answers.map((a) => `${a.status} ${a.text.slice(0, 80)}`).join('\n'));
    for (const a of answers.filter((x) => x.status !== 201)) expectRefused(a, 'limits', 'over the count');
    const now = await owned();
    assert.equal(now.length, 3, 'the engine holds the limit, not more');
    for (const x of now) await containers(c).remove(x.Id, { force: true });
  });

  test('builds count against the container limit: their RUN steps are containers too', async () => {
    // Two containers of the limit's three are taken; of three builds sent at once, one may run.
    const taken = await Promise.all([create({}), create({})]);
    for (const t of taken) assert.equal(t.status, 201, t.text);
    const build = () =>
      send(sock, {
        method: 'POST',
        path: '/v1.41/build?q=1',
        headers: [['Content-Type', 'application/x-tar']],
        body: Buffer.concat([
          entry('Dockerfile', `FROM berth-local/busybox\nRUN sleep 2 && echo ${uniqueName('b')}\n`),
          Buffer.alloc(1024),
        ]),
      });
    const answers = await Promise.all([build(), build(), build()]);
    const ran = answers.filter((a) => a.status === 200);
    assert.equal(ran.length, 1, answers.map((a) => `${a.status} ${a.text.slice(0, 120)}`).join('\n'));
    for (const a of answers.filter((x) => x.status !== 200))
      expectRefused(a, 'limits', 'a build over the count');
    // A build's count ends with it: a container fits again.
    const after = await create({});
    assert.equal(after.status, 201, after.text);
    for (const x of await owned()) await containers(c).remove(x.Id, { force: true });
  });
});
