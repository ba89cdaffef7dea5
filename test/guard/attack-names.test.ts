/**
 * Attack: keeping another tenant off its own network by taking the name first. A guard's tenant
 * network is `berth-<slug>-<hash>`; names of that shape are refused to every tenant, and tenants
 * whose slugs coincide get different networks.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { networks } from '../../src/engine/index.js';
import { createGuard, tenantNetworkName } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { docker, engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { expectRefused, postJson } from '../support/rawhttp.js';

describe('attack: squatting a tenant network name', () => {
  const c = engine();
  const dir = tempDir('berth-names-');
  const victim = `${uniqueName('v')}/a-b`;
  const twin = victim.replace('/a-b', '/a/b');
  let attacker: GuardHandle;
  let v: GuardHandle;
  let w: GuardHandle;

  before(async () => {
    attacker = await createGuard({
      tenant: uniqueName('squat'),
      listen: join(dir.path, 'a.sock'),
      labels: sessionLabels(),
    });
    v = await createGuard({ tenant: victim, listen: join(dir.path, 'v.sock'), labels: sessionLabels() });
    w = await createGuard({ tenant: twin, listen: join(dir.path, 'w.sock'), labels: sessionLabels() });
  });

  after(async () => {
    for (const g of [attacker, v, w]) await g.close({ cleanup: true }).catch(() => undefined);
    c.close();
    dir[Symbol.dispose]();
  });

  test('the victim’s network name is refused to the attacker (raw API); the victim and its slug twin still run', async () => {
    const name = tenantNetworkName(victim);
    const r = await postJson(
      join(dir.path, 'a.sock'),
      '/v1.41/networks/create',
      JSON.stringify({ Name: name }),
    );
    expectRefused(r, 'ownership', 'squat');
    assert.equal((await networks(c).list({ name: [name] })).length, 0, 'nothing made');
    for (const g of [v, w]) {
      const run = await docker(g.address, ['run', '--rm', 'berth-local/busybox', 'true']);
      assert.equal(run.code, 0, run.stderr);
    }
    assert.notEqual(tenantNetworkName(victim), tenantNetworkName(twin));
  });
});
