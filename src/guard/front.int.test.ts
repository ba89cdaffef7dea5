/**
 * berth-front alone, against a scripted engine: this test process is the guard (the front's IPC
 * parent, receiving the connections it hands over, and the front's own connections to it). The
 * fake guard answers whatever reaches it with status 299 and the very bytes it got, so a client
 * sees whether the front answered (200 from the engine) or the guard did, and with which bytes.
 * It checks what the front answers, what it sends the engine (built from parsed parts, never the
 * client's bytes), and that everything else reaches the guard byte for byte. The front is built
 * here with AddressSanitizer and UBSan where the compiler has them, and fed garbage.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { Socket, connect, createServer } from 'node:net';
import type { Server } from 'node:net';
import { randomBytes } from 'node:crypto';
import { statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { auditAfter, tempDir } from '../../test/support/index.js';
import { nativeHelper } from './native.js';

const TENANT = 't1';
const MINE = 'a'.repeat(63) + '1';
const MINE2 = 'b'.repeat(63) + '2';
const OTHER = 'c'.repeat(63) + '3';

/** One scripted engine answer for a request target; `close`: the engine closes after it. */
type Script = (target: string) => { head: string; body?: string; chunked?: boolean; close?: boolean };

/** A fake engine on a unix socket: records each request head, answers with the script. */
class FakeEngine {
  readonly heads: string[] = [];
  script: Script = () => ({ head: 'HTTP/1.1 500 Internal Server Error', body: '{}' });
  private readonly server: Server;
  private readonly conns = new Set<Socket>();
  constructor(readonly path: string) {
    this.server = createServer((s) => {
      this.conns.add(s);
      s.on('close', () => this.conns.delete(s));
      s.on('error', () => undefined);
      let buf = '';
      s.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        for (let end = buf.indexOf('\r\n\r\n'); end >= 0; end = buf.indexOf('\r\n\r\n')) {
          const head = buf.slice(0, end);
          buf = buf.slice(end + 4);
          this.heads.push(head);
          const target = head.split(' ')[1] ?? '';
          const a = this.script(target);
          const body = a.body ?? '';
          const framing = a.chunked
            ? `Transfer-Encoding: chunked\r\n\r\n${body.length ? `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n` : ''}0\r\n\r\n`
            : `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
          s.write(
            `${a.head}\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\nServer: fake\r\n${a.close ? 'Connection: close\r\n' : ''}${framing}`,
          );
          if (a.close) s.end();
        }
      });
    });
  }
  async listen(): Promise<void> {
    this.server.listen(this.path);
    await once(this.server, 'listening');
  }
  async close(): Promise<void> {
    for (const s of this.conns) s.destroy();
    await new Promise((r) => this.server.close(r));
  }
}

/** The front under test: built with sanitizers where the compiler can, else the project's build. */
function frontBinary(dir: string): { bin: string; sanitized: boolean } {
  const out = join(dir, 'berth-front-san');
  const src = new URL('./native/berth-front.c', import.meta.url).pathname;
  const r = spawnSync(
    process.env.CC ?? 'cc',
    ['-O1', '-g', '-fsanitize=address,undefined', '-fno-omit-frame-pointer', '-pthread', '-o', out, src],
    { stdio: 'ignore' },
  );
  if (r.status === 0) return { bin: out, sanitized: true };
  const built = nativeHelper('berth-front');
  assert.ok(built, 'berth-front is built (npm run build)');
  return { bin: built, sanitized: false };
}

/** Sends bytes on a fresh connection; collects what comes back until `until` holds or it closes. */
async function exchange(
  path: string,
  bytes: string | Buffer,
  until: (got: string) => boolean = () => false,
  ms = 5000,
): Promise<{ got: string; socket: Socket }> {
  const s = connect(path);
  await once(s, 'connect');
  s.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes);
  let got = '';
  await new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    const done = () => {
      clearTimeout(timer);
      resolve();
    };
    s.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (until(got)) done();
    });
    s.on('close', done);
    s.on('error', done);
  });
  return { got, socket: s };
}

/** Splits answers written back to back (Content-Length framed, as the front writes them). */
function answers(got: string): { status: number; head: string; body: string }[] {
  const out: { status: number; head: string; body: string }[] = [];
  let rest = got;
  while (rest.startsWith('HTTP/1.1 ')) {
    const end = rest.indexOf('\r\n\r\n');
    if (end < 0) break;
    const head = rest.slice(0, end);
    const len = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1] ?? 0);
    out.push({ status: Number(head.slice(9, 12)), head, body: rest.slice(end + 4, end + 4 + len) });
    rest = rest.slice(end + 4 + len);
  }
  return out;
}

describe('berth-front against a scripted engine', () => {
  const dir = tempDir('berth-front-');
  const engine = new FakeEngine(join(dir.path, 'engine.sock'));
  const listen = join(dir.path, 'front.sock');
  const audit = join(dir.path, 'audit.log');
  let child: ChildProcess;
  let stderr = '';
  let sanitized = false;
  /** Every connection the guard got from the front. */
  const guardSockets = new Set<Socket>();
  /** What the fake guard received, one entry per answer it gave. */
  const guardGot: string[] = [];
  /** Connections whose bytes start so are kept, unanswered, for the test (`manual`). */
  const manual: Socket[] = [];
  /** Connections that asked for `/hold`: the fake guard never answers them. */
  const held: Socket[] = [];

  /**
   * The fake guard: answers what it got once nothing more came for 60 ms, with 299 and those
   * bytes. `/chunked` and `/close` in the request line get a chunked answer, or one with
   * `Connection: close`; `/unframed` an answer that ends with its connection.
   */
  const serveGuard = (socket: Socket) => {
    // As front.ts sets it up for the guard: a client that half-closes still gets its answer.
    socket.allowHalfOpen = true;
    guardSockets.add(socket);
    socket.on('close', () => guardSockets.delete(socket));
    socket.on('error', () => undefined);
    // A client that half-closed is answered, then its connection ends (as node:http does).
    let ended = false;
    socket.on('end', () => (ended = true));
    let got = '';
    let timer: NodeJS.Timeout | undefined;
    socket.on('data', (d: Buffer) => {
      got += d.toString('latin1');
      if (got.startsWith('GET /hold')) {
        held.push(socket);
        return;
      }
      if (got.startsWith('POST /manual')) {
        if (!manual.includes(socket)) manual.push(socket);
        return;
      }
      clearTimeout(timer);
      timer = setTimeout(() => {
        const bytes = got;
        got = '';
        guardGot.push(bytes);
        const line = bytes.slice(0, bytes.indexOf('\r\n'));
        if (line.includes('/chunked'))
          socket.write(
            `HTTP/1.1 299 Guard\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n${bytes.length.toString(16)}\r\n${bytes}\r\n0\r\n\r\n`,
            'latin1',
          );
        else if (line.includes('/unframed')) socket.end(`HTTP/1.1 299 Guard\r\n\r\n${bytes}`, 'latin1');
        else
          socket.write(
            `HTTP/1.1 299 Guard\r\n${line.includes('/close') ? 'Connection: close\r\n' : ''}Content-Length: ${Buffer.byteLength(bytes, 'latin1')}\r\n\r\n${bytes}`,
            'latin1',
          );
        if (line.includes('/close') || ended) socket.end();
      }, 60);
    });
  };

  /** The bytes the guard answered, as the client got them (answers with status 299). */
  const byGuard = (got: string) =>
    answers(got)
      .filter((a) => a.status === 299)
      .map((a) => a.body);
  const byFront = (got: string) => answers(got).filter((a) => a.status !== 299);

  const tell = (m: object) => child.send(m);
  /**
   * Waits until the front answers an inspect of each of `known` itself and leaves each of
   * `forgotten` to the guard. The front reads the guard's messages on a thread of its own, in no
   * order with any request (a ping's round trip was not enough under CI load).
   */
  const synced = async (known: readonly string[], forgotten: readonly string[] = []) => {
    const script = engine.script;
    engine.script = (t) => ({
      head: 'HTTP/1.1 200 OK',
      body: `{"Id":"${/containers\/([^/]+)\/json/.exec(t)?.[1] ?? ''}"}`,
    });
    try {
      const wanted: [string, number][] = [
        ...known.map((id): [string, number] => [id, 200]),
        ...forgotten.map((id): [string, number] => [id, 299]),
      ];
      for (const [id, status] of wanted)
        for (let i = 0; ; i++) {
          const r = await exchange(
            listen,
            `GET /v1.41/containers/${id}/json HTTP/1.1\r\nHost: x\r\n\r\n`,
            (g) => answers(g).length === 1,
          );
          r.socket.destroy();
          if (answers(r.got)[0]?.status === status) break;
          assert.ok(i < 100, `the front did not take in the guard's word on ${id}`);
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
    } finally {
      engine.script = script;
    }
  };

  before(async () => {
    await engine.listen();
    const b = frontBinary(dir.path);
    sanitized = b.sanitized;
    child = spawn(b.bin, [listen, engine.path, TENANT, audit], {
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      env: {
        ...process.env,
        BERTH_FRONT_IDLE_MS: '1500',
        ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1',
        UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1',
      },
    });
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('message', (m: unknown, handle: unknown) => {
      if (!(handle instanceof Socket)) return;
      assert.deepEqual(m, { berth: 'connection' });
      serveGuard(handle);
    });
    const [m] = (await once(child, 'message')) as [unknown];
    assert.deepEqual(m, { berth: 'ready' });
  });

  after(async () => {
    const alive = child.exitCode === null && child.signalCode === null;
    child.kill('SIGTERM');
    for (const sock of guardSockets) sock.destroy();
    await engine.close();
    dir[Symbol.dispose]();
    assert.ok(alive, `the front was still running at the end: ${stderr}`);
    assert.doesNotMatch(stderr, /Sanitizer|runtime error/, stderr);
  });

  test('ping (GET and HEAD, any version prefix) is answered; the engine gets a head built by the front', async () => {
    engine.heads.length = 0;
    engine.script = (t) => ({ head: 'HTTP/1.1 200 OK', body: t.includes('_ping') ? 'OK' : 'x' });
    const { got, socket } = await exchange(
      listen,
      'GET /v1.41/_ping HTTP/1.1\r\nHost: docker\r\nX-Registry-Auth: secret\r\nUser-Agent: Docker-Client\r\n\r\n' +
        'HEAD /_ping HTTP/1.1\r\nHost: docker\r\n\r\n',
      (g) => answers(g).length === 2,
    );
    socket.destroy();
    const [a, b] = answers(got);
    assert.equal(a?.status, 200);
    assert.equal(a?.body, 'OK');
    assert.match(a?.head ?? '', /\r\nApi-Version: 1\.41\r\n/);
    assert.match(a?.head ?? '', /\r\nContent-Type: text\/plain/);
    assert.equal(b?.status, 200);
    assert.match(b?.head ?? '', /\r\nContent-Length: 0/i);
    assert.deepEqual(engine.heads, [
      'GET /v1.41/_ping HTTP/1.1\r\nHost: docker',
      'HEAD /_ping HTTP/1.1\r\nHost: docker',
    ]);
    // The audit line follows the answer: it may land a moment after the client has it.
    const lines = (await auditAfter(audit, 0, () => true, 2)).slice(-2);
    assert.deepEqual(
      lines.map((l) => ({ ...l, time: 'T' })),
      [
        {
          time: 'T',
          tenant: TENANT,
          method: 'GET',
          path: '/_ping',
          decision: 'allow',
          status: 200,
          via: 'front',
        },
        {
          time: 'T',
          tenant: TENANT,
          method: 'HEAD',
          path: '/_ping',
          decision: 'allow',
          status: 200,
          via: 'front',
        },
      ],
    );
  });

  test("an inspect is answered only for a container the guard said is the tenant's; the guard answers any other, with the client's bytes", async () => {
    const doc = (id: string) => `{"Id":"${id}","Name":"/x","Config":{"Labels":{"a":"}{\\"Id\\""}}}`;
    engine.script = (t) => {
      const ref = /containers\/([^/]+)\/json/.exec(t)?.[1] ?? '';
      if (ref === 'mine' || ref === MINE) return { head: 'HTTP/1.1 200 OK', body: doc(MINE), chunked: true };
      if (ref === 'other') return { head: 'HTTP/1.1 200 OK', body: doc(OTHER) };
      return { head: 'HTTP/1.1 404 Not Found', body: '{"message":"No such container"}' };
    };
    const ask = (ref: string, q = '') =>
      `GET /v1.41/containers/${ref}/json${q} HTTP/1.1\r\nHost: docker\r\n\r\n`;
    // Before the guard says so, even its own container is the guard's to answer.
    let r = await exchange(listen, ask('mine'), (g) => answers(g).length === 1);
    assert.deepEqual(byGuard(r.got), [ask('mine')]);
    r.socket.destroy();

    tell({ add: MINE });
    tell({ add: MINE2 });
    await synced([MINE, MINE2]);
    // One connection: the front's answers and the guard's, in the order asked.
    r = await exchange(
      listen,
      ask('mine', '?size=1') + ask('other') + ask(MINE) + ask('gone') + ask('abc'),
      (g) => answers(g).length === 5,
    );
    r.socket.destroy();
    const all = answers(r.got);
    assert.deepEqual(
      all.map((a) => a.status),
      [200, 299, 200, 299, 299],
    );
    assert.equal(all[0]?.body, doc(MINE), 'the body as the engine sent it (its chunked framing undone)');
    assert.match(all[0]?.head ?? '', /\r\nContent-Type: application\/json\r\n/);
    assert.equal(all[2]?.body, doc(MINE));
    assert.deepEqual(byGuard(r.got), [ask('other'), ask('gone'), ask('abc')]);
    assert.ok(engine.heads.includes(`GET /v1.41/containers/mine/json?size=1 HTTP/1.1\r\nHost: docker`));

    tell({ del: MINE });
    await synced([], [MINE]);
    r = await exchange(listen, ask(MINE), (g) => answers(g).length === 1);
    assert.deepEqual(byGuard(r.got), [ask(MINE)], 'forgotten: the guard answers');
    r.socket.destroy();
    tell({ add: MINE });
    await synced([MINE]);
  });

  test("a list goes to the engine with the tenant's label added; it is answered only when every entry is the tenant's", async () => {
    tell({ add: MINE });
    tell({ add: MINE2 });
    await synced([MINE, MINE2]);
    let entries = [MINE, MINE2];
    engine.heads.length = 0;
    engine.script = () => ({
      head: 'HTTP/1.1 200 OK',
      body: `[${entries.map((id) => `{"Id":"${id}","Names":["/[{x"],"Labels":{"k":"{\\"Id\\":\\"${OTHER}\\"}"}}`).join(',')}]\n`,
      chunked: true,
    });
    const filters = encodeURIComponent(JSON.stringify({ label: { 'a=b': true }, status: { exited: true } }));
    const ask = (q: string) => `GET /v1.41/containers/json${q} HTTP/1.1\r\nHost: docker\r\n\r\n`;
    let r = await exchange(
      listen,
      ask(`?all=1&filters=${filters}`) + ask(''),
      (g) => answers(g).length === 2,
    );
    r.socket.destroy();
    const [a, b] = answers(r.got);
    assert.equal(a?.status, 200);
    assert.deepEqual(
      (JSON.parse(a?.body ?? '') as { Id: string }[]).map((c) => c.Id),
      [MINE, MINE2],
    );
    assert.equal(b?.status, 200);
    const sent = engine.heads.map((h) => new URL(`http://x${h.split(' ')[1] ?? ''}`));
    assert.equal(sent[0]?.searchParams.get('all'), '1');
    assert.deepEqual(JSON.parse(sent[0]?.searchParams.get('filters') ?? ''), {
      label: { 'a=b': true, 'io.berth.tenant=t1': true },
      status: { exited: true },
    });
    // No filters: the guard's own default form (dockerd's legacy arrays).
    assert.deepEqual(JSON.parse(sent[1]?.searchParams.get('filters') ?? ''), {
      label: ['io.berth.tenant=t1'],
    });
    // Arrays stay arrays: the form the client chose is the form sent (the guard forwards it so).
    engine.heads.length = 0;
    const legacy = encodeURIComponent(JSON.stringify({ label: ['a=b'], status: ['exited'] }));
    r = await exchange(listen, ask(`?filters=${legacy}`), (g) => answers(g).length === 1);
    r.socket.destroy();
    assert.equal(answers(r.got)[0]?.status, 200);
    assert.deepEqual(
      JSON.parse(
        new URL(`http://x${engine.heads[0]?.split(' ')[1] ?? ''}`).searchParams.get('filters') ?? '',
      ),
      { label: ['a=b', 'io.berth.tenant=t1'], status: ['exited'] },
    );
    // limit and size pass on as written, in the client's order, the filters after them.
    engine.heads.length = 0;
    r = await exchange(listen, ask('?limit=3&size=true&all=0'), (g) => answers(g).length === 1);
    r.socket.destroy();
    assert.equal(answers(r.got)[0]?.status, 200);
    assert.equal(
      engine.heads[0],
      `GET /v1.41/containers/json?limit=3&size=true&all=0&filters=${encodeURIComponent(JSON.stringify({ label: ['io.berth.tenant=t1'] }))} HTTP/1.1\r\nHost: docker`,
    );

    entries = [];
    r = await exchange(listen, ask(''), (g) => answers(g).length === 1);
    r.socket.destroy();
    assert.equal(answers(r.got)[0]?.body, '[]\n', 'an empty list is the answer as it is');

    entries = [MINE, OTHER];
    r = await exchange(listen, ask('?all=1'), (g) => answers(g).length === 1);
    assert.deepEqual(
      byGuard(r.got),
      [ask('?all=1')],
      'an entry not known to be the tenant’s: the guard answers',
    );
    r.socket.destroy();
  });

  test('every request outside the narrow shapes reaches the guard byte for byte; the front answers none of them', async () => {
    engine.script = () => ({ head: 'HTTP/1.1 200 OK', body: 'OK' });
    const enc = (o: unknown) => encodeURIComponent(JSON.stringify(o));
    const odd = [
      'GET /_ping HTTP/1.1\nHost: x\n\n',
      'GET /_ping HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n',
      'GET /_ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n',
      'GET /_ping HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      'GET /_ping HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n',
      'GET /_ping HTTP/1.1\r\nConnection: close\r\n\r\n',
      'GET /_ping HTTP/1.1\r\nExpect: 100-continue\r\n\r\n',
      'GET /_ping HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx',
      'GET /_ping HTTP/1.1\r\nContent-Length: +1\r\n\r\nx',
      'GET /_ping HTTP/1.0\r\n\r\n',
      'get /_ping HTTP/1.1\r\n\r\n',
      'PATCH /_ping HTTP/1.1\r\n\r\n',
      'GET http://x/_ping HTTP/1.1\r\n\r\n',
      'GET /_ping?x=1 HTTP/1.1\r\n\r\n',
      'GET //_ping HTTP/1.1\r\n\r\n',
      'GET /v1.41/../_ping HTTP/1.1\r\n\r\n',
      'GET /v1.41/containers/a%2Fb/json HTTP/1.1\r\n\r\n',
      'GET /containers/a/b/json HTTP/1.1\r\n\r\n',
      'GET /containers/-a/json HTTP/1.1\r\n\r\n',
      'GET /containers/a/json?size=1&size=0 HTTP/1.1\r\n\r\n',
      'GET /containers/json?all=1&all=0 HTTP/1.1\r\n\r\n',
      'GET /containers/json?x=1 HTTP/1.1\r\n\r\n',
      'GET /containers/json?all=1;x=2 HTTP/1.1\r\n\r\n',
      'GET /containers/json?filters=%7 HTTP/1.1\r\n\r\n',
      `GET /containers/json?filters=${enc({ since: ['x'] })} HTTP/1.1\r\n\r\n`,
      `GET /containers/json?filters=${enc({ before: ['x'] })} HTTP/1.1\r\n\r\n`,
      `GET /containers/json?filters=${encodeURIComponent('{"label":["a"],"label":["b"]}')} HTTP/1.1\r\n\r\n`,
      `GET /containers/json?filters=${encodeURIComponent('{"Label":["a"]}')} HTTP/1.1\r\n\r\n`,
      `GET /containers/json?filters=${encodeURIComponent('{"label":["\\u0041"]}')} HTTP/1.1\r\n\r\n`,
      `GET /containers/json?filters=${enc({ label: { a: false } })} HTTP/1.1\r\n\r\n`,
      `GET /containers/json?filters=${enc({ label: 'a' })} HTTP/1.1\r\n\r\n`,
      `GET /containers/json?filters=${encodeURIComponent('{"label":["a"]} x')} HTTP/1.1\r\n\r\n`,
      `GET /containers/json?filters=${enc({ label: ['a'], status: { exited: true } })} HTTP/1.1\r\nHost: x\r\n\r\n`,
      'GET /_ping HTTP/1.1\r\n\r\n',
      'GET /_ping HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n',
      'GET /_p\ting HTTP/1.1\r\nHost: x\r\n\r\n',
      'GET /containers/abc/logs/?follow=1 HTTP/1.1\r\nHost: x\r\n\r\n',
      'GET /containers/abc/log%73?follow=1 HTTP/1.1\r\nHost: x\r\n\r\n',
      'GET //events HTTP/1.1\r\nHost: x\r\n\r\n',
      'POST /containers/create HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}',
      'DELETE /containers/abc?force=1 HTTP/1.1\r\n\r\n',
      'GET /containers/abc/logs?follow=1 HTTP/1.1\r\n\r\n',
      'POST /exec/abc/start HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}',
      `POST /build HTTP/1.1\r\nContent-Length: 70000\r\n\r\n${'x'.repeat(70000)}`,
      'GET /_ping HTTP/1.1\r\nHost: \x00\r\n\r\n',
      'GET /_ping HTTP/1.1\r\nHost: \x80\r\n\r\n',
      'GET /_ping HTTP/1.1\r\nBad Name: x\r\n\r\n',
      `GET /_ping HTTP/1.1\r\n${'X-A: b\r\n'.repeat(65)}\r\n`,
      `GET /_ping HTTP/1.1\r\nX: ${'a'.repeat(9000)}\r\n\r\n`,
    ];
    for (const bytes of odd) {
      const what = JSON.stringify(bytes.slice(0, 80));
      const r = await exchange(
        listen,
        bytes,
        (g) => byFront(g).length > 0 || byGuard(g).join('').length >= bytes.length,
        3000,
      );
      r.socket.destroy();
      assert.deepEqual(byFront(r.got), [], `${what}: answered by the front`);
      assert.ok(byGuard(r.got).join('') === bytes, `${what}: the guard got other bytes`);
    }
  });

  test('pipelined: the front answers its requests, the guard the others, in the order asked', async () => {
    engine.script = () => ({ head: 'HTTP/1.1 200 OK', body: 'OK' });
    const ping = 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n';
    const post =
      'POST /containers/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}';
    const del = 'DELETE /containers/abc HTTP/1.1\r\nHost: x\r\n\r\n';
    const r = await exchange(listen, ping + ping + post + ping + del + ping, (g) => answers(g).length === 6);
    r.socket.destroy();
    assert.deepEqual(
      answers(r.got).map((a) => a.status),
      [200, 200, 299, 200, 299, 200],
    );
    assert.deepEqual(byGuard(r.got), [post, del]);
  });

  test("the guard's answers come back as the guard framed them: chunked, closing the connection, unframed", async () => {
    const ask = (path: string, extra = '') => `GET ${path} HTTP/1.1\r\nHost: x\r\n${extra}\r\n`;
    let r = await exchange(listen, ask('/chunked') + ask('/plain'), (g) => answers(g).length === 2);
    r.socket.destroy();
    assert.match(r.got, /^HTTP\/1\.1 299 Guard\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n/);
    assert.match(r.got, /0\r\n\r\nHTTP\/1\.1 299 Guard\r\nContent-Length: \d+\r\n\r\nGET \/plain/);
    // An answer that closes: the client's connection ends with it, and what it sent after is not answered.
    r = await exchange(listen, ask('/close') + ask('/plain'));
    assert.deepEqual(byGuard(r.got), [ask('/close')]);
    assert.ok(r.socket.destroyed || r.socket.readableEnded, 'the connection ended');
    r.socket.destroy();
    r = await exchange(listen, ask('/unframed'));
    assert.equal(r.got, `HTTP/1.1 299 Guard\r\n\r\n${ask('/unframed')}`);
    r.socket.destroy();
  });

  test("the engine's failures: an error answer, a closed connection, an answer it cannot read", async () => {
    const ping = 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n';
    engine.script = () => ({ head: 'HTTP/1.1 500 Internal Server Error', body: '{"message":"x"}' });
    let r = await exchange(listen, ping, (g) => answers(g).length === 1);
    assert.deepEqual(byGuard(r.got), [ping], 'a ping the engine failed: the guard answers it');
    r.socket.destroy();
    // An engine that closes after each answer: the next request opens a new connection.
    engine.script = () => ({ head: 'HTTP/1.1 200 OK', body: 'OK', close: true });
    r = await exchange(listen, ping + ping + ping, (g) => answers(g).length === 3);
    assert.deepEqual(
      answers(r.got).map((a) => a.status),
      [200, 200, 200],
    );
    r.socket.destroy();
    // Engine answers that are no HTTP the front reads: the guard's.
    engine.script = () => ({ head: 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip', body: 'OK' });
    r = await exchange(listen, ping, (g) => answers(g).length === 1);
    assert.deepEqual(byGuard(r.got), [ping]);
    r.socket.destroy();
  });

  test("a handed connection is the guard's to write without blocking: a client that reads nothing holds up no event loop", async () => {
    const c = connect(listen);
    await once(c, 'connect');
    c.write('POST /manual HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n');
    c.pause();
    const end = Date.now() + 5000;
    while (manual.length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    const h = manual.shift();
    assert.ok(h, 'handed over');
    // 8 MiB onto a socket whose client reads nothing: a blocking descriptor would stop this process here.
    h.write(Buffer.alloc(8 << 20));
    const ticked = await Promise.race([
      new Promise<boolean>((r) => setTimeout(() => r(true), 50)),
      new Promise<boolean>((r) => setTimeout(() => r(false), 5000).unref()),
    ]);
    assert.equal(ticked, true);
    assert.ok(h.writableLength > 0, 'the write waits in the guard, not in a blocked call');
    c.destroy();
    h.destroy();
  });

  test('a client that hangs up while the guard answers it: the front closes its connection to the guard', async () => {
    const c = connect(listen);
    await once(c, 'connect');
    c.write('GET /hold HTTP/1.1\r\nHost: x\r\n\r\n');
    const end = Date.now() + 5000;
    while (held.length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    const g = held.shift();
    assert.ok(g, 'the request reached the guard');
    const gone = once(g, 'end');
    const before = guardSockets.size;
    c.destroy();
    await Promise.race([
      gone,
      new Promise((_, j) =>
        setTimeout(() => j(new Error('the guard’s connection stayed open')), 5000).unref(),
      ),
    ]);
    // Not sent again on a new connection: the guard had it once.
    await new Promise((r) => setTimeout(r, 200));
    assert.ok(guardSockets.size <= before, 'no new connection to the guard for it');
    assert.equal(held.length, 0, 'the request reached the guard once');
    g.destroy();
  });

  test('a link at the socket path: the front does not start, and changes nothing it names', async () => {
    const victim = join(dir.path, 'victim');
    writeFileSync(victim, 'x', { mode: 0o600 });
    const path = join(dir.path, 'linked.sock');
    symlinkSync(victim, path);
    const bin = nativeHelper('berth-front');
    assert.ok(bin);
    const f = spawn(bin, [path, engine.path, TENANT, ''], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    const [code] = (await once(f, 'exit')) as [number];
    assert.notEqual(code, 0);
    assert.equal(statSync(victim).mode & 0o777, 0o600);
    // Where it can bind, the socket is 0666 from the start (its umask; no chmod by path).
    assert.equal(statSync(listen).mode & 0o777, 0o666);
  });

  test('a kept-alive connection idle too long is closed; a client that half-closes after its request gets its answer', async () => {
    const s = connect(listen);
    await once(s, 'connect');
    const t0 = Date.now();
    await once(s, 'close');
    assert.ok(Date.now() - t0 >= 1000, 'closed once idle (1.5 s here)');

    engine.script = () => ({ head: 'HTTP/1.1 200 OK', body: 'OK' });
    for (const req of ['GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n', 'DELETE /containers/abc HTTP/1.1\r\n\r\n']) {
      const c = connect(listen);
      await once(c, 'connect');
      let got = '';
      c.on('data', (d: Buffer) => (got += d.toString('latin1')));
      c.end(req);
      await once(c, 'close');
      assert.equal(answers(got).length, 1, `${req}: the answer came before the front closed its side`);
    }
  });

  test('300 kept-alive connections at once are all answered by the front: idle ones do not push the next clients to the guard', async () => {
    // Client pools keep idle connections (a Node agent two per client that pings first); with 128
    // threads at most, the bench's load of 200 clients had every request go to the guard.
    engine.script = () => ({ head: 'HTTP/1.1 200 OK', body: 'OK' });
    const held = await Promise.all(
      Array.from({ length: 300 }, () =>
        exchange(listen, 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n', (g) => answers(g).length === 1),
      ),
    );
    try {
      const statuses = held.map(({ got }) => answers(got)[0]?.status);
      assert.deepEqual(
        statuses.filter((s) => s !== 200),
        [],
        'every connection answered by the front (the fake guard would say 299)',
      );
      // And they are still the front's: a second ping on each, while all are held.
      const again = await Promise.all(
        held.map(async ({ socket }) => {
          let got = '';
          const answered = new Promise<void>((resolve) =>
            socket.on('data', (d: Buffer) => {
              got += d.toString('latin1');
              if (answers(got).length === 1) resolve();
            }),
          );
          socket.write('GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n');
          await answered;
          return answers(got)[0]?.status;
        }),
      );
      assert.deepEqual(
        again.filter((s) => s !== 200),
        [],
      );
    } finally {
      for (const { socket } of held) socket.destroy();
    }
  });

  test('garbage: random heads and bytes neither crash the front nor get an answer the guard would not give; then the engine goes', async () => {
    engine.script = () => ({ head: 'HTTP/1.1 200 OK', body: '[]' });
    const pieces = [
      'GET ',
      'HEAD ',
      'POST ',
      'DELETE ',
      '/v1.41',
      '/_ping',
      '/containers/',
      'json',
      '/json',
      '?',
      '&',
      '=',
      'all=1',
      'filters=',
      '%7B',
      '%22',
      '%5B',
      '%5D',
      '%7D',
      '%3A',
      '%2C',
      'label',
      ' HTTP/1.1',
      '\r\n',
      '\n',
      '\r',
      ': ',
      'Host',
      'Content-Length: 3',
      'Connection: keep-alive',
      '\x00',
      '\xff',
      ' ',
      '\t',
      '%',
      '+',
      '"',
      '\\',
    ];
    for (let i = 0; i < 300; i++) {
      const n = 1 + ((randomBytes(1)[0] ?? 0) % 24);
      let bytes = '';
      for (let k = 0; k < n; k++) {
        const b = randomBytes(2);
        bytes += (b[0] ?? 0) % 5 === 0 ? b.toString('latin1') : (pieces[(b[1] ?? 0) % pieces.length] ?? '');
      }
      if (i % 2 === 0) bytes += '\r\n\r\n';
      const r = await exchange(listen, bytes, (g) => g.length > 0, 100);
      for (const a of answers(r.got)) assert.ok(a.status === 200 || a.status === 299, JSON.stringify(bytes));
      r.socket.destroy();
    }
    assert.equal(child.exitCode, null, stderr);
    // No engine at all (it went away): the guard answers.
    await engine.close();
    const ping = 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n';
    const r = await exchange(listen, ping, (g) => answers(g).length === 1);
    assert.deepEqual(byGuard(r.got), [ping]);
    r.socket.destroy();
    if (!sanitized) console.log('# berth-front ran without sanitizers (the compiler has none)');
  });
});
