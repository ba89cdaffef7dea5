import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { volumes } from '../../src/engine/index.js';
import { berth, docker, engine, SESSION, uniqueName } from '../support/index.js';

const LABEL = ['--label', `io.berth.test-session=${SESSION}`];

test('berth dind up prints a working DOCKER_HOST; ls lists it; a busy cache fails with exit 75; down keeps the cache, purge removes it', async () => {
  const name = uniqueName('cli');
  const other = uniqueName('cli2');
  const key = uniqueName('clik');
  using c = engine();
  try {
    const up = await berth(['dind', 'up', '--name', name, '--cache', key, '--network', 'none', ...LABEL]);
    assert.equal(up.code, 0, up.stderr);
    const host = up.stdout.trim();
    assert.match(host, /^unix:\/\/.*\/docker\.sock$/);
    const info = await docker(host, ['info', '--format', '{{.Driver}}']);
    assert.equal(info.code, 0, info.stderr);
    const ls = await berth(['dind', 'ls', '--json']);
    const list = JSON.parse(ls.stdout) as { name: string; cache?: string; state: string }[];
    assert.deepEqual(
      list.filter((d) => d.name === name).map((d) => [d.cache, d.state]),
      [[key, 'running']],
    );
    const busy = await berth([
      'dind',
      'up',
      '--name',
      other,
      '--cache',
      key,
      '--cache-busy',
      'fail',
      '--network',
      'none',
      ...LABEL,
    ]);
    assert.equal(busy.code, 75, busy.stderr);
    assert.match(busy.stderr, /in use by the daemon/);
    const down = await berth(['dind', 'down', name]);
    assert.equal(down.code, 0, down.stderr);
    assert.equal(existsSync(host.replace('unix://', '')), false);
    assert.ok(await volumes(c).inspect(`berth-dind-cache-${key}`));
    const again = await berth(['dind', 'down', name]);
    assert.notEqual(again.code, 0);
    assert.match(again.stderr, /no dind daemon named/);
    const purge = await berth(['dind', 'purge', key]);
    assert.equal(purge.code, 0, purge.stderr);
    await assert.rejects(volumes(c).inspect(`berth-dind-cache-${key}`));
    const bad = await berth(['dind', 'up', '--name', 'x/y']);
    assert.equal(bad.code, 64);
    assert.match(bad.stderr, /not valid/);
  } finally {
    await berth(['dind', 'down', name]);
    await berth(['dind', 'down', other]);
    await volumes(c).remove(`berth-dind-cache-${key}`);
  }
});
