/**
 * The lean exchange: its answer parser fed every way an engine may split or frame an answer, its
 * request serializer's refusals, and its pool against a scripted HTTP peer on a unix socket (the
 * real engine is exercised by exchange.int.test.ts and the guard's suites).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect } from 'node:net';
import type { Server, Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AnswerParser, ExchangeError, createExchange, requestBytes } from './exchange.js';

/** Feeds `text` in pieces of `step` bytes; returns the parser and whether it completed. */
function parse(text: string | Buffer, method = 'GET', step = Infinity, max = 1 << 20) {
  const buf = Buffer.isBuffer(text) ? text : Buffer.from(text, 'latin1');
  const p = new AnswerParser(method, max);
  let done = false;
  for (let i = 0; i < buf.length && !done; i += step)
    done = p.feed(buf.subarray(i, Math.min(buf.length, i + step)));
  return { p, done };
}

test('answers framed by length, by chunks and by the close, whole or split byte by byte', () => {
  const sized = 'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}';
  const chunked =
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nApi-Version: 1.41\r\n\r\n' +
    '4;ext=1\r\n{"ok\r\n7\r\n":true}\r\n0\r\nX-Trailer: t\r\n\r\n';
  for (const step of [Infinity, 1, 3, 7]) {
    const a = parse(sized, 'GET', step);
    assert.ok(a.done, `sized, step ${step}`);
    assert.equal(a.p.status, 200);
    assert.equal(a.p.headers['content-type'], 'application/json');
    assert.equal(a.p.body.toString(), '{"ok":true}');
    assert.equal(a.p.keepAlive, true);
    const c = parse(chunked, 'GET', step);
    assert.ok(c.done, `chunked, step ${step}`);
    assert.equal(c.p.body.toString(), '{"ok":true}');
    assert.equal(c.p.headers['api-version'], '1.41');
    assert.equal(c.p.leftover, 0);
  }
  const closed = parse('HTTP/1.0 200 OK\r\n\r\nuntil the end', 'GET');
  assert.equal(closed.done, false, 'an answer framed by the close is not complete before it');
  assert.equal(closed.p.end(), true);
  assert.equal(closed.p.body.toString(), 'until the end');
  assert.equal(closed.p.keepAlive, false);
});

test('answers without a body: HEAD (whatever its length says), 204, 304; interim 100 is skipped', () => {
  const head = parse('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n', 'HEAD');
  assert.ok(head.done);
  assert.equal(head.p.headers['content-length'], '2');
  assert.equal(head.p.body.length, 0);
  assert.ok(parse('HTTP/1.1 204 No Content\r\n\r\n').done);
  assert.ok(parse('HTTP/1.1 304 Not Modified\r\n\r\n').done);
  const interim = parse(
    'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}',
    'POST',
    5,
  );
  assert.ok(interim.done);
  assert.equal(interim.p.status, 201);
  assert.equal(interim.p.body.toString(), '{}');
});

