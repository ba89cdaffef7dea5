import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { LABEL_ROLE, LABEL_TENANT } from '../common/index.js';
import { checkReservedName, checkVolumeCreate, defaultPolicy } from './policy.js';
import {
  ANY_IMAGE,
  RECORD_PREFIX,
  byIdOrDigest,
  foreignRecord,
  parseRecords,
  recordBody,
  recordFilter,
  tagKey,
} from './tagrecords.js';
import type { TagRecord } from './tagrecords.js';

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
});
