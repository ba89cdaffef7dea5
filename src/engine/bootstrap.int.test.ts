import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { dockerdArgs, engineDown, engineStatus, engineUp } from './index.js';
import type { EngineLayout } from './index.js';
import { tempDir } from '../../test/support/index.js';

/** A private engine layout under `dir`. */
function layoutIn(dir: string): EngineLayout {
  return {
    stateDir: join(dir, 'state'),
    runDir: join(dir, 'run'),
    socket: join(dir, 'run', 'docker.sock'),
    dockerd: '/usr/sbin/dockerd',
  };
}

test('dockerd gets its own data root, exec root, pid file and socket', () => {
  const l: EngineLayout = { stateDir: '/s', runDir: '/r', socket: '/r/d.sock', dockerd: '/usr/sbin/dockerd' };
  assert.deepEqual(dockerdArgs(l, ['--iptables=false']), [
    '--data-root',
    '/s/data',
    '--exec-root',
    '/r/exec',
    '--pidfile',
    '/r/dockerd.pid',
    '-H',
    'unix:///r/d.sock',
    '--iptables=false',
  ]);
});

test('engine up uses an engine that already answers and starts nothing', async () => {
  const r = await engineUp({ env: { ...process.env, DOCKER_HOST: '' } });
  assert.equal(r.action, 'existing');
  const down = await engineDown({
    layout: {
      stateDir: '/nonexistent',
      runDir: '/nonexistent/run',
      socket: '/x',
      dockerd: '/usr/sbin/dockerd',
    },
  });
  assert.equal(down.action, 'not-started-by-berth');
});

test('engine down stops only a dockerd: a record whose pid now names another process is dropped, the process left alone', async () => {
  using dir = tempDir('berth-engine-rec-');
  const layout = layoutIn(dir.path);
  const other = spawn('sleep', ['60'], { stdio: 'ignore' });
  try {
    mkdirSync(layout.runDir, { recursive: true });
    writeFileSync(join(layout.runDir, 'engine.json'), JSON.stringify({ pid: other.pid }));
    const down = await engineDown({ layout, timeoutMs: 1000 });
    assert.equal(down.action, 'not-started-by-berth');
    assert.equal(other.exitCode, null);
    assert.equal(other.signalCode, null, 'the process the record named was not signalled');
  } finally {
    other.kill('SIGKILL');
  }
});

test(
  'engine up starts a private dockerd when none answers; idempotent; down stops only what it started',
  { skip: !existsSync('/usr/sbin/dockerd') && 'dockerd is not installed' },
  async () => {
    using dir = tempDir('berth-engine-');
    const layout = layoutIn(dir.path);
    const env = { ...process.env, DOCKER_HOST: `unix://${layout.socket}` };
    // A private daemon beside the shared one, in its own network namespace (with --bridge none,
    // dockerd deletes docker0 in its namespace: never the host's), without iptables.
    const flags = ['--bridge', 'none', '--iptables=false', '--ip-masq=false'];
    const launcher = ['unshare', '--net', '--'];
    try {
      const first = await engineUp({ layout, env, dockerdFlags: flags, launcher });
      assert.equal(first.action, 'started');
      assert.ok(first.action === 'started' && existsSync(first.logFile));
      assert.equal(statSync(first.logFile).mode & 0o777, 0o600, "the daemon's log is root's to read");
      const again = await engineUp({ layout, env, dockerdFlags: flags, launcher });
      assert.equal(again.action, 'existing', 'a second up reuses the running daemon');
      const status = await engineStatus({ layout, env });
      assert.equal(status.reachable, true);
      assert.equal(status.startedByBerth?.running, true);
    } finally {
      const down = await engineDown({ layout });
      assert.equal(down.action, 'stopped');
    }
    const after = await engineStatus({ layout, env });
    assert.equal(after.reachable, false);
    assert.equal(after.startedByBerth, undefined);
  },
);