test('connection semantics: close ends reuse, repeated headers are joined, bytes after the answer are flagged', () => {
  const close = parse('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
  assert.ok(close.done);
  assert.equal(close.p.keepAlive, false);
  const joined = parse('HTTP/1.1 200 OK\r\nWarning: a\r\nwarning: b\r\nContent-Length: 0\r\n\r\n');
  assert.equal(joined.p.headers.warning, 'a, b');
  const extra = parse('HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1');
  assert.ok(extra.done);
  assert.equal(extra.p.leftover, 8);
});

test('malformed and oversized answers are errors, not guesses', () => {
  const bad = [
    'SSH-2.0-OpenSSH\r\n\r\n',
    'HTTP/1.1 200 OK\r\nno colon here\r\n\r\n',
    'HTTP/1.1 200 OK\r\nno colon here\r\nX-Later: has one\r\n\r\n',
    'HTTP/1.1 200 OK\r\n: no name\r\n\r\n',
    'HTTP/1.1 200 OK\r\nBad Name: v\r\n\r\n',
    'HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n',
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n',
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n',
    'HTTP/1.1 101 Switching Protocols\r\n\r\n',
  ];
  for (const text of bad) assert.throws(() => parse(text), ExchangeError, JSON.stringify(text));
  assert.throws(
    () => parse('HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n', 'GET', Infinity, 10),
    (e: unknown) => e instanceof ExchangeError && e.code === 'ENGINE_TOO_LARGE',
  );
  assert.throws(
    () =>
      parse(
        `HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n20\r\n${'x'.repeat(32)}\r\n0\r\n\r\n`,
        'GET',
        4,
        10,
      ),
    (e: unknown) => e instanceof ExchangeError && e.code === 'ENGINE_TOO_LARGE',
  );
  assert.throws(() => parse(`HTTP/1.1 200 OK\r\nX: ${'y'.repeat(70_000)}`), ExchangeError);
});

test('requests: one buffer with host and length; values that would split the request are refused', () => {
  const get = requestBytes({
    method: 'GET',
    path: '/v1.41/_ping',
    headers: { 'X-Registry-Auth': 'e30=' },
  }).toString();
  assert.equal(get, 'GET /v1.41/_ping HTTP/1.1\r\nHost: docker\r\nX-Registry-Auth: e30=\r\n\r\n');
  const post = requestBytes({ method: 'POST', path: '/x', body: Buffer.from('{}') }).toString();
  assert.match(post, /\r\nContent-Length: 2\r\n\r\n\{\}$/);
  assert.match(requestBytes({ method: 'POST', path: '/x' }).toString(), /Content-Length: 0/);
  // The caller's own framing headers never reach the engine: the exchange writes its own.
  const framed = requestBytes({
    method: 'GET',
    path: '/x',
    headers: { 'Content-Length': '5', 'Transfer-Encoding': 'chunked', Host: 'evil', Connection: 'close' },
  }).toString();
  assert.equal(framed, 'GET /x HTTP/1.1\r\nHost: docker\r\n\r\n');
  for (const req of [
    { method: 'GET', path: '/x', headers: { 'X-A': 'v\r\nX-Injected: 1' } },
    { method: 'GET', path: '/x', headers: { 'X-A': 'v\nX-Injected: 1' } },
    { method: 'GET', path: '/x', headers: { 'Bad Name': 'v' } },
    { method: 'GET', path: '/x HTTP/1.1\r\nX: y' },
    { method: 'GET', path: 'x' },
    { method: 'G T', path: '/x' },
  ])
    assert.throws(
      () => requestBytes(req),
      (e: unknown) => e instanceof ExchangeError && e.code === 'INVALID_REQUEST',
    );
});

/** A scripted peer: `reply` answers each request head it reads; counts connections. */
async function peer(reply: (head: string, socket: Socket, n: number) => void): Promise<{
  path: string;
  connections: () => number;
  /** Connections still open on the engine's side. */
  open: () => number;
  server: Server;
  [Symbol.asyncDispose]: () => Promise<void>;
}> {
  const dir = mkdtempSync(join(tmpdir(), 'berth-exchange-'));
  const path = join(dir, 'engine.sock');
  let connections = 0;
  let requests = 0;
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    connections++;
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    let buf = '';
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (let end = buf.indexOf('\r\n\r\n'); end >= 0; end = buf.indexOf('\r\n\r\n')) {
        const head = buf.slice(0, end);
        const len = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
        if (buf.length < end + 4 + len) break;
        buf = buf.slice(end + 4 + len);
        reply(head, s, ++requests);
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  return {
    path,
    connections: () => connections,
    open: () => sockets.size,
    server,
    [Symbol.asyncDispose]: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const ok = (body: string) => `HTTP/1.1 200 OK\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;

test('the pool reuses one connection for sequential exchanges, and not one the engine marked close', async () => {
  await using engine = await peer((head, s, n) => {
    s.write(
      head.includes('/close')
        ? `HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n${n}`
        : ok(String(n)),
    );
  });
  const ex = createExchange(() => connect(engine.path));
  try {
    for (let i = 1; i <= 20; i++)
      assert.equal((await ex.send({ method: 'GET', path: '/a' })).body.toString(), String(i));
    assert.equal(engine.connections(), 1);
    await ex.send({ method: 'GET', path: '/close' });
    await ex.send({ method: 'GET', path: '/a' });
    assert.equal(engine.connections(), 2, 'the connection the engine closed is not reused');
    // Concurrent exchanges each get a connection; afterwards they are all pooled.
    const answers = await Promise.all(
      Array.from({ length: 5 }, () => ex.send({ method: 'GET', path: '/a' })),
    );
    assert.equal(answers.length, 5);
    assert.ok(engine.connections() <= 6);
  } finally {
    ex.close();
  }
});

test('an idle connection the engine dropped: GET is sent again on a new one, POST is not repeated', async () => {
  let drop = false;
  const seen: string[] = [];
  await using engine = await peer((head, s) => {
    seen.push(head.split(' ')[0] ?? '');
    if (drop) {
      drop = false;
      s.destroy();
      return;
    }
    s.write(ok('{}'));
  });
  const ex = createExchange(() => connect(engine.path));
  try {
    await ex.send({ method: 'GET', path: '/a' });
    drop = true;
    assert.equal((await ex.send({ method: 'GET', path: '/a' })).status, 200);
    assert.deepEqual(seen, ['GET', 'GET', 'GET'], 'the GET was repeated once');
    drop = true;
    await assert.rejects(ex.send({ method: 'POST', path: '/containers/x/kill' }), (e: unknown) => {
      return e instanceof ExchangeError && e.code === 'ENGINE_CLOSED';
    });
    assert.equal(seen.filter((m) => m === 'POST').length, 1, 'the POST was not repeated');
    assert.equal((await ex.send({ method: 'GET', path: '/a' })).status, 200, 'the pool still works');
  } finally {
    ex.close();
  }
});

test('garbage from the engine fails that exchange only; an unreachable engine is an error', async () => {
  await using engine = await peer((head, s) => {
    s.write(head.includes('/garbage') ? 'SSH-2.0-nope\r\n\r\n' : ok('{}'));
  });
  const ex = createExchange(() => connect(engine.path));
  try {
    await assert.rejects(ex.send({ method: 'GET', path: '/garbage' }), ExchangeError);
    assert.equal((await ex.send({ method: 'GET', path: '/a' })).body.toString(), '{}');
  } finally {
    ex.close();
  }
  const gone = createExchange(() => connect(join(tmpdir(), 'berth-no-such-engine.sock')));
  await assert.rejects(gone.send({ method: 'GET', path: '/_ping' }), /ENOENT/);
  gone.close();
  await assert.rejects(gone.send({ method: 'GET', path: '/_ping' }), /closed/);
});

/** Waits until `f()` holds (polling), or fails with `what` after `ms`. */
async function until(f: () => boolean, what: string, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) assert.fail(`timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

test('the pool keeps the connections of a burst up to maxIdle, and closes them once idle for idleMs', async () => {
  // In a burst, the engine answers only once all six requests are in flight, so that each has a
  // connection of its own; otherwise at once.
  let gate = 6;
  const hold: (() => void)[] = [];
  await using engine = await peer((_head, s) => {
    hold.push(() => s.write(ok('{}')));
    if (hold.length >= gate) for (const h of hold.splice(0)) h();
  });
  const ex = createExchange(() => connect(engine.path), { maxIdle: 4, idleMs: 1_000 });
  try {
    const burst = () => Promise.all(Array.from({ length: 6 }, () => ex.send({ method: 'GET', path: '/a' })));
    await burst();
    assert.equal(engine.connections(), 6);
    await until(() => engine.open() === 4, 'the two connections over maxIdle closed');
    // Reused while they are fresh: a second burst opens only the two the pool let go.
    await burst();
    assert.equal(engine.connections(), 8);
    await until(() => engine.open() === 0, 'idle connections closed after idleMs');
    // And the pool still works afterwards, on a new connection.
    gate = 1;
    assert.equal((await ex.send({ method: 'GET', path: '/a' })).status, 200);
    assert.equal(engine.connections(), 9);
  } finally {
    ex.close();
  }
});
