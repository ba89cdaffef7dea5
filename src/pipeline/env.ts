/** What a step sees: matrix variables, git facts, and secret masking. */
import { execFileSync } from 'node:child_process';

export interface GitInfo {
  sha: string;
  branch: string | undefined;
}

/** A matrix expansion's values as `BERTH_MATRIX_<KEY>` variables (`node-version` → `NODE_VERSION`). */
export function matrixEnvironment(
  matrix: Readonly<Record<string, string>> | undefined,
): Record<string, string> {
  return Object.fromEntries(
    Object.entries(matrix ?? {}).map(([k, v]) => [`BERTH_MATRIX_${k.toUpperCase().replace(/-/g, '_')}`, v]),
  );
}

/** Values shorter than this are not masked (masking `1` or `on` would wreck every log line). */
export const MIN_SECRET_LENGTH = 4;

/**
 * Replaces every occurrence of each secret value in `line` with `***`, longest values first (so a
 * secret containing another is masked whole). Values shorter than MIN_SECRET_LENGTH are skipped.
 * Each multi-line value is also masked line by line. Base64 forms are NOT masked (documented).
 */
export function maskSecrets(line: string, values: readonly string[]): string {
  const parts = new Set<string>();
  for (const v of values) {
    if (v.length >= MIN_SECRET_LENGTH) parts.add(v);
    if (v.includes('\n'))
      for (const l of v.split(/\r?\n/)) if (l.trim().length >= MIN_SECRET_LENGTH) parts.add(l);
  }
  let out = line;
  for (const v of [...parts].sort((a, b) => b.length - a.length)) out = out.split(v).join('***');
  return out;
}

/** The commit SHA and branch of the git repository holding `dir`; undefined outside a repo. */
export function gitInfo(dir: string): GitInfo | undefined {
  const git = (args: string[]): string | undefined => {
    try {
      return execFileSync('git', args, {
        cwd: dir,
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'ignore'],
      }).trim();
    } catch {
      return undefined;
    }
  };
  const sha = git(['rev-parse', '--verify', 'HEAD']);
  if (!sha) return undefined;
  const branch = git(['symbolic-ref', '--short', '-q', 'HEAD']);
  return { sha, branch: branch || undefined };
}
