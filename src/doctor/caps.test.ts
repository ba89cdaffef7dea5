import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CAPABILITIES, capLine, decodeCapMask, isCapsFailure, missingCapabilities } from './caps.js';

test('the bounding set of this kind of host decodes without SYS_RESOURCE', () => {
  const caps = decodeCapMask('000001fffeffffff');
  assert.equal(caps.includes('SYS_RESOURCE'), false);
  assert.equal(caps.includes('SYS_ADMIN'), true);
  assert.deepEqual(missingCapabilities(caps), ['SYS_RESOURCE']);
});

test('a full mask has every capability; the default docker set is small', () => {
  assert.deepEqual(decodeCapMask('000001ffffffffff'), [...CAPABILITIES]);
  const docker = decodeCapMask('00000000a80425fb');
  assert.deepEqual(docker, [
    'CHOWN',
    'DAC_OVERRIDE',
    'FOWNER',
    'FSETID',
    'KILL',
    'SETGID',
    'SETUID',
    'SETPCAP',
    'NET_BIND_SERVICE',
    'NET_RAW',
    'SYS_CHROOT',
    'MKNOD',
    'AUDIT_WRITE',
    'SETFCAP',
  ]);
});

test('status lines and the runc failure are recognised', () => {
  assert.equal(capLine('Name:\tx\nCapBnd:\t000001fffeffffff\nCapAmb:\t0\n', 'CapBnd'), '000001fffeffffff');
  assert.equal(capLine('Name:\tx\n', 'CapBnd'), undefined);
  assert.ok(
    isCapsFailure(
      'OCI runtime create failed: runc create failed: unable to start container process: unable to apply caps: operation not permitted: unknown',
    ),
  );
  assert.equal(isCapsFailure('No such image: x'), false);
});
