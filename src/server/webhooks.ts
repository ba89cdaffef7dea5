/**
 * Push webhooks from GitHub, Gitea and GitLab: signature/token verification and payload parsing.
 * Pure: takes headers and the raw body bytes, answers a verdict. Signatures are checked over the
 * exact bytes received, before any parsing, in constant time.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { BerthError } from '../common/index.js';

export type Forge = 'github' | 'gitea' | 'gitlab';

export interface PushEvent {
  forge: Forge;
  /** Repository clone URL as the forge reports it (clone_url / git_http_url). */
  repoUrl: string | undefined;
  /** Repository full name, e.g. `owner/app`. */
  repoName: string | undefined;
  /** Full ref, e.g. `refs/heads/main`. */
  ref: string;
  /** Branch name when the ref is a branch. */
  branch: string | undefined;
  /** The pushed commit (after). */
  sha: string;
  /** Whether the push deleted the ref (nothing to build). */
  deleted: boolean;
  /** Head commit message, first line. */
  message: string | undefined;
  pusher: string | undefined;
}

type Headers = Record<string, string | string[] | undefined>;

function header(headers: Headers, name: string): string | undefined {
  const v = headers[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

function safeEqual(a: string, b: string): boolean {
  const ab = Buffer.from(a);
  const bb = Buffer.from(b);
  // timingSafeEqual needs equal lengths; compare against itself to keep the time constant.
  if (ab.length !== bb.length) {
    timingSafeEqual(ab, ab);
    return false;
  }
  return timingSafeEqual(ab, bb);
}

function hmacHex(secret: string, body: Buffer): string {
  return createHmac('sha256', secret).update(body).digest('hex');
}

/** Which forge sent this request, from its event header; undefined if none. */
export function detectForge(headers: Headers): Forge | undefined {
  if (header(headers, 'x-gitea-event') !== undefined) return 'gitea';
  if (header(headers, 'x-gitlab-event') !== undefined) return 'gitlab';
  if (header(headers, 'x-github-event') !== undefined) return 'github';
  return undefined;
}

export type Verdict = { ok: true } | { ok: false; reason: string };

/** Verifies the request's signature (GitHub, Gitea: HMAC-SHA256 of the body; GitLab: the shared token). */
export function verifySignature(forge: Forge, headers: Headers, body: Buffer, secret: string): Verdict {
  if (secret === '') return { ok: false, reason: 'the project has no webhook secret' };
  switch (forge) {
    case 'github': {
      const sig = header(headers, 'x-hub-signature-256');
      if (!sig) return { ok: false, reason: 'missing X-Hub-Signature-256 header' };
      if (!sig.startsWith('sha256='))
        return { ok: false, reason: 'X-Hub-Signature-256 must start with sha256=' };
      return safeEqual(sig.slice(7).toLowerCase(), hmacHex(secret, body))
        ? { ok: true }
        : { ok: false, reason: 'signature does not match the body and the project secret' };
    }
    case 'gitea': {
      const sig = header(headers, 'x-gitea-signature');
      if (!sig) return { ok: false, reason: 'missing X-Gitea-Signature header' };
      return safeEqual(sig.toLowerCase(), hmacHex(secret, body))
        ? { ok: true }
        : { ok: false, reason: 'signature does not match the body and the project secret' };
    }
    case 'gitlab': {
      const token = header(headers, 'x-gitlab-token');
      if (!token) return { ok: false, reason: 'missing X-Gitlab-Token header' };
      return safeEqual(token, secret)
        ? { ok: true }
        : { ok: false, reason: 'X-Gitlab-Token does not match the project secret' };
    }
  }
}

/** Whether the forge's event header names a push (other events are acknowledged and ignored). */
export function isPushEvent(forge: Forge, headers: Headers): boolean {
  switch (forge) {
    case 'github':
      return header(headers, 'x-github-event') === 'push';
    case 'gitea':
      return header(headers, 'x-gitea-event') === 'push';
    case 'gitlab':
      return header(headers, 'x-gitlab-event') === 'Push Hook';
  }
}

const ZERO_SHA = /^0{40}$/;

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function obj(v: unknown): Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

/** Parses a push payload. Malformed payloads are BERTH_USAGE errors naming the missing field. */
export function parsePush(forge: Forge, body: Buffer): PushEvent {
  let data: unknown;
  try {
    data = JSON.parse(body.toString('utf8'));
  } catch (cause) {
    throw new BerthError('BERTH_USAGE', 'webhook payload is not valid JSON', { cause });
  }
  const root = obj(data);
  const ref = str(root.ref);
  if (!ref) throw new BerthError('BERTH_USAGE', 'webhook payload has no "ref" (is this a push event?)');
  if (ref.length > MAX_REF)
    throw new BerthError('BERTH_USAGE', `webhook payload's "ref" is longer than ${MAX_REF} characters`);
  const after = str(root.after) ?? str(root.checkout_sha);
  if (!after || !/^[0-9a-f]{40}$/.test(after)) {
    throw new BerthError('BERTH_USAGE', 'webhook payload has no valid "after" commit SHA (40 hex digits)');
  }
  const repo = obj(forge === 'gitlab' ? (root.project ?? root.repository) : root.repository);
  const repoUrl = forge === 'gitlab' ? (str(repo.git_http_url) ?? str(repo.http_url)) : str(repo.clone_url);
  const repoName = forge === 'gitlab' ? str(repo.path_with_namespace) : str(repo.full_name);
  const commits = Array.isArray(root.commits) ? root.commits : [];
  const head = obj(root.head_commit ?? commits[commits.length - 1]);
  const message = str(head.message)?.split('\n')[0];
  const pusher =
    forge === 'gitlab'
      ? (str(root.user_username) ?? str(root.user_name))
      : (str(obj(root.pusher).name) ?? str(obj(root.pusher).login));
  return {
    forge,
    repoUrl: clip(repoUrl),
    repoName: clip(repoName),
    ref,
    branch: ref.startsWith('refs/heads/') ? ref.slice('refs/heads/'.length) : undefined,
    sha: after,
    deleted: root.deleted === true || ZERO_SHA.test(after),
    message: clip(message),
    pusher: clip(pusher),
  };
}

/** The longest ref a push may name (git's own limit is the file system's: 255 bytes a name). */
const MAX_REF = 255;
/** Texts of a push kept for display (the commit's first line, names): at most this many characters. */
const MAX_TEXT = 1000;

function clip(s: string | undefined): string | undefined {
  return s === undefined || s.length <= MAX_TEXT ? s : `${s.slice(0, MAX_TEXT - 1)}…`;
}
