/**
 * Bulk downloads through the guard's byte-for-byte relays against a real engine, both of them: the
 * kernel's (bulksplice.ts, the berth-splice helper) and JavaScript's (rawstream.ts). The bytes are
 * the engine's own, a slow reader is held back rather than buffered for, a client that hangs up
 * mid-stream ends the engine side (and the helper) too, and the CLI works as usual (save, export,
 * cp, logs).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { request } from 'node:http';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { containers } from '../engine/index.js';
import { createGuard } from './index.js';
import { RawStreamError } from './rawstream.js';
import { spliceHelper, spliceStream } from './bulksplice.js';
import type { GuardHandle } from './index.js';
import { DOCKER_CLI, docker, engine, sessionLabels, tempDir, uniqueName } from '../../test/support/index.js';

const IMAGE = 'berth-local/busybox';

/** GET over a unix socket; answers status, headers and the sha256 and size of the body. */
function get(
  socketPath: string,
  path: string,
  opts: { pauseMs?: number } = {},
): Promise<{ status: number; connection: string | undefined; sha: string; bytes: number }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, headers: { Host: 'docker' } }, (res) => {
      const h = createHash('sha256');
      let bytes = 0;
      if (opts.pauseMs) {
        res.pause();
        setTimeout(() => res.resume(), opts.pauseMs);
      }
      res.on('data', (c: Buffer) => {
        h.update(c);
        bytes += c.length;
      });
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          connection: res.headers.connection,
          sha: h.digest('hex'),
          bytes,
        }),
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

/**
 * Starts a GET over a raw unix socket, reads its first bytes, then stops reading (the socket stays
 * open and paused): a download held up by its client.
 */
async function stalledDownload(
  socketPath: string,
  path: string,
  settleMs = 300,
): Promise<{ socket: Socket; firstBytes: string }> {
  const socket = connect(socketPath);
  await new Promise((r) => socket.once('connect', r));
  socket.write(`GET ${path} HTTP/1.1\r\nHost: docker\r\n\r\n`);
  const first = await new Promise<Buffer>((r) => socket.once('data', r));
  socket.pause();
  // Give the download time to fill the socket buffers and block.
  await new Promise((r) => setTimeout(r, settleMs));
  return { socket, firstBytes: first.toString('latin1', 0, 64) };
}

