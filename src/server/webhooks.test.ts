import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { detectForge, isPushEvent, parsePush, verifySignature } from './webhooks.js';
import { BerthError } from '../common/index.js';

const secret = 's3cret';
const sha = 'a'.repeat(40);
const body = Buffer.from(
  JSON.stringify({
    ref: 'refs/heads/main',
    after: sha,
    repository: { clone_url: '/srv/git/app.git', full_name: 'team/app' },
    head_commit: { message: 'Fix the thing\n\nlong body' },
    pusher: { name: 'dev' },
  }),
);
const hmac = (b: Buffer, s = secret) => createHmac('sha256', s).update(b).digest('hex');

test('forges are told apart by their event headers', () => {
  assert.equal(detectForge({ 'x-github-event': 'push' }), 'github');
  assert.equal(detectForge({ 'x-gitea-event': 'push', 'x-github-event': 'push' }), 'gitea');
  assert.equal(detectForge({ 'x-gitlab-event': 'Push Hook' }), 'gitlab');
  assert.equal(detectForge({}), undefined);
  assert.equal(isPushEvent('github', { 'x-github-event': 'ping' }), false);
  assert.equal(isPushEvent('gitlab', { 'x-gitlab-event': 'Push Hook' }), true);
});

test('GitHub: HMAC-SHA256 over the exact bytes, sha256= prefix required', () => {
  assert.deepEqual(
    verifySignature('github', { 'x-hub-signature-256': `sha256=${hmac(body)}` }, body, secret),
    { ok: true },
  );
  const tampered = Buffer.concat([body, Buffer.from(' ')]);
  assert.equal(
    verifySignature('github', { 'x-hub-signature-256': `sha256=${hmac(body)}` }, tampered, secret).ok,
    false,
  );
  assert.equal(verifySignature('github', { 'x-hub-signature-256': hmac(body) }, body, secret).ok, false);
  assert.equal(
    verifySignature('github', { 'x-hub-signature-256': `sha256=${hmac(body, 'other')}` }, body, secret).ok,
    false,
  );
  const missing = verifySignature('github', {}, body, secret);
  assert.ok(!missing.ok && /missing X-Hub-Signature-256/.test(missing.reason));
});

test('Gitea: bare hex HMAC; GitLab: the shared token', () => {
  assert.equal(verifySignature('gitea', { 'x-gitea-signature': hmac(body) }, body, secret).ok, true);
  assert.equal(
    verifySignature('gitea', { 'x-gitea-signature': hmac(body).slice(1) }, body, secret).ok,
    false,
  );
  assert.equal(verifySignature('gitlab', { 'x-gitlab-token': secret }, body, secret).ok, true);
  assert.equal(verifySignature('gitlab', { 'x-gitlab-token': 's3cre' }, body, secret).ok, false);
});

test('an empty project secret never verifies', () => {
  assert.equal(verifySignature('gitlab', { 'x-gitlab-token': '' }, body, '').ok, false);
});

test('push payloads: ref, branch, sha, repo and first message line', () => {
  assert.deepEqual(parsePush('github', body), {
    forge: 'github',
    repoUrl: '/srv/git/app.git',
    repoName: 'team/app',
    ref: 'refs/heads/main',
    branch: 'main',
    sha,
    deleted: false,
    message: 'Fix the thing',
    pusher: 'dev',
  });
  const gitlab = parsePush(
    'gitlab',
    Buffer.from(
      JSON.stringify({
        ref: 'refs/tags/v1',
        after: '0'.repeat(40),
        project: { git_http_url: 'http://gl/app.git', path_with_namespace: 'g/app' },
        user_username: 'u',
        commits: [],
      }),
    ),
  );
  assert.equal(gitlab.branch, undefined);
  assert.equal(gitlab.deleted, true);
  assert.equal(gitlab.repoName, 'g/app');
});

test('malformed payloads are clear errors', () => {
  const bad = (text: string, re: RegExp) =>
    assert.throws(
      () => parsePush('github', Buffer.from(text)),
      (e: unknown) => e instanceof BerthError && re.test(e.message),
    );
  bad('{not json', /not valid JSON/);
  bad('{"after":"' + sha + '"}', /no "ref"/);
  bad('{"ref":"refs/heads/x","after":"xyz"}', /no valid "after"/);
  bad('[]', /no "ref"/);
  bad(JSON.stringify({ ref: `refs/heads/${'b'.repeat(250)}`, after: sha }), /longer than 255 characters/);
});

test('texts kept for display are bounded: a push cannot fill the store with its message', () => {
  const long = 'x'.repeat(100_000);
  const p = parsePush(
    'github',
    Buffer.from(
      JSON.stringify({
        ref: 'refs/heads/main',
        after: sha,
        repository: { clone_url: long, full_name: long },
        head_commit: { message: long },
        pusher: { name: long },
      }),
    ),
  );
  for (const v of [p.message, p.repoUrl, p.repoName, p.pusher]) {
    assert.equal(v?.length, 1000);
    assert.ok(v.endsWith('…'));
  }
});
