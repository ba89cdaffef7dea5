/**
 * The server's copy of its runs' artifacts. The runner saves a job's `artifacts` under its own run
 * folder; when a server run ends, the regular files of that folder are moved here
 * (`<data>/artifacts/<run>/<job>/<path>`), within a byte budget per run, and the artifacts of a
 * project's older runs are removed (the newest `keepRuns` runs of each project keep theirs).
 * Only directories and regular files are ever kept, and a file is served only by a path whose every
 * part is a plain name, opened without following links: whatever a job left in its folder, the
 * server hands out no other file of its disk.
 */
import { constants } from 'node:fs';
import type { ReadStream } from 'node:fs';
import { copyFile, lstat, mkdir, open, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';

export interface Artifact {
  job: string;
  /** Inside the job's artifacts, `/`-separated. */
  path: string;
  size: number;
}

export interface IngestResult {
  files: number;
  /** The kept files' bytes. */
  bytes: number;
  /** Files left out: over the run's budget (bytes, each file and folder at least a block) or count. */
  skipped: number;
}

export interface ArtifactStoreOptions {
  /** Runs per project whose artifacts are kept (the newest). */
  keepRuns: number;
  /** The most bytes of artifacts one run keeps. */
  maxRunBytes: number;
}

/** The most files and folders one run keeps (an empty one still costs an inode and a listing row). */
export const MAX_RUN_ENTRIES = 10_000;
/** What a kept file or folder costs at least against the byte budget (a block). */
const ENTRY_COST = 4096;

/** A run's ID as the server's store makes them; anything else names no folder. */
const RUN_ID = /^r_[a-z0-9]+$/;

/** One part of an artifact's path: a plain name, never `.`/`..`, never with a separator or NUL. */
function plainName(part: string): boolean {
  return part !== '' && part !== '.' && part !== '..' && !/[/\\\0]/.test(part);
}

export class ArtifactNotFound extends Error {}

export class ArtifactStore {
  constructor(
    readonly root: string,
    readonly opts: ArtifactStoreOptions,
  ) {}

  private runDir(runId: string): string {
    if (!RUN_ID.test(runId)) throw new ArtifactNotFound(`no run ${runId}`);
    return join(this.root, runId);
  }

  /**
   * Moves a run's artifacts from the runner's folder (`<from>/<job>/…`) into the store: regular
   * files only, in name order, until the run's budget is spent. Links, devices and the like stay
   * behind (the caller removes the runner's folder).
   */
  async ingest(runId: string, from: string): Promise<IngestResult> {
    const out: IngestResult = { files: 0, bytes: 0, skipped: 0 };
    const dest = this.runDir(runId);
    // Every file and folder costs at least a block, and their number is bounded (red-team pass 27:
    // 20 000 empty folders kept 79 MiB under a 1 MiB budget, as "0.0 MiB").
    let charged = 0;
    let entries = 0;
    const made = new Set<string>();
    const fits = (bytes: number) =>
      entries < MAX_RUN_ENTRIES && charged + Math.max(bytes, ENTRY_COST) <= this.opts.maxRunBytes;
    const charge = (bytes: number) => {
      charged += Math.max(bytes, ENTRY_COST);
      entries++;
    };
    /** Makes `dir` and the folders above it up to the run's, charging each one made. */
    const folder = async (dir: string): Promise<boolean> => {
      if (made.has(dir)) return true;
      if (dir === dest) {
        await mkdir(dest, { recursive: true, mode: 0o700 });
        made.add(dest);
        return true;
      }
      const parent = join(dir, '..');
      if (!(await folder(parent))) return false;
      if (!fits(0)) return false;
      await mkdir(dir, { recursive: true, mode: 0o700 });
      made.add(dir);
      charge(0);
      return true;
    };
    const walk = async (src: string, to: string, top = false): Promise<void> => {
      let names: string[];
      try {
        names = (await readdir(src)).sort();
      } catch {
        return; // no artifacts (or not a folder)
      }
      for (const name of names) {
        if (!plainName(name)) continue;
        const s = join(src, name);
        const st = await lstat(s);
        if (st.isDirectory()) await walk(s, join(to, name));
        else if (st.isFile() && !top) {
          if (!fits(st.size) || !(await folder(to)) || !fits(st.size)) {
            out.skipped++;
            continue;
          }
          charge(st.size);
          await rename(s, join(to, name)).catch(async (err: unknown) => {
            // The data folder spans file systems: copied instead.
            if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
            await copyFile(s, join(to, name));
            await rm(s, { force: true });
          });
          out.files++;
          out.bytes += st.size;
        }
      }
    };
    // The first level holds a folder per job; nothing else there is a job's.
    await walk(from, dest, true);
    return out;
  }

  /** A run's artifacts, by job and path. */
  async list(runId: string): Promise<Artifact[]> {
    const out: Artifact[] = [];
    const walk = async (dir: string, job: string, prefix: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch {
        return;
      }
      for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
        const path = prefix === '' ? e.name : `${prefix}/${e.name}`;
        if (e.isDirectory()) await walk(join(dir, e.name), job, path);
        else if (e.isFile()) out.push({ job, path, size: (await lstat(join(dir, e.name))).size });
      }
    };
    let jobs;
    try {
      jobs = await readdir(this.runDir(runId), { withFileTypes: true });
    } catch {
      return [];
    }
    for (const j of jobs.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0)))
      if (j.isDirectory()) await walk(join(this.runDir(runId), j.name), j.name, '');
    return out;
  }

  /**
   * Opens one artifact for reading. Every part of `job/path` must be a plain name, every folder on
   * the way a folder (not a link to one) and the file a regular file, opened with O_NOFOLLOW.
   */
  async open(
    runId: string,
    job: string,
    path: readonly string[],
  ): Promise<{ stream: ReadStream; size: number }> {
    const parts = [job, ...path];
    const missing = () => new ArtifactNotFound(`no artifact ${parts.join('/')} in run ${runId}`);
    if (path.length === 0 || !parts.every(plainName)) throw missing();
    let at = this.runDir(runId);
    for (const part of parts.slice(0, -1)) {
      at = join(at, part);
      const st = await lstat(at).catch(() => undefined);
      if (!st?.isDirectory()) throw missing();
    }
    const file = join(at, parts[parts.length - 1] ?? '');
    const fh = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK).catch(
      () => {
        throw missing();
      },
    );
    const st = await fh.stat();
    if (!st.isFile()) {
      await fh.close();
      throw missing();
    }
    return { stream: fh.createReadStream(), size: st.size };
  }

  /** Removes a run's artifacts. */
  async remove(runId: string): Promise<void> {
    await rm(this.runDir(runId), { recursive: true, force: true });
  }

  /**
   * Removes the artifacts of every run that `keep` does not name and `ofProject` says is the
   * project's (the caller passes the project's newest runs).
   */
  async prune(keep: ReadonlySet<string>, ofProject: (runId: string) => Promise<boolean>): Promise<number> {
    let names: string[];
    try {
      names = await readdir(this.root);
    } catch {
      return 0;
    }
    let removed = 0;
    for (const name of names) {
      if (!RUN_ID.test(name) || keep.has(name) || !(await ofProject(name))) continue;
      await this.remove(name);
      removed++;
    }
    return removed;
  }
}
