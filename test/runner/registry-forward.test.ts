/**
 * dind mode's registry forwarder (a loopback registry made reachable from the nested daemon, on the
 * job network's gateway) answers the job's network only. The gateway is an address of this host,
 * so every container on every network reaches it: red-team pass 26 read a host-only service
 * through it from a guard tenant's container.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import { LABEL_TEST_SESSION } from '../../src/common/index.js';
import { networks } from '../../src/engine/index.js';
import { SESSION, docker, engine, sessionLabels, uniqueName } from '../support/index.js';
import { jobStatus, logLines, removeRun, runJson, workspace } from './helpers.js';

const RAW = 'unix:///var/run/docker.sock';

test('dind: the registry forwarder serves the job’s network, and refuses a container of another network', async () => {
  const secret = `loopback-only-${SESSION}`;
  const open = new Set<Socket>();
  const service = createServer((s) => {
    open.add(s);
    s.on('close', () => open.delete(s));
    s.end(`HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n${secret}\n`);
  });
  await new Promise<void>((r) => service.listen(0, '127.0.0.1', r));
  const port = (service.address() as AddressInfo).port;
  using ws = workspace(`
name: forward
image: berth-local/busybox
jobs:
  j:
    docker: dind
    steps:
      - wget -q -O- "http://$BERTH_REGISTRY/"
      - echo "$BERTH_REGISTRY" > /workspace/addr
      - i=0; while ! test -f /workspace/go && test $i -lt 600; do sleep 0.2; i=$((i+1)); done
`);
  using c = engine();
  const other = uniqueName('fwd-other');
  await networks(c).create({ Name: other, Labels: sessionLabels() });
  const run = runJson(ws.file, ['--registry', `127.0.0.1:${port}`]);
  let runId = '';
  try {
    const addrFile = join(ws.path, 'addr');
    for (let i = 0; i < 600 && !existsSync(addrFile); i++) await new Promise((r) => setTimeout(r, 200));
    const addr = readFileSync(addrFile, 'utf8').trim();
    assert.match(addr, /^[0-9.]+:\d+$/);
    // A container on another network, at the forwarder's address: the connection is cut.
    const probe = await docker(RAW, [
      'run',
      '--rm',
      '--network',
      other,
      '--label',
      `${LABEL_TEST_SESSION}=${SESSION}`,
      'berth-local/busybox',
      'sh',
      '-c',
      `timeout 20 wget -q -O- http://${addr}/ || echo no-answer`,
    ]);
    assert.equal(probe.code, 0, probe.stderr);
    assert.ok(!probe.stdout.includes(secret), probe.stdout);
    assert.match(probe.stdout, /no-answer/);
    writeFileSync(join(ws.path, 'go'), '');
    const r = await run;
    runId = r.runId;
    assert.equal(r.code, 0, r.stdout.slice(-3000) + r.stderr);
    assert.equal(jobStatus(r.events, 'j'), 'passed');
    // The job itself (on its network) got the service's answer.
    assert.ok(logLines(r.events, 'j').includes(secret), logLines(r.events, 'j').join('\n'));
  } finally {
    writeFileSync(join(ws.path, 'go'), '');
    runId ||= (await run.catch(() => ({ runId: '' }))).runId;
    await removeRun(runId);
    await networks(c).remove(other);
    for (const s of open) s.destroy();
    service.close();
  }
});
