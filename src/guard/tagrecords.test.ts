import { describe, mock, test } from 'node:test';
import assert from 'node:assert/strict';
import { LABEL_ROLE, LABEL_TENANT } from '../common/index.js';
import { checkReservedName, checkVolumeCreate, defaultPolicy } from './policy.js';
import {
  ANY_IMAGE,
  RECORD_PREFIX,
  byIdOrDigest,
  foreignRecord,
  RECORD_GRACE_MS,
  TagRecords,
  parseRecords,
  recordBody,
  recordFilter,
  tagKey,
} from './tagrecords.js';
import type { TagRecord } from './tagrecords.js';

/** An engine of volumes only (create, inspect, list, delete), and the methods it was asked for. */
function volumeEngine() {
  const vols = new Map<string, Record<string, string>>();
  const calls: string[] = [];
  const upstream = (method: string, path: string, body?: unknown) => {
    calls.push(method);
    if (method === 'POST') {
      const b = body as { Name: string; Labels: Record<string, string> };
      vols.set(b.Name, b.Labels);
      return Promise.resolve({ status: 201, json: { Name: b.Name, Labels: b.Labels } });
    }
    const name = decodeURIComponent(path.split('/').pop() ?? '');
    if (method === 'DELETE') return Promise.resolve({ status: vols.delete(name) ? 204 : 404, json: {} });
    if (!path.startsWith('/volumes?')) {
      const labels = vols.get(name);
      return Promise.resolve(
        labels ? { status: 200, json: { Name: name, Labels: labels } } : { status: 404, json: {} },
      );
    }
    const all = [...vols].map(([Name, Labels]) => ({ Name, Labels }));
    return Promise.resolve({ status: 200, json: { Volumes: all } });
  };
  return { vols, calls, upstream };
}

const IMG = `sha256:${'a'.repeat(64)}`;
const OTHER = `sha256:${'b'.repeat(64)}`;

