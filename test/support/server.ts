/**
 * Shared setup for the server's end-to-end tests: a git repository in a temp folder holding a
 * pipeline, webhook signing, and polling the API until a run settles.
 */
import { execFileSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { cpSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** git with a throwaway identity (tests must not depend on the machine's git config). */
export function git(cwd: string, ...args: string[]): string {
  return execFileSync('git', ['-c', 'user.name=t', '-c', 'user.email=t@example.invalid', ...args], {
    cwd,
    encoding: 'utf8',
  }).trim();
}

/**
 * A repository at `dir` with these files (path → content; or `from` copies a folder first),
 * committed on `main`. Answers the commit's sha.
 */
export function makeRepo(dir: string, files: Record<string, string>, from?: string): string {
  mkdirSync(dir, { recursive: true });
  if (from) cpSync(from, dir, { recursive: true });
  git(dir, 'init', '-q', '-b', 'main');
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(dir, path, '..'), { recursive: true });
    writeFileSync(join(dir, path), content);
  }
  git(dir, 'add', '.');
  git(dir, 'commit', '-q', '-m', 'test pipeline');
  return git(dir, 'rev-parse', 'HEAD');
}

/** A GitHub push webhook's body and headers, signed with `secret`. */
export function githubPush(
  secret: string,
  repo: string,
  sha: string,
): { body: string; headers: Record<string, string> } {
  const body = JSON.stringify({
    ref: 'refs/heads/main',
    after: sha,
    repository: { clone_url: repo, full_name: 't/app' },
    head_commit: { message: 'test pipeline' },
  });
  return {
    body,
    headers: {
      'Content-Type': 'application/json',
      'X-GitHub-Event': 'push',
      'X-Hub-Signature-256': `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`,
    },
  };
}

/** A client of the server's JSON API with its token. */
export function apiClient(base: string, token: string) {
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- the caller names the JSON shape it expects
  const call = async <T>(
    method: string,
    path: string,
    body?: unknown,
  ): Promise<{ status: number; json: T }> => {
    const r = await fetch(`${base}${path}`, {
      method,
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    return { status: r.status, json: (await r.json()) as T };
  };
  return {
    call,
    /** Polls a run until it leaves queued/running (or `until` says so); answers it. */
    async settle<T extends { status: string }>(
      runId: string,
      until: (r: T) => boolean = (r) => r.status !== 'queued' && r.status !== 'running',
      ms = 240_000,
    ): Promise<T> {
      const end = Date.now() + ms;
      for (;;) {
        const { json } = await call<T>('GET', `/api/runs/${runId}`);
        if (until(json) || Date.now() > end) return json;
        await new Promise((r) => setTimeout(r, 200));
      }
    },
  };
}
