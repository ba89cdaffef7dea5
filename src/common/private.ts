/**
 * Folders that must be this user's alone (run temp folders, the server's data, run stores): berth
 * often runs as root, and a folder another local user made first, or a link they planted, would
 * have it write where that user reads, or chmod and remove what the link names (red-team passes
 * 29 and 30).
 */
import { chmodSync, lstatSync } from 'node:fs';

/**
 * Why `dir` is not a folder of this user's alone (undefined: it is): missing, a link or a file, or
 * another user's. A looser mode of our own is tightened to 0700 unless `tighten` is false.
 */
export function privateDirProblem(dir: string, tighten = true): string | undefined {
  let st;
  try {
    st = lstatSync(dir);
  } catch {
    return 'does not exist';
  }
  if (!st.isDirectory()) return 'is not a folder (a link, or a file)';
  const uid = process.geteuid?.();
  if (uid !== undefined && st.uid !== uid) return `belongs to uid ${st.uid}, not to this user (${uid})`;
  if (tighten && (st.mode & 0o077) !== 0) chmodSync(dir, 0o700);
  return undefined;
}
