import { test } from 'node:test';
import assert from 'node:assert/strict';
import { containers, images, readLogs } from '../engine/index.js';
import { IMAGE_TOOLS, LABEL_IMAGE_KEY, ensureLocalImages } from './index.js';
import { engine, sessionLabels } from '../../test/support/index.js';

test('build-local reuses images whose inputs did not change, and labels them with the key', async () => {
  using c = engine();
  await ensureLocalImages(c, { only: ['busybox', 'tools'] });
  const again = await ensureLocalImages(c, { only: ['busybox', 'tools'] });
  assert.deepEqual(
    again.map((r) => [r.image, r.action]),
    [
      ['busybox', 'reused'],
      ['tools', 'reused'],
    ],
  );
  for (const r of again)
    assert.equal((await images(c).inspect(r.name)).Config?.Labels?.[LABEL_IMAGE_KEY], r.key);
});

test('the tools image runs the host docker CLI against the engine socket', async () => {
  using c = engine();
  const { Id } = await containers(c).create({
    Image: IMAGE_TOOLS,
    Cmd: ['docker', 'version', '--format', '{{.Server.APIVersion}}'],
    Labels: sessionLabels(),
    HostConfig: { Binds: ['/var/run/docker.sock:/var/run/docker.sock'], NetworkMode: 'none' },
  });
  try {
    const waiting = containers(c).wait(Id, 'next-exit');
    await containers(c).start(Id);
    assert.equal((await waiting).StatusCode, 0);
    const { stdout } = await readLogs(c, Id);
    assert.equal(stdout.trim(), (await c.ping()).apiVersion);
  } finally {
    await containers(c).remove(Id);
  }
});
