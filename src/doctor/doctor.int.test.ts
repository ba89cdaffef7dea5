import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { containers, EngineError } from '../engine/index.js';
import { capLine, decodeCapMask, isCapsFailure, missingCapabilities, runDoctor } from './index.js';
import { berth, engine, sessionLabels } from '../../test/support/index.js';

test('the doctor report matches what the engine really does with --privileged', async () => {
  using c = engine();
  const report = await runDoctor(c);
  assert.equal(report.engine.reachable, true);
  // Ask the engine directly, independently of the doctor's own probe.
  const { Id } = await containers(c).create({
    Image: 'berth-local/busybox',
    Cmd: ['true'],
    Labels: sessionLabels(),
    HostConfig: { Privileged: true, NetworkMode: 'none' },
  });
  let privilegedWorks = true;
  let error = '';
  try {
    await containers(c).start(Id);
  } catch (err) {
    privilegedWorks = false;
    error = err instanceof EngineError ? (err.daemonMessage ?? '') : String(err);
  } finally {
    await containers(c).remove(Id);
  }
  assert.equal(report.privileges?.privileged.ok, privilegedWorks);
  if (!privilegedWorks && isCapsFailure(error)) {
    const hex = capLine(readFileSync('/proc/1/status', 'utf8'), 'CapBnd') ?? '';
    const missing = missingCapabilities(decodeCapMask(hex));
    assert.deepEqual(report.privileges?.privileged.missingCapabilities, missing);
    for (const cap of missing)
      assert.match(report.privileges?.privileged.detail ?? '', new RegExp(`CAP_${cap}`));
  }
  // Where privileged is refused, the fallback is what makes dind available.
  if (!privilegedWorks)
    assert.equal(report.modes.dind.available, report.privileges?.fallback.ok && report.dindImage.present);
  assert.equal(report.modes.guard.available, true);
  assert.equal(report.modes.host.available, true);
});

test('berth doctor --json prints the report; the table names every check', async () => {
  const json = await berth(['doctor', '--json']);
  assert.equal(json.code, 0, json.stderr);
  const parsed = JSON.parse(json.stdout) as {
    engine: { apiVersion: string };
    storageDriver: string;
    modes: Record<string, unknown>;
  };
  assert.match(parsed.engine.apiVersion, /^1\.\d+$/);
  assert.ok(parsed.storageDriver.length > 0);
  assert.deepEqual(Object.keys(parsed.modes).sort(), ['dind', 'guard', 'host']);
  const text = await berth(['doctor'], { env: { NO_COLOR: '1' } });
  assert.equal(text.code, 0, text.stderr);
  for (const row of [
    'engine',
    'storage driver',
    'cgroups',
    '--privileged',
    'capabilities fallback',
    'runtimes',
    'iptables',
    'mode guard',
    'mode dind',
    'mode host',
  ]) {
    assert.match(text.stdout, new RegExp(`^${row.replace(/[-]/g, '\\-')}\\s`, 'm'), row);
  }
});

test('doctor against an unreachable engine says so and exits non-zero', async () => {
  const r = await berth(['doctor'], {
    env: { DOCKER_HOST: 'unix:///nonexistent/docker.sock', NO_COLOR: '1' },
  });
  assert.equal(r.code, 69);
  assert.match(r.stdout, /engine\s+no\s+unix:\/\/\/nonexistent\/docker\.sock/);
  assert.match(r.stdout, /mode guard\s+unavailable\s+no engine answers/);
});
