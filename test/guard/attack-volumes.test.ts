/**
 * Attack: volumes the tenant's containers make without naming them. An anonymous volume carries no
 * label, so it must go with its container even when the client does not ask (`docker rm` without
 * `-v`), or nothing could ever remove it; and the labels a mount asks dockerd to put on such a
 * volume cannot name another tenant as its owner.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { LABEL_TENANT } from '../../src/common/index.js';
import { containers, volumes } from '../../src/engine/index.js';
import { createGuard } from '../../src/guard/index.js';
import type { GuardHandle } from '../../src/guard/index.js';
import { engine, sessionLabels, tempDir, uniqueName } from '../support/index.js';
import { postJson, send } from '../support/rawhttp.js';

const IMAGE = 'berth-local/busybox';

describe('attack: anonymous volumes outliving the job, or naming another owner', () => {
  const c = engine();
  const dir = tempDir('berth-anonvol-');
  const sock = join(dir.path, 'g.sock');
  let guard: GuardHandle;

  before(async () => {
    guard = await createGuard({ tenant: uniqueName('anon'), listen: sock, labels: sessionLabels() });
  });

  after(async () => {
    await guard.close({ cleanup: true }).catch(() => undefined);
    c.close();
    dir[Symbol.dispose]();
  });

  const volumeExists = (name: string): Promise<boolean> =>
    volumes(c)
      .inspect(name)
      .then(
        () => true,
        () => false,
      );

  const anonymousVolume = async (body: string): Promise<{ id: string; volume: string }> => {
    const r = await postJson(sock, '/v1.41/containers/create', body);
    assert.equal(r.status, 201, r.text);
    const id = (JSON.parse(r.text) as { Id: string }).Id;
    const volume = (await containers(c).inspect(id)).Mounts?.find((m) => m.Type === 'volume')?.Name ?? '';
    assert.ok(volume, 'the container has an anonymous volume');
    return { id, volume };
  };

  test('removing the container without v=1 (raw API) or through prune removes its anonymous volume', async () => {
    const a = await anonymousVolume(`{"Image":"${IMAGE}","Cmd":["true"],"Volumes":{"/data":{}}}`);
    const del = await send(sock, { method: 'DELETE', path: `/v1.41/containers/${a.id}` });
    assert.equal(del.status, 204, del.text);
    assert.equal(await volumeExists(a.volume), false, 'gone with its container');

    const b = await anonymousVolume(`{"Image":"${IMAGE}","Cmd":["true"],"Volumes":{"/data":{}}}`);
    const prune = await send(sock, { method: 'POST', path: '/v1.41/containers/prune' });
    assert.equal(prune.status, 200, prune.text);
    assert.ok(prune.text.includes(b.id), prune.text);
    assert.equal(await volumeExists(b.volume), false, 'gone with its pruned container');
  });

  test('a mount cannot label its volume as another tenant’s', async () => {
    const a = await anonymousVolume(
      `{"Image":"${IMAGE}","Cmd":["true"],"HostConfig":{"Mounts":[{"Type":"volume","Target":"/x","VolumeOptions":{"Labels":{"${LABEL_TENANT}":"env/production","keep":"me"}}}]}}`,
    );
    try {
      const labels = (await volumes(c).inspect(a.volume)).Labels ?? {};
      assert.notEqual(labels[LABEL_TENANT], 'env/production', JSON.stringify(labels));
      assert.equal(labels.keep, 'me', 'other labels stay');
    } finally {
      await send(sock, { method: 'DELETE', path: `/v1.41/containers/${a.id}` });
    }
    assert.equal(await volumeExists(a.volume), false);
  });
});
