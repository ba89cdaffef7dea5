/**
 * berth-front alone, against a scripted engine: this test process is the guard (the front's IPC
 * parent, receiving the connections it hands over). It checks what the front answers, what it
 * sends the engine (built from parsed parts, never the client's bytes), and that everything else
 * reaches the guard unread from the first request the front did not answer. The front is built
 * here with AddressSanitizer and UBSan where the compiler has them, and fed garbage.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../../test/support/index.js';
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

interface Handed {
  socket: Socket;
  /** What the connection still had unread when it arrived, read for a moment. */
  unread: Promise<string>;
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
  const handed: Handed[] = [];
  let handedWaiters: (() => void)[] = [];

  /** The next connection the front hands over (within ms). */
  async function nextHanded(ms = 5000): Promise<Handed> {
    const end = Date.now() + ms;
    while (handed.length === 0 && Date.now() < end)
      await new Promise<void>((r) => {
        handedWaiters.push(r);
        setTimeout(r, 100);
      });
    const h = handed.shift();
    assert.ok(h, 'the front handed the connection over');
    return h;
  }

  const tell = (m: object) => child.send(m);
  /** Lets the front's channel thread read what was sent (the channel is ordered; a ping answers after it). */
  const synced = async () => {
    const script = engine.script;
    engine.script = () => ({ head: 'HTTP/1.1 200 OK', body: 'OK' });
    const r = await exchange(listen, 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n', (g) => g.endsWith('OK'));
    r.socket.destroy();
    engine.script = script;
  };

  before(async () => {
    await engine.listen();
    const b = frontBinary(dir.path);
    sanitized = b.sanitized;
    child = spawn(b.bin, [listen, engine.path, TENANT, audit], {
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
      env: {
        ...process.env,
        ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1',
        UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1',
      },
    });
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('message', (m: unknown, handle: unknown) => {
      if (!handle) return;
      assert.deepEqual(m, { berth: 'connection' });
      const socket = handle as Socket;
      let unread = '';
      socket.on('data', (d: Buffer) => (unread += d.toString('latin1')));
      socket.on('error', () => undefined);
      handed.push({ socket, unread: new Promise((r) => setTimeout(() => r(unread), 150)) });
      const w = handedWaiters;
      handedWaiters = [];
      for (const f of w) f();
    });
    const [m] = (await once(child, 'message')) as [unknown];
    assert.deepEqual(m, { berth: 'ready' });
  });

  after(async () => {
    const alive = child.exitCode === null && child.signalCode === null;
    child.kill('SIGTERM');
    for (const h of handed) h.socket.destroy();
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
    const lines = readFileSync(audit, 'utf8')
      .trim()
      .split('\n')
      .slice(-2)
      .map((l) => JSON.parse(l) as object);
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

  test("an inspect is answered only for a container the guard said is the tenant's; any other goes to the guard unread", async () => {
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
    let r = await exchange(listen, ask('mine'), () => false, 300);
    let h = await nextHanded();
    assert.equal(await h.unread, ask('mine'));
    assert.equal(r.got, '');
    r.socket.destroy();
    h.socket.destroy();

    tell({ add: MINE });
    tell({ add: MINE2 });
    await synced();
    r = await exchange(listen, ask('mine', '?size=1') + ask(MINE), (g) => answers(g).length === 2);
    r.socket.destroy();
    const [a, b] = answers(r.got);
    assert.equal(a?.status, 200);
    assert.equal(a?.body, doc(MINE), 'the body as the engine sent it (its chunked framing undone)');
    assert.match(a?.head ?? '', /\r\nContent-Type: application\/json\r\n/);
    assert.equal(b?.body, doc(MINE));
    assert.ok(engine.heads.includes(`GET /v1.41/containers/mine/json?size=1 HTTP/1.1\r\nHost: docker`));

    for (const ref of ['other', 'gone', 'abc']) {
      r = await exchange(listen, ask(ref), () => false, 300);
      h = await nextHanded();
      assert.equal(await h.unread, ask(ref), ref);
      assert.equal(r.got, '', `${ref}: nothing answered by the front`);
      r.socket.destroy();
      h.socket.destroy();
    }

    tell({ del: MINE });
    await synced();
    r = await exchange(listen, ask(MINE), () => false, 300);
    h = await nextHanded();
    assert.equal(await h.unread, ask(MINE), 'forgotten: the guard answers');
    r.socket.destroy();
    h.socket.destroy();
    tell({ add: MINE });
    await synced();
  });

  test("a list goes to the engine with the tenant's label added; it is answered only when every entry is the tenant's", async () => {
    tell({ add: MINE });
    tell({ add: MINE2 });
    await synced();
    let entries = [MINE, MINE2];
    engine.heads.length = 0;
    engine.script = () => ({
      head: 'HTTP/1.1 200 OK',
      body: `[${entries.map((id) => `{"Id":"${id}","Names":["/[{x"],"Labels":{"k":"{\\"Id\\":\\"${OTHER}\\"}"}}`).join(',')}]\n`,
      chunked: true,
    });
    const filters = encodeURIComponent(JSON.stringify({ label: ['a=b'], status: { exited: true } }));
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
    assert.deepEqual(JSON.parse(sent[1]?.searchParams.get('filters') ?? ''), {
      label: { 'io.berth.tenant=t1': true },
    });

    entries = [];
    r = await exchange(listen, ask(''), (g) => answers(g).length === 1);
    r.socket.destroy();
    assert.equal(answers(r.got)[0]?.body, '[]\n', 'an empty list is the answer as it is');

    entries = [MINE, OTHER];
    r = await exchange(listen, ask('?all=1'), () => false, 300);
    const h = await nextHanded();
    assert.equal(await h.unread, ask('?all=1'), 'an entry not known to be the tenant’s: the guard answers');
    assert.equal(r.got, '');
    r.socket.destroy();
    h.socket.destroy();
  });

  test('every head outside the narrow shapes reaches the guard with not one byte read', async () => {
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
      'GET /_ping HTTP/1.0\r\n\r\n',
      'get /_ping HTTP/1.1\r\n\r\n',
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
      'POST /containers/create HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}',
      'GET /_ping HTTP/1.1\r\nHost: \x00\r\n\r\n',
      'GET /_ping HTTP/1.1\r\nHost: \x80\r\n\r\n',
      'GET /_ping HTTP/1.1\r\nBad Name: x\r\n\r\n',
      `GET /_ping HTTP/1.1\r\n${'X-A: b\r\n'.repeat(65)}\r\n`,
      `GET /_ping HTTP/1.1\r\nX: ${'a'.repeat(9000)}\r\n\r\n`,
    ];
    for (const bytes of odd) {
      const r = await exchange(listen, bytes, () => false, 250);
      const h = await nextHanded();
      assert.equal(await h.unread, bytes, JSON.stringify(bytes.slice(0, 80)));
      assert.equal(r.got, '', `${JSON.stringify(bytes.slice(0, 80))}: nothing answered by the front`);
      r.socket.destroy();
      h.socket.destroy();
    }
  });

  test('pipelined: the front answers its requests in order and hands the rest over from the first it does not take', async () => {
    engine.script = () => ({ head: 'HTTP/1.1 200 OK', body: 'OK' });
    const ping = 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n';
    const post =
      'POST /containers/create HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}';
    const r = await exchange(listen, ping + ping + post + ping, (g) => answers(g).length === 2);
    const h = await nextHanded();
    assert.equal(answers(r.got).length, 2);
    assert.equal(await h.unread, post + ping);
    r.socket.destroy();
    h.socket.destroy();
  });

  test("the engine's failures: an error answer, a closed connection, an answer it cannot read", async () => {
    const ping = 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n';
    engine.script = () => ({ head: 'HTTP/1.1 500 Internal Server Error', body: '{"message":"x"}' });
    let r = await exchange(listen, ping, () => false, 250);
    let h = await nextHanded();
    assert.equal(await h.unread, ping, 'a ping the engine failed: the guard answers it');
    r.socket.destroy();
    h.socket.destroy();
    // An engine that closes after each answer: the next request opens a new connection.
    engine.script = () => ({ head: 'HTTP/1.1 200 OK', body: 'OK', close: true });
    r = await exchange(listen, ping + ping + ping, (g) => answers(g).length === 3);
    assert.equal(answers(r.got).length, 3);
    r.socket.destroy();
    // Engine answers that are no HTTP the front reads: the guard's.
    engine.script = () => ({ head: 'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip', body: 'OK' });
    r = await exchange(listen, ping, () => false, 250);
    h = await nextHanded();
    assert.equal(await h.unread, ping);
    r.socket.destroy();
    h.socket.destroy();
  });

  test("a handed connection is the guard's to write without blocking: a client that reads nothing holds up no event loop", async () => {
    const c = connect(listen);
    await once(c, 'connect');
    c.write('POST /containers/create HTTP/1.1\r\nContent-Length: 0\r\n\r\n');
    c.pause();
    const h = await nextHanded();
    await h.unread;
    // 8 MiB onto a socket whose client reads nothing: a blocking descriptor would stop this process here.
    h.socket.write(Buffer.alloc(8 << 20));
    const ticked = await Promise.race([
      new Promise<boolean>((r) => setTimeout(() => r(true), 50)),
      new Promise<boolean>((r) => setTimeout(() => r(false), 5000).unref()),
    ]);
    assert.equal(ticked, true);
    assert.ok(h.socket.writableLength > 0, 'the write waits in the guard, not in a blocked call');
    c.destroy();
    h.socket.destroy();
  });

  test('a connection idle for two seconds, and a client that half-closes after its request', async () => {
    const s = connect(listen);
    await once(s, 'connect');
    const h = await nextHanded(4000);
    assert.equal(await h.unread, '', 'idle: handed over as it is');
    s.destroy();
    h.socket.destroy();

    engine.script = () => ({ head: 'HTTP/1.1 200 OK', body: 'OK' });
    const c = connect(listen);
    await once(c, 'connect');
    let got = '';
    c.on('data', (d: Buffer) => (got += d.toString('latin1')));
    c.end('GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n');
    await once(c, 'close');
    assert.equal(answers(got)[0]?.body, 'OK', 'the answer came before the front closed its side');
  });

  test('garbage: random heads and bytes neither crash the front nor get an answer the guard would not give; then the engine goes', async () => {
    engine.script = () => ({ head: 'HTTP/1.1 200 OK', body: '[]' });
    const pieces = [
      'GET ',
      'HEAD ',
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
      const r = await exchange(listen, bytes, (g) => g.length > 0, 60);
      for (const a of answers(r.got)) assert.equal(a.status, 200, JSON.stringify(bytes));
      r.socket.destroy();
      for (const h of handed.splice(0)) h.socket.destroy();
    }
    assert.equal(child.exitCode, null, stderr);
    // No engine at all (it went away): the guard answers, and says why.
    await engine.close();
    const ping = 'GET /_ping HTTP/1.1\r\nHost: x\r\n\r\n';
    const r = await exchange(listen, ping, () => false, 250);
    const h = await nextHanded();
    assert.equal(await h.unread, ping);
    r.socket.destroy();
    h.socket.destroy();
    if (!sanitized) console.log('# berth-front ran without sanitizers (the compiler has none)');
  });
});
