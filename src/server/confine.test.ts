import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseRunSpec } from '../runner/index.js';
import { SERVER_JOB_TIMEOUT_MS, confine, projectCacheKey } from './service.js';

const spec = (jobs: string) => parseRunSpec(`image: berth-local/busybox\njobs:\n${jobs}`, '/ws/berth.yml');
const none = { env: [], docker: [] };

test("confine: modes beyond guard and none need the project's grant; the error names it", () => {
  for (const mode of ['host', 'dind'] as const) {
    const s = spec(`  j:\n    docker: { mode: ${mode} }\n    steps: [x]\n`);
    assert.throws(
      () => confine(s, { name: 'web', grants: none }),
      (e: Error & { hint?: string }) =>
        new RegExp(`jobs\\.j\\.docker: mode ${mode} is not granted to project web`).test(e.message) &&
        (e.hint ?? '').includes(`berth project grant web --allow-docker ${mode}`),
    );
    assert.equal(confine(s, { name: 'web', grants: { env: [], docker: [mode] } }).jobs[0]?.docker.mode, mode);
  }
  for (const mode of ['guard', 'none'])
    assert.doesNotThrow(() =>
      confine(spec(`  j:\n    docker: ${mode}\n    steps: [x]\n`), { name: 'web', grants: none }),
    );
});

test("confine: persistent tenants become the project's own; jobs without a timeout get the server's", () => {
  const s = confine(
    spec(
      '  deploy:\n    docker: { mode: guard, tenant: env/production, keep: true }\n    steps: [x]\n' +
        '  test:\n    timeout: 5m\n    steps: [x]\n',
    ),
    { name: 'web', grants: none },
  );
  const [deploy, t] = s.jobs;
  assert.equal(deploy?.docker.tenant, 'project/web/env/production');
  assert.equal(deploy?.timeoutMs, SERVER_JOB_TIMEOUT_MS);
  assert.equal(t?.docker.tenant, undefined, 'a job tenant stays per run');
  assert.equal(t?.timeoutMs, 5 * 60_000);
  const d = confine(spec('  j:\n    docker: { mode: dind, cache: layers }\n    steps: [x]\n'), {
    name: 'web',
    grants: { env: [], docker: ['dind'] },
  });
  assert.equal(
    d.jobs[0]?.docker.cache,
    projectCacheKey('web', 'layers'),
    "a dind cache is the project's own",
  );
  assert.match(projectCacheKey('web', 'layers'), /^project-[0-9a-f]{16}-web-layers$/);
});

test("projects' cache keys never meet, whatever '-' their names hold (red-team pass 26)", () => {
  // Joined with '-' alone, these pairs shared one cache.
  assert.notEqual(projectCacheKey('a', 'b-x'), projectCacheKey('a-b', 'x'));
  assert.notEqual(projectCacheKey('web', 'api-build'), projectCacheKey('web-api', 'build'));
  const seen = new Map<string, string>();
  const parts = ['a', 'b', 'a-b', 'b-a', 'a-b-a', 'x.y', 'x', 'y', '-', 'a.b'];
  for (const p of parts)
    for (const c of parts) {
      const key = projectCacheKey(p, c);
      assert.equal(seen.get(key), undefined, `${p} + ${c} meets ${seen.get(key)}`);
      seen.set(key, `${p} + ${c}`);
    }
  // Long names still give a valid dind cache key (at most 128 characters), and still apart.
  const long = 'p'.repeat(63);
  const k1 = projectCacheKey(long, 'c'.repeat(200));
  assert.ok(k1.length <= 128);
  assert.notEqual(k1, projectCacheKey(long, `${'c'.repeat(199)}d`));
});
