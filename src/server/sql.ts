/**
 * A minimal async SQL adapter over SQLite (better-sqlite3, embedded default) and PostgreSQL (pg),
 * so the server's store runs on either. Statements are written with `?` placeholders; the
 * PostgreSQL adapter numbers them ($1, $2, …).
 */
import Database from 'better-sqlite3';
import pg from 'pg';
import { closeSync, constants, fchmodSync, fstatSync, lstatSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import { BerthError, privateDirProblem } from '../common/index.js';

export type SqlValue = string | number | null;
export type Row = Record<string, unknown>;

export interface Sql {
  readonly dialect: 'sqlite' | 'postgres';
  all<T extends Row = Row>(sql: string, params?: readonly SqlValue[]): Promise<T[]>;
  get<T extends Row = Row>(sql: string, params?: readonly SqlValue[]): Promise<T | undefined>;
  run(sql: string, params?: readonly SqlValue[]): Promise<{ changes: number }>;
  /** Runs statements separated by `;` (DDL). */
  exec(sql: string): Promise<void>;
  close(): Promise<void>;
}

/** Parses `--db`: `sqlite:PATH` (default) or `postgres://…` / `postgresql://…`. */
export function parseDbUrl(
  url: string,
): { kind: 'sqlite'; path: string } | { kind: 'postgres'; url: string } {
  if (url.startsWith('postgres://') || url.startsWith('postgresql://')) return { kind: 'postgres', url };
  if (url.startsWith('sqlite:')) {
    const path = url.slice('sqlite:'.length);
    if (path === '')
      throw new BerthError('BERTH_USAGE', '--db sqlite: needs a path, e.g. sqlite:.berth/server.db');
    return { kind: 'sqlite', path };
  }
  throw new BerthError('BERTH_USAGE', `--db ${url}: expected sqlite:PATH or postgres://user@host/db`);
}

/**
 * Makes `dir` (0700) where it is missing, and checks it is this user's alone: a folder, not a link,
 * owned by this user; a looser mode of our own is tightened. The server keeps webhook secrets,
 * checked-out code and artifacts under it: a folder another user made, or a link they planted,
 * would have berth (often root) write them where that user reads, or chmod and remove what the
 * link names (red-team pass 30). Throws BERTH_CONFIG naming the folder otherwise.
 */
export function ensurePrivateDir(dir: string, what: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const problem = privateDirProblem(dir);
  if (problem !== undefined)
    throw new BerthError('BERTH_CONFIG', `the ${what} ${dir} ${problem}`, {
      hint: `use a folder of this user's own (or remove ${dir}: berth makes it)`,
    });
}

export function openSqlite(path: string): Sql {
  if (path !== ':memory:') {
    // The store holds projects' webhook secrets: readable by this user only (red-team pass 29: a
    // 0644 file let every local user read them). SQLite gives its -wal and -shm files the same mode.
    // The store's folder is made private when berth makes it; one that exists (any folder named by
    // --db) is only checked, never chmodded. The file itself: never through a link, and this user's.
    const parent = dirname(path);
    if (lstatSync(parent, { throwIfNoEntry: false }) === undefined)
      ensurePrivateDir(parent, "server store's folder");
    else if (!lstatSync(parent).isDirectory())
      throw new BerthError(
        'BERTH_CONFIG',
        `the server store's folder ${parent} is not a folder (a link, or a file)`,
      );
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
    } catch (cause) {
      throw new BerthError('BERTH_CONFIG', `cannot open the server store ${path} (a link is refused)`, {
        cause,
      });
    }
    try {
      const st = fstatSync(fd);
      const uid = process.geteuid?.();
      if (!st.isFile() || (uid !== undefined && st.uid !== uid))
        throw new BerthError('BERTH_CONFIG', `the server store ${path} is not a file of this user's own`, {
          hint: 'use a store of this user (or remove the file)',
        });
      if ((st.mode & 0o077) !== 0) fchmodSync(fd, 0o600);
    } finally {
      closeSync(fd);
    }
  }
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('busy_timeout = 5000');
  db.pragma('foreign_keys = ON');
  return {
    dialect: 'sqlite',
    all: <T extends Row>(sql: string, params: readonly SqlValue[] = []) =>
      Promise.resolve(db.prepare(sql).all(...params) as T[]),
    get: <T extends Row>(sql: string, params: readonly SqlValue[] = []) =>
      Promise.resolve(db.prepare(sql).get(...params) as T | undefined),
    run: (sql: string, params: readonly SqlValue[] = []) =>
      Promise.resolve({ changes: db.prepare(sql).run(...params).changes }),
    exec: (sql: string) => {
      db.exec(sql);
      return Promise.resolve();
    },
    close: () => {
      db.close();
      return Promise.resolve();
    },
  };
}

function numbered(sql: string): string {
  let n = 0;
  return sql.replace(/\?/g, () => `$${++n}`);
}

export async function openPostgres(url: string): Promise<Sql> {
  const pool = new pg.Pool({ connectionString: url, max: 8 });
  // BIGINT columns hold millisecond timestamps: read them back as numbers.
  pg.types.setTypeParser(pg.types.builtins.INT8, (v: string) => Number(v));
  try {
    await pool.query('SELECT 1');
  } catch (cause) {
    await pool.end();
    throw new BerthError('STORE_FAILED', `cannot connect to PostgreSQL at ${redact(url)}`, { cause });
  }
  return {
    dialect: 'postgres',
    all: async <T extends Row>(sql: string, params: readonly SqlValue[] = []) =>
      (await pool.query(numbered(sql), [...params])).rows as T[],
    get: async <T extends Row>(sql: string, params: readonly SqlValue[] = []) =>
      (await pool.query(numbered(sql), [...params])).rows[0] as T | undefined,
    run: async (sql: string, params: readonly SqlValue[] = []) => ({
      changes: (await pool.query(numbered(sql), [...params])).rowCount ?? 0,
    }),
    exec: async (sql: string) => {
      await pool.query(sql);
    },
    close: () => pool.end(),
  };
}

/** A connection URL with its password hidden, for messages. */
export function redact(url: string): string {
  return url.replace(/(\/\/[^:/@]+:)[^@]*@/, '$1***@');
}

export async function openSql(dbUrl: string): Promise<Sql> {
  const parsed = parseDbUrl(dbUrl);
  return parsed.kind === 'sqlite' ? openSqlite(parsed.path) : openPostgres(parsed.url);
}