describe('tag records', () => {
  test('a record is a volume of berth-tag-<key>-<nonce>, without the tenant label, with the guard labels', () => {
    const b = recordBody('node:20', 'job-a', IMG, { [LABEL_TENANT]: 'job-a', 'io.berth.run': 'r1' });
    assert.match(b.Name, new RegExp(`^${RECORD_PREFIX}${tagKey('node:20')}-[0-9a-f]{12}$`));
    assert.equal(b.Labels[LABEL_TENANT], undefined);
    assert.equal(b.Labels['io.berth.run'], 'r1');
    assert.equal(b.Labels[LABEL_ROLE], 'tag-record');
    // Two records of one tag never share a name (a later write does not answer with an earlier one).
    assert.notEqual(recordBody('node:20', 'job-a', IMG, {}).Name, b.Name);
  });

  test('the key is the same for every spelling of one tag, and differs between tags', () => {
    assert.equal(tagKey('node:20'), tagKey('docker.io/library/node:20'));
    assert.equal(tagKey('node'), tagKey('node:latest'));
    assert.notEqual(tagKey('node:20'), tagKey('node:21'));
    assert.match(recordFilter('node:20'), new RegExp(tagKey('node:20')));
  });

  test('only volumes a guard made read as records', () => {
    const good = recordBody('node:20', 'job-a', IMG, {});
    const forged = recordBody('node:20', 'job-b', IMG, {});
    const answer = {
      Volumes: [
        good,
        // A tenant's volume always carries the tenant label: never a record.
        { ...forged, Labels: { ...forged.Labels, [LABEL_TENANT]: 'job-b' } },
        // Not a record's name, or not a record's role.
        { ...forged, Name: 'mine' },
        { ...forged, Labels: { ...forged.Labels, [LABEL_ROLE]: 'guard-network' } },
        { Name: `${RECORD_PREFIX}x`, Labels: null },
      ],
    };
    const got = parseRecords(answer);
    assert.deepEqual(got, [{ volume: good.Name, tag: 'node:20', tenant: 'job-a', image: IMG }]);
    assert.deepEqual(parseRecords({ Volumes: null }), []);
    assert.deepEqual(parseRecords(null), []);
  });

  test('a name is foreign while another tenant recorded it on the image it names now', () => {
    const records: TagRecord[] = [
      { volume: 'v1', tag: 'node:20', tenant: 'job-a', image: IMG },
      { volume: 'v2', tag: 'app:1', tenant: 'job-a', image: ANY_IMAGE },
    ];
    assert.equal(foreignRecord(records, 'node:20', IMG, 'job-b')?.volume, 'v1');
    assert.equal(foreignRecord(records, 'docker.io/library/node:20', IMG, 'job-b')?.volume, 'v1');
    // Its own tag, another image under the name since (a pull, the host), or another tag: not foreign.
    assert.equal(foreignRecord(records, 'node:20', IMG, 'job-a'), undefined);
    assert.equal(foreignRecord(records, 'node:20', OTHER, 'job-b'), undefined);
    assert.equal(foreignRecord(records, 'node:21', IMG, 'job-b'), undefined);
    // A write whose image is not known yet (a load under way) covers any image.
    assert.equal(foreignRecord(records, 'app:1', OTHER, 'job-b')?.volume, 'v2');
  });

  test('IDs and digests name content and are not looked up as tags', () => {
    assert.equal(byIdOrDigest(IMG), true);
    assert.equal(byIdOrDigest('a'.repeat(64)), true);
    assert.equal(byIdOrDigest(`node@${IMG}`), true);
    assert.equal(byIdOrDigest('node:20'), false);
    assert.equal(byIdOrDigest('abc123'), false);
  });

  test('tenants cannot name a volume like a record', () => {
    assert.throws(() => checkReservedName('volume', 'berth-tag-x'), /reserved for berth/);
    assert.throws(() => checkReservedName('volume', 'BERTH-TAG-x'), /reserved for berth/);
    assert.throws(
      () => checkVolumeCreate({ Name: `${RECORD_PREFIX}abc` }, { [LABEL_TENANT]: 't' }, defaultPolicy()),
      /reserved for berth/,
    );
    assert.doesNotThrow(() => checkReservedName('volume', 'berth-tagged'));
  });

  test('a replaced record stays RECORD_GRACE_MS after it was replaced; the cleanup keeps those of names still set', async () => {
    const { upstream, vols } = volumeEngine();
    mock.timers.enable({ apis: ['Date'], now: 1_000_000 });
    try {
      const mine = new TagRecords('job-a', {}, upstream);
      const first = await mine.before('app:1', IMG);
      await first.keep();
      mock.timers.tick(10 * RECORD_GRACE_MS); // the first record is old, but not yet replaced
      await (await mine.before('app:1', OTHER)).keep();
      const other = new TagRecords('job-b', {}, upstream);
      assert.ok(
        await other.foreign('app:1', IMG),
        'the replaced record still covers a reader of the old image',
      );
      mock.timers.tick(RECORD_GRACE_MS + 1);
      assert.ok(await other.foreign('app:1', IMG), 'nothing removes it before the next write');
      await (await mine.before('app:1', OTHER)).keep();
      assert.equal(await other.foreign('app:1', IMG), undefined, 'gone a grace after it was replaced');
      assert.ok(await other.foreign('app:1', OTHER));
      // A failed write's record goes at once.
      const failed = await mine.before('app:2', IMG);
      await failed.drop();
      assert.equal(await other.foreign('app:2', IMG), undefined);
      // Cleanup: the records of a name that still names the recorded image stay; others go.
      await (await mine.before('gone:1', IMG)).keep();
      await mine.dropAll((tag) => Promise.resolve(tag === 'app:1' ? OTHER : undefined));
      assert.ok(await other.foreign('app:1', OTHER));
      assert.equal(await other.foreign('gone:1', IMG), undefined);
      // (Both writes of app:1 named OTHER: both records name what the tag names.)
      assert.deepEqual(
        [...new Set([...vols.values()].map((l) => `${l['io.berth.tag.name']} ${l['io.berth.tag.image']}`))],
        [`app:1 ${OTHER}`],
        'only the records of the name still set are left',
      );
    } finally {
      mock.timers.reset();
    }
  });

  test('a write of the image a live record of this guard already names keeps that record (none written, none dropped)', async () => {
    const { upstream, vols, calls } = volumeEngine();
    const mine = new TagRecords('job-a', {}, upstream);
    const other = new TagRecords('job-b', {}, upstream);
    await (await mine.before('app:1', IMG)).keep();
    assert.equal(vols.size, 1);
    // The same image again (a cached rebuild): one look, no write; a failed tag keeps the record.
    calls.length = 0;
    const again = await mine.before('app:1', IMG);
    assert.deepEqual(calls, ['GET']);
    await again.drop();
    assert.equal(vols.size, 1, 'the record that was there stays');
    assert.ok(await other.foreign('app:1', IMG));
    // Another image: a record of its own; back to the first image after that: a new record (the
    // first one was replaced, and goes after its grace).
    await (await mine.before('app:1', OTHER)).keep();
    await (await mine.before('app:1', IMG)).keep();
    assert.equal(vols.size, 3);
    // A record the engine lost (its volumes pruned) is written again.
    vols.clear();
    await (await mine.before('app:1', IMG)).keep();
    assert.equal(vols.size, 1);
    assert.ok(await other.foreign('app:1', IMG));
    // Pending records (any image) are never reused.
    calls.length = 0;
    await mine.before('app:2', ANY_IMAGE);
    await mine.before('app:2', ANY_IMAGE);
    assert.deepEqual(calls, ['POST', 'POST']);
  });

  test('red-team pass 18: a record still under way is not reused, so its failed write cannot drop it from under another', async () => {
    const { upstream, vols } = volumeEngine();
    const mine = new TagRecords('job-a', {}, upstream);
    const other = new TagRecords('job-b', {}, upstream);
    const first = await mine.before('app:1', IMG); // its tag write not answered yet
    const second = await mine.before('app:1', IMG); // a concurrent write of the same tag and image
    await second.keep(); // the second write set the tag
    await first.drop(); // the first one failed
    assert.ok(await other.foreign('app:1', IMG), 'the tag that was set keeps a record');
    assert.equal(vols.size, 1);
  });
  test('a record removed from under its guard (the host pruned volumes) is written again, same name and fields; its own removals are not', async () => {
    const { upstream, vols, calls } = volumeEngine();
    const mine = new TagRecords('job-a', { 'io.berth.run': 'r1' }, upstream);
    const other = new TagRecords('job-b', {}, upstream);
    await (await mine.before('app:1', IMG)).keep();
    const [name] = [...vols.keys()];
    assert.ok(name);
    const labels = vols.get(name);
    vols.clear(); // the host's prune
    assert.equal(await other.foreign('app:1', IMG), undefined, 'the loss: the tag reads as free');
    assert.equal(await mine.restore(name), true);
    assert.deepEqual(vols.get(name), labels);
    assert.ok(await other.foreign('app:1', IMG));
    // After a prune (whose event names no volume), every record the engine lost.
    vols.clear();
    assert.equal(await mine.restoreLost(), 1);
    assert.deepEqual(vols.get(name), labels);
    assert.equal(await mine.restoreLost(), 0, 'none lost now');
    // Prunes while a check runs: one check more, not one each.
    vols.clear();
    calls.length = 0;
    const checks = [mine.restoreLost(), mine.restoreLost(), mine.restoreLost()];
    assert.deepEqual(await Promise.all(checks), [1, 1, 1]);
    assert.deepEqual(calls, ['GET', 'POST', 'GET'], 'two looks, one write');
    // Not this guard's: nothing written.
    assert.equal(await mine.restore(`${RECORD_PREFIX}${tagKey('x:1')}-000000000000`), false);
    assert.equal(vols.size, 1);
    // A record this guard removed (its tag moved, the grace passed, or the tenant's cleanup) is
    // not one to restore, even when its removal's event comes while the removal is under way.
    let open = (): void => undefined;
    const gate = new Promise<void>((r) => (open = r));
    const slow = (method: string, path: string, body?: unknown) =>
      method === 'DELETE' ? gate.then(() => upstream(method, path, body)) : upstream(method, path, body);
    const mine2 = new TagRecords('job-c', {}, slow);
    await (await mine2.before('app:2', IMG)).keep();
    const [, name2] = [...vols.keys()];
    assert.ok(name2);
    const dropping = mine2.dropAll(() => Promise.resolve(undefined));
    await new Promise((r) => setImmediate(r)); // the removal sent, not answered
    assert.equal(await mine2.restore(name2), false, 'under removal');
    open();
    assert.equal(await dropping, 1);
    assert.equal(await mine2.restore(name2), false, 'removed');
    assert.equal(vols.has(name2), false);
  });
});
