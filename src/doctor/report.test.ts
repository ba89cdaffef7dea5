import { test } from 'node:test';
import assert from 'node:assert/strict';
import { verdicts } from './report.js';
import type { DoctorReport } from './report.js';

const base: Omit<DoctorReport, 'modes'> = {
  engine: { reachable: true, endpoint: 'unix:///var/run/docker.sock', version: '20.10', apiVersion: '1.41' },
  runtimes: ['runc'],
  sysbox: false,
  iptables: 'nf_tables',
  dindImage: { name: 'berth-local/dind', present: true },
  privileges: {
    privileged: { ok: false, detail: 'refused', missingCapabilities: ['SYS_RESOURCE'] },
    fallback: { ok: true, detail: 'works', capAdd: ['ALL'], capDrop: ['SYS_RESOURCE'] },
    hostBounding: undefined,
  },
};

test('dind is available through the fallback when privileged is refused', () => {
  assert.deepEqual(verdicts(base).dind, {
    available: true,
    reason: 'nested daemons via explicit-capabilities fallback',
  });
});

test('sysbox is preferred; no image or no privileges makes dind unavailable with a reason', () => {
  assert.match(verdicts({ ...base, sysbox: true }).dind.reason, /sysbox-runc/);
  assert.match(
    verdicts({ ...base, dindImage: { name: 'berth-local/dind', present: false } }).dind.reason,
    /build-local dind/,
  );
  const noPriv = {
    ...base,
    privileges: {
      ...base.privileges!,
      fallback: { ...base.privileges!.fallback, ok: false, detail: 'seccomp' },
    },
  };
  const v = verdicts(noPriv).dind;
  assert.equal(v.available, false);
  assert.match(v.reason, /seccomp/);
});

test('without an engine nothing is available, and each mode says why', () => {
  const m = verdicts({ ...base, engine: { reachable: false, endpoint: 'unix:///x.sock' } });
  for (const v of Object.values(m)) {
    assert.equal(v.available, false);
    assert.match(v.reason, /no engine answers at unix:\/\/\/x\.sock/);
  }
});
