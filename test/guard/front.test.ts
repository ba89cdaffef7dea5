/**
 * The guard's fast front against the real engine: what it answers is what the guard would answer
 * (the tenant's own containers only, as the audit shows), everything else still goes the guard's
 * way, a front that dies leaves a guard that listens itself, and a closing guard leaves neither
 * the front nor its socket. (src/guard/front.int.test.ts tests the front alone, attacks included.)
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { once } from 'node:events';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { rssOf } from '../../src/bench/index.js';
import { containers } from '../../src/engine/index.js';
import { createGuard, nativeHelper } from '../../src/guard/index.js';
import type { AuditRecord, GuardHandle } from '../../src/guard/index.js';
import {
  auditAfter,
  auditRecords,
  docker,
  engine,
  frontProcesses,
  sessionLabels,
  tempDir,
  uniqueName,
} from '../support/index.js';
import { rawRequest } from '../support/rawhttp.js';

const IMAGE = 'berth-local/busybox';

describe('guard: the fast front on the real engine', () => {
  const c = engine();
  const dir = tempDir('berth-front-e2e-');
  const sock = join(dir.path, 'g.sock');
  const auditFile = join(dir.path, 'audit.log');
  let guard: GuardHandle;
  let mine = '';
  let host = '';
  const audit = () => auditRecords(auditFile);

  before(async () => {
    assert.ok(nativeHelper('berth-front'), 'berth-front is built (npm run build)');
    guard = await createGuard({
      tenant: uniqueName('front'),
      listen: sock,
      labels: sessionLabels(),
      audit: auditFile,
    });
    const r = await docker(guard.address, [
      'create',
      '--name',
      uniqueName('mine'),
      '--network',
      'none',
      IMAGE,
      'true',
    ]);
    assert.equal(r.code, 0, r.stderr);
    mine = r.stdout.trim();
    host = (
      await containers(c).create({
        Image: IMAGE,
        Cmd: ['true'],
        Labels: sessionLabels(),
        HostConfig: { NetworkMode: 'none' },
      })
    ).Id;
  });

  after(async () => {
    await guard.close({ cleanup: true });
    await containers(c)
      .remove(host, { force: true })
      .catch(() => undefined);
    c.close();
    dir[Symbol.dispose]();
  });

  test('the CLI gets its ping, inspect and ps answered by the front; the answers are the engine’s', async () => {
    assert.equal(frontProcesses().length, 1, 'one front for the guard');
    const before = audit().length;
    const i = await docker(guard.address, ['inspect', '-f', '{{.Id}} {{.Config.Image}}', mine]);
    assert.equal(i.code, 0, i.stderr);
    assert.equal(i.stdout.trim(), `${mine} ${IMAGE}`);
    const ps = await docker(guard.address, ['ps', '-aq', '--no-trunc']);
    assert.equal(ps.code, 0, ps.stderr);
    assert.deepEqual(ps.stdout.trim().split('\n'), [mine], 'only the tenant’s container');
    const isPs = (l: AuditRecord) => l.via === 'front' && l.path === '/containers/json';
    const lines = await auditAfter(auditFile, before, isPs);
    const byFront = lines.filter((l) => l.via === 'front').map((l) => `${l.method} ${l.path}`);
    assert.ok(byFront.includes(`GET /containers/${mine}/json`), JSON.stringify(lines));
    assert.ok(byFront.includes('GET /containers/json'), JSON.stringify(lines));
    assert.ok(
      byFront.some((l) => l.endsWith('/_ping')),
      JSON.stringify(lines),
    );
    // The same bytes as the engine's own answer.
    const direct = await rawRequest(
      '/var/run/docker.sock',
      `GET /v1.41/containers/${mine}/json HTTP/1.1\r\nHost: d\r\n\r\n`,
    );
    const through = await rawRequest(sock, `GET /v1.41/containers/${mine}/json HTTP/1.1\r\nHost: d\r\n\r\n`);
    assert.equal(through.status, 200);
    assert.deepEqual(JSON.parse(through.text), JSON.parse(direct.text));
  });

  test('the host’s container, by name, ID or prefix, and the docker CLI’s image inspect: the guard answers, as before', async () => {
    const name = uniqueName('hostbox');
    await c.json('POST', `/containers/${host}/rename`, { query: { name } });
    const before = audit().length;
    for (const ref of [host, host.slice(0, 12), name]) {
      const r = await rawRequest(sock, `GET /v1.41/containers/${ref}/json HTTP/1.1\r\nHost: d\r\n\r\n`);
      assert.equal(r.status, 404, ref);
      assert.doesNotMatch(r.text, /"Id"|"Config"/, ref);
    }
    const list = await rawRequest(
      sock,
      `GET /v1.41/containers/json?all=1&filters=${encodeURIComponent(JSON.stringify({ id: [host] }))} HTTP/1.1\r\nHost: d\r\n\r\n`,
    );
    assert.deepEqual(JSON.parse(list.text), [], 'a list that names the host’s container finds nothing');
    const isHostInspect = (l: AuditRecord) => l.path.includes(host.slice(0, 12)) || l.path.includes(name);
    const lines = await auditAfter(auditFile, before, isHostInspect, 3);
    const inspects = lines.filter(isHostInspect);
    assert.equal(inspects.length, 3, JSON.stringify(lines));
    assert.ok(
      inspects.every((l) => l.via === undefined),
      'the front answered none of the host container’s inspects',
    );
    // `docker inspect org/image` asks for a container of that name first: 404, then the image.
    const img = await docker(guard.address, ['inspect', '-f', '{{.Id}}', IMAGE]);
    assert.equal(img.code, 0, img.stderr);
    assert.match(img.stdout.trim(), /^sha256:[0-9a-f]{64}$/);
  });

  test('a connection the front hands over keeps working for every kind of request, in order', async () => {
    const r = await docker(guard.address, [
      'run',
      '--rm',
      '--network',
      'none',
      IMAGE,
      'sh',
      '-c',
      'echo hello',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'hello');
    const cp = await docker(guard.address, ['cp', `${mine}:/bin/busybox`, join(dir.path, 'bb')]);
    assert.equal(cp.code, 0, cp.stderr);
    assert.ok(existsSync(join(dir.path, 'bb')));
  });

  test('a front that dies is started again: same socket, still 0666 (set at bind, never by path)', async () => {
    const [pid] = frontProcesses();
    assert.ok(pid);
    process.kill(pid, 'SIGKILL');
    const end = Date.now() + 10_000;
    let ok = false;
    while (!ok && Date.now() < end) {
      const r = await docker(guard.address, ['inspect', '-f', '{{.Id}}', mine]);
      ok =
        r.code === 0 &&
        r.stdout.trim() === mine &&
        frontProcesses().length === 1 &&
        frontProcesses()[0] !== pid;
      if (!ok) await new Promise((res) => setTimeout(res, 200));
    }
    assert.ok(ok, 'a new front serves');
    assert.equal(statSync(sock).mode & 0o777, 0o666);
    const before = audit().length;
    await docker(guard.address, ['inspect', mine]);
    assert.ok(
      (await auditAfter(auditFile, before, (l) => l.via === 'front')).some((l) => l.via === 'front'),
      'the new front answers',
    );
  });

  test('a held connection costs the front little memory: 200 idle kept-alive connections, each after an inspect and a list', async () => {
    // Each connection has a thread of its own; what it holds is the stack pages it touched and its
    // buffers: about 43 KiB here. When each thread zeroed its peek buffer and its link to the guard
    // as it started (136 KiB, whether it used them or not), it held about 170 KiB.
    const [pid] = frontProcesses();
    assert.ok(pid);
    const rss = () => rssOf(pid) ?? Number.NaN;
    /** Asks on a kept-alive connection; answers the status once the whole answer came. */
    const ask = async (s: Socket, target: string): Promise<number> => {
      let got = Buffer.alloc(0);
      const whole = () => {
        const end = got.indexOf('\r\n\r\n');
        if (end < 0) return false;
        const head = got.subarray(0, end).toString('latin1');
        const len = /\r\ncontent-length: (\d+)/i.exec(head)?.[1];
        assert.ok(len !== undefined, `a Content-Length framed answer: ${head}`);
        return got.length >= end + 4 + Number(len);
      };
      const done = new Promise<void>((resolve, reject) => {
        const onData = (d: Buffer) => {
          got = Buffer.concat([got, d]);
          if (!whole()) return;
          s.off('data', onData);
          resolve();
        };
        s.on('data', onData);
        s.once('close', () => reject(new Error(`closed before its answer to ${target}`)));
      });
      s.write(`GET ${target} HTTP/1.1\r\nHost: d\r\n\r\n`);
      await done;
      return Number(got.subarray(9, 12).toString('latin1'));
    };
    const N = 200;
    const from = audit().length;
    const before = rss();
    const held: Socket[] = [];
    try {
      for (let i = 0; i < N; i++) {
        const s = connect(sock);
        held.push(s);
        await once(s, 'connect');
        assert.equal(await ask(s, `/v1.41/containers/${mine}/json`), 200);
        assert.equal(await ask(s, '/v1.41/containers/json?all=1'), 200);
      }
      const per = (rss() - before) / N;
      // They were the front's to answer (not handed to the guard, which would hold them instead).
      const lines = await auditAfter(auditFile, from, (l) => l.via === 'front', 2 * N);
      assert.ok(lines.filter((l) => l.via === 'front').length >= 2 * N, 'the front answered them all');
      assert.ok(per < 96 * 1024, `${Math.round(per / 1024)} KiB of the front's memory per held connection`);
    } finally {
      for (const s of held) s.destroy();
    }
  });

  test('clients that close an idle event stream leave no engine connection behind (red-team pass 31)', async () => {
    const fds = () => readdirSync('/proc/self/fd').length;
    const start = fds();
    const clients = [];
    for (let i = 0; i < 10; i++) {
      const s = connect(sock);
      await once(s, 'connect');
      s.write('GET /v1.41/events HTTP/1.1\r\nHost: d\r\n\r\n');
      await once(s, 'data');
      clients.push(s);
    }
    assert.ok(fds() >= start + 10, 'the streams are open');
    for (const s of clients) s.end();
    const end = Date.now() + 10_000;
    while (fds() > start + 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
    assert.ok(fds() <= start + 2, `${fds() - start} descriptors more than before`);
  });

  test('a closing guard leaves no front and no socket; `front: off` starts none', async () => {
    const n = frontProcesses().length;
    const other = await createGuard({
      tenant: uniqueName('front-close'),
      listen: join(dir.path, 'c.sock'),
      labels: sessionLabels(),
    });
    try {
      assert.equal(frontProcesses().length, n + 1);
    } finally {
      await other.close({ cleanup: true });
    }
    assert.equal(frontProcesses().length, n);
    assert.equal(existsSync(join(dir.path, 'c.sock')), false);
    const off = await createGuard({
      tenant: uniqueName('front-off'),
      listen: join(dir.path, 'o.sock'),
      labels: sessionLabels(),
      front: 'off',
    });
    try {
      assert.equal(frontProcesses().length, n);
      const r = await docker(off.address, ['version', '-f', '{{.Server.APIVersion}}']);
      assert.equal(r.code, 0, r.stderr);
    } finally {
      await off.close({ cleanup: true });
    }
  });
});