/** berth-splice processes this process started (its children, by name). */
function helpers(): number[] {
  const out: number[] = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      // pid (comm) state ppid ...
      const m = /^\d+ \((.*)\) \S+ (\d+)/.exec(stat);
      if (m?.[1] === 'berth-splice' && Number(m[2]) === process.pid) out.push(Number(pid));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

async function until(what: string, ok: () => boolean, ms = 5000): Promise<void> {
  for (const end = Date.now() + ms; !ok();) {
    if (Date.now() > end) assert.fail(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('berth-splice was built (npm run build compiles it; the suite runs both relays)', () => {
  assert.ok(spliceHelper(), 'dist/native/berth-splice is missing: run npm run build with a C compiler');
});

test('berth-splice: an engine it cannot reach rejects before a byte reaches the client', async () => {
  const helper = spliceHelper();
  assert.ok(helper);
  const dir = tempDir('berth-splice-');
  try {
    const { createServer } = await import('node:net');
    const got: Buffer[] = [];
    const server = createServer((s) => s.on('data', (d: Buffer) => got.push(d)));
    const at = join(dir.path, 'client.sock');
    await new Promise<void>((r) => server.listen(at, r));
    const client = connect(at);
    await new Promise((r) => client.once('connect', r));
    await assert.rejects(
      spliceStream(helper, join(dir.path, 'no-engine.sock'), 'GET /_ping HTTP/1.1\r\n\r\n', client),
      (err: unknown) => err instanceof RawStreamError && /connect to the engine/.test(err.message),
    );
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(Buffer.concat(got).length, 0, 'nothing was written to the client');
    client.destroy();
    await new Promise((r) => server.close(r));
  } finally {
    dir[Symbol.dispose]();
  }
});

for (const mode of ['splice', 'javascript'] as const)
  describe(`guard bulk downloads (byte-for-byte relay: ${mode})`, () => {
    const c = engine();
    const dir = tempDir('berth-rawstream-');
    const sock = join(dir.path, 'g.sock');
    let guard: GuardHandle;
    let box = '';
    let ticker = '';

    before(async () => {
      guard = await createGuard({
        tenant: uniqueName('raw'),
        listen: sock,
        labels: sessionLabels(),
        bulkRelay: mode,
      });
      const made = await docker(guard.address, [
        'run',
        '--name',
        uniqueName('bulk'),
        '--network',
        'none',
        IMAGE,
        'sh',
        '-c',
        // About 3 MiB of log lines, and a file to copy out.
        'i=0; while [ $i -lt 40000 ]; do echo "line $i 0123456789abcdefghijklmnopqrstuvwxyz0123456789"; i=$((i+1)); done; echo payload > /payload',
      ]);
      assert.equal(made.code, 0, made.stderr);
      box = (
        await docker(guard.address, ['ps', '-aq', '--no-trunc', '--filter', 'status=exited'])
      ).stdout.trim();
      const t = await docker(guard.address, [
        'run',
        '-d',
        '--network',
        'none',
        IMAGE,
        'sh',
        '-c',
        'while true; do echo tick; sleep 0.1; done',
      ]);
      assert.equal(t.code, 0, t.stderr);
      ticker = t.stdout.trim();
    });

    after(async () => {
      await guard.close({ cleanup: true });
      c.close();
      dir[Symbol.dispose]();
    });

    test('the answer is the engine’s, byte for byte, and says Connection: close', async () => {
      for (const path of [
        `/v1.41/containers/${box}/logs?stdout=1&stderr=1`,
        `/v1.41/containers/${box}/export`,
        `/v1.41/containers/${box}/archive?path=/payload`,
        `/v1.41/images/get?names=${encodeURIComponent(IMAGE)}`,
      ]) {
        const direct = await get('/var/run/docker.sock', path);
        const through = await get(sock, path);
        assert.equal(through.status, 200, path);
        assert.ok(through.bytes > 0, path);
        // save and export of the same object are deterministic; logs and archives are too.
        assert.equal(through.sha, direct.sha, `${path}: the bytes differ from the engine's`);
        assert.equal(through.connection, 'close', path);
      }
    });

    test('a request pipelined behind a download is not handled; pipelined small requests are answered in order', async () => {
      const victim = await docker(guard.address, ['create', '--network', 'none', IMAGE, 'true']);
      assert.equal(victim.code, 0, victim.stderr);
      const id = victim.stdout.trim();
      const exchange = async (text: string) => {
        const s = connect(sock);
        await new Promise((r) => s.once('connect', r));
        const got: Buffer[] = [];
        s.on('data', (d: Buffer) => got.push(d));
        s.write(text);
        await new Promise((r) => s.once('close', r));
        return Buffer.concat(got).toString('latin1');
      };
      // The download's answer closes the connection; nothing sent behind it ran (the removal came
      // third: a skipped request does not let the next one through).
      const out = await exchange(
        `GET /v1.41/containers/${box}/logs?stdout=1 HTTP/1.1\r\nHost: docker\r\n\r\n` +
          `GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n` +
          `DELETE /v1.41/containers/${id}?force=1 HTTP/1.1\r\nHost: docker\r\n\r\n`,
      );
      assert.match(out.slice(0, 16), /^HTTP\/1\.1 200 /);
      assert.equal(out.match(/HTTP\/1\.1 \d{3} /g)?.length, 1, 'one answer, the download');
      assert.ok((await containers(c).find(id)) !== undefined, 'the pipelined removal must not have run');
      // Small requests pipelined on a kept-alive connection: every one answered, in order.
      const small = await exchange(
        `GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n` +
          `GET /v1.41/containers/${id}/json HTTP/1.1\r\nHost: docker\r\n\r\n` +
          `DELETE /v1.41/containers/${id}?force=1 HTTP/1.1\r\nHost: docker\r\n\r\n` +
          `GET /v1.41/containers/${id}/json HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n`,
      );
      assert.deepEqual(
        small.match(/HTTP\/1\.1 (\d{3}) /g)?.map((l) => l.slice(9, 12)),
        ['200', '200', '204', '404'],
        small.slice(0, 400),
      );
      assert.equal(await containers(c).find(id), undefined);
    });

    test('only bulk downloads take the byte-for-byte path: other answers keep the connection alive', async () => {
      for (const path of [
        '/_ping',
        '/v1.41/version',
        '/v1.41/info',
        '/v1.41/images/json',
        `/v1.41/images/${encodeURIComponent(IMAGE)}/json`,
        `/v1.41/containers/${box}/json`,
      ]) {
        const r = await get(sock, path);
        assert.equal(r.status, 200, path);
        assert.notEqual(r.connection, 'close', `${path} went the byte-for-byte way`);
      }
    });

    test('a reader that stops for a while gets every byte afterwards (backpressure, no loss)', async () => {
      const path = `/v1.41/containers/${box}/logs?stdout=1&stderr=1`;
      const direct = await get('/var/run/docker.sock', path);
      const slow = await get(sock, path, { pauseMs: 1500 });
      assert.equal(slow.sha, direct.sha);
      assert.ok(slow.bytes > 2 * 1024 * 1024, `only ${slow.bytes} bytes`);
    });

    test('a download goes the way the guard was told, and a client that hangs up mid-way ends it', async () => {
      const { socket, firstBytes } = await stalledDownload(
        sock,
        `/v1.41/containers/${box}/logs?stdout=1&stderr=1`,
      );
      assert.match(firstBytes, /^HTTP\/1\.1 200 /);
      // The client reads no more: the download waits on it (backpressure), through the helper or not.
      assert.equal(helpers().length, mode === 'splice' ? 1 : 0, `${mode}: berth-splice processes`);
      // The request (container IDs, paths in containers) is not in the process list for local users.
      for (const pid of helpers())
        assert.doesNotMatch(readFileSync(`/proc/${pid}/cmdline`, 'latin1'), /GET|logs/);
      socket.destroy();
      await until('the download ended with its client', () => helpers().length === 0);
      // The guard serves on.
      assert.equal((await get(sock, '/_ping')).status, 200);
    });

    test('errors come through as the engine words them; others’ containers stay absent', async () => {
      const missing = await get(sock, `/v1.41/containers/${box}/archive?path=/no/such/file`);
      assert.equal(missing.status, 404);
      const host = await containers(c).create({
        Image: IMAGE,
        Cmd: ['true'],
        Labels: sessionLabels(),
        HostConfig: { NetworkMode: 'none' },
      });
      try {
        for (const p of ['logs?stdout=1', 'export', 'archive?path=/'])
          assert.equal((await get(sock, `/v1.41/containers/${host.Id}/${p}`)).status, 404, p);
      } finally {
        await containers(c).remove(host.Id);
      }
    });

    test('logs -f: a client that hangs up ends the stream; the guard can still close at once', async () => {
      const follow = spawn(DOCKER_CLI, ['logs', '-f', ticker], {
        env: { ...process.env, DOCKER_HOST: guard.address },
      });
      let out = '';
      follow.stdout.on('data', (b: Buffer) => (out += b.toString()));
      for (let i = 0; i < 50 && (out.match(/tick/g) ?? []).length < 5; i++)
        await new Promise((r) => setTimeout(r, 100));
      assert.ok((out.match(/tick/g) ?? []).length >= 5, 'logs -f delivers lines as they come');
      assert.equal(follow.exitCode, null, 'still following');
      // A followed log stays with the JavaScript relay: no process is held for a long, thin stream.
      assert.equal(helpers().length, 0, `${mode}: berth-splice processes for logs -f`);
      const gone = new Promise((r) => follow.once('exit', r));
      follow.kill('SIGINT');
      await gone;
      // The CLI through the same guard keeps working after a stream was cut.
      const cp = await docker(guard.address, ['cp', `${box}:/payload`, join(dir.path, 'payload')]);
      assert.equal(cp.code, 0, cp.stderr);
      assert.equal(readFileSync(join(dir.path, 'payload'), 'utf8'), 'payload\n');
    });
  });

describe('guard bulk downloads: a guard that closes ends its helpers', () => {
  const dir = tempDir('berth-splice-close-');

  after(() => dir[Symbol.dispose]());

  test('at most 16 helpers run for one guard; further downloads take the JavaScript relay', async () => {
    const guard = await createGuard({
      tenant: uniqueName('splice-cap'),
      listen: join(dir.path, 'cap.sock'),
      labels: sessionLabels(),
    });
    const held: Socket[] = [];
    try {
      const path = `/v1.41/images/get?names=${encodeURIComponent('berth-local/tools')}`;
      for (let i = 0; i < 18; i++) {
        const d = await stalledDownload(join(dir.path, 'cap.sock'), path, 0);
        assert.match(d.firstBytes, /^HTTP\/1\.1 200 /, `download ${i}`);
        held.push(d.socket);
      }
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(helpers().length, 16);
      // The downloads past the cap are whole all the same.
      const direct = await get('/var/run/docker.sock', path);
      const through = await get(join(dir.path, 'cap.sock'), path);
      assert.equal(through.sha, direct.sha);
      for (const s of held) s.destroy();
      await until('every helper ended with its client', () => helpers().length === 0);
    } finally {
      for (const s of held) s.destroy();
      await guard.close({ cleanup: true });
    }
  });

  test('a download held up by its client, then the guard closes: the connection ends, no helper is left', async () => {
    const guard = await createGuard({
      tenant: uniqueName('splice-close'),
      listen: join(dir.path, 'g.sock'),
      labels: sessionLabels(),
    });
    try {
      const { socket, firstBytes } = await stalledDownload(
        join(dir.path, 'g.sock'),
        `/v1.41/images/get?names=${encodeURIComponent('berth-local/tools')}`,
      );
      assert.match(firstBytes, /^HTTP\/1\.1 200 /);
      assert.equal(helpers().length, 1, 'the download went through berth-splice');
      const closed = new Promise((r) => socket.once('close', r));
      await guard.close({ cleanup: true });
      await until('berth-splice ended with the guard', () => helpers().length === 0);
      // What was in flight is dropped; the client's connection ends.
      socket.resume();
      await Promise.race([
        closed,
        new Promise((_, j) => setTimeout(() => j(new Error('the client connection is still open')), 10_000)),
      ]);
    } finally {
      await guard.close({ cleanup: true }).catch(() => undefined);
    }
  });
});
