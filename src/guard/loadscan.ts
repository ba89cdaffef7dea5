/**
 * What an image archive (`docker load`) will tag, read before dockerd sees it. dockerd extracts the
 * archive into a folder and reads `manifest.json` (or, without one, the legacy `repositories`)
 * from it; the scanner reads the tar the way that extraction lands: Go's tar formats (USTAR and
 * star prefixes, PAX `path`/`size` records, GNU long names), names cleaned as dockerd cleans them,
 * the last entry of a name wins. It collects every tag any version of those files names (a
 * superset: each is checked) and refuses what it cannot vouch for: those files as anything but
 * regular files, entries written through a symlink the archive made, manifests it cannot parse,
 * compressions other than gzip. LoadScanner is pure, fed chunk by chunk; ArchiveScan feeds it an
 * archive as it arrives, decompressing gzip on the way.
 */
import { posix } from 'node:path';
import { createGunzip } from 'node:zlib';
import type { Gunzip } from 'node:zlib';
import { foldKey } from './canonical.js';
import { JObject, parseOrdered } from './json.js';
import type { JValue } from './json.js';

const BLOCK = 512;
const MAX_META = 8 * 1024 * 1024;
/** Go's archive/tar maxSpecialFileSize: PAX records and GNU long names. */
const MAX_SPECIAL = 1024 * 1024;
const WATCHED = new Set(['manifest.json', 'repositories']);

export type Compression = 'none' | 'gzip' | 'bzip2' | 'xz' | 'zstd';

/** dockerd's DecompressStream detection, from the first bytes. */
export function compressionOf(head: Buffer): Compression {
  if (head[0] === 0x1f && head[1] === 0x8b && head[2] === 0x08) return 'gzip';
  if (head.subarray(0, 3).toString('latin1') === 'BZh') return 'bzip2';
  if (head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (head.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) return 'zstd';
  return 'none';
}

export interface LoadScan {
  /** Every tag a manifest or repositories file in the archive names, as written. */
  tags: string[];
  /** Why the archive cannot be vouched for; undefined when it can. */
  problem: string | undefined;
  /** Whether the archive has a manifest.json (without one, dockerd loads the legacy way). */
  manifest: boolean;
}

const ZERO_BLOCK = Buffer.alloc(BLOCK);

function isZeroBlock(h: Buffer): boolean {
  return h.equals(ZERO_BLOCK);
}

function cstr(b: Buffer, off: number, len: number): string {
  const s = b.subarray(off, off + len);
  const z = s.indexOf(0);
  return (z < 0 ? s : s.subarray(0, z)).toString('utf8');
}

function parseSize(b: Buffer): number {
  const f = b.subarray(124, 136);
  if ((f[0] ?? 0) & 0x80) {
    // base-256 (GNU): big-endian, first byte's top bit a flag
    let n = (f[0] ?? 0) & 0x7f;
    for (let i = 1; i < f.length; i++) n = n * 256 + (f[i] ?? 0);
    return n;
  }
  const t = f
    .toString('latin1')
    .replace(/[\0 ]+$/, '')
    .trim();
  return t === '' ? 0 : parseInt(t, 8);
}

/** A header block's checksum as Go checks it: the unsigned or the signed sum, the field as spaces. */
function checksumOk(h: Buffer): boolean {
  const field = h
    .subarray(148, 156)
    .toString('latin1')
    .replace(/^[\0 ]+|[\0 ]+$/g, '');
  if (!/^[0-7]+$/.test(field)) return false;
  const want = parseInt(field, 8);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < 512; i++) {
    const b = i >= 148 && i < 156 ? 0x20 : (h[i] ?? 0);
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return want === unsigned || want === signed;
}

/** PAX records: `<len> key=value\n`. */
function paxRecords(data: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < data.length) {
    const sp = data.indexOf(0x20, i);
    if (sp < 0) break;
    const len = parseInt(data.subarray(i, sp).toString('latin1'), 10);
    if (!Number.isFinite(len) || len <= 0) break;
    const rec = data.subarray(sp + 1, i + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (eq > 0) out.set(rec.slice(0, eq), rec.slice(eq + 1));
    i += len;
  }
  return out;
}

/** The name an entry lands at in dockerd's extraction folder (Clean, no leading slash). */
export function landing(name: string): string {
  return posix.normalize(`/${name}`).replace(/^\/+/, '').replace(/\/+$/, '');
}

/** Tags a manifest.json names: every `RepoTags` (any spelling Go folds onto it) of every item. */
function manifestTags(v: JValue): string[] {
  const out: string[] = [];
  if (!Array.isArray(v)) return out;
  for (const item of v) {
    if (!(item instanceof JObject)) continue;
    for (const [k, val] of item.pairs)
      if (foldKey(k) === 'repotags' && Array.isArray(val))
        for (const t of val) if (typeof t === 'string') out.push(t);
  }
  return out;
}

/** Tags a legacy repositories file names: `{repo: {tag: id}}`. */
function repositoriesTags(v: JValue): string[] {
  const out: string[] = [];
  if (!(v instanceof JObject)) return out;
  for (const [repo, tags] of v.pairs)
    if (tags instanceof JObject) for (const [tag] of tags.pairs) out.push(`${repo}:${tag}`);
  return out;
}

/** What a scanner watches for, and where the bytes that are safe to pass on go. */
export interface ScanOptions {
  /** Landing paths whose content is read (each version of them): regular files only. */
  watched: ReadonlySet<string>;
  /** Called with each version of a watched file; returns why the archive is refused, if it is. */
  read: (at: string, data: Buffer) => string | undefined;
  /**
   * Receives the archive's bytes as they are read, up to and not including its end-of-archive
   * block: whoever forwards them decides when (whether) the archive ends for the reader behind.
   */
  emit?: ((bytes: Buffer) => void) | undefined;
}

export class LoadScanner {
  private readonly tags = new Set<string>();
  private readonly opts: ScanOptions;

  constructor(opts?: ScanOptions) {
    this.opts = opts ?? { watched: WATCHED, read: (at, data) => this.onWatched(at, data) };
  }

  private problem: string | undefined;
  private sawManifest = false;
  private header = Buffer.alloc(0);
  /** Bytes of the current entry's data (padded) still to come. */
  private remaining = 0;
  /** The current entry's padding (to its last block's end). */
  private padding = 0;
  private missingPadding = 0;
  private size = 0;
  private capture: Buffer[] | undefined;
  private captured = 0;
  private onData: ((data: Buffer) => void) | undefined;
  private ended = false;
  private paxPath: string | undefined;
  private paxSize: number | undefined;
  private longName: string | undefined;
  private paxLink: string | undefined;
  private longLink: string | undefined;
  private readonly symlinks = new Set<string>();

  /**
   * Reads the next piece. The bytes passed on go to `emit` in as few pieces as the archive allows
   * (one per chunk, unless a header spans two chunks or the end block sits inside one): a context of
   * many small files costs a push per chunk, not two per entry.
   */
  write(chunk: Buffer): void {
    const emit = this.opts.emit;
    let off = 0;
    /** Where the bytes of this chunk that pass but were not emitted yet begin. */
    let run = 0;
    while (off < chunk.length && !this.ended && this.problem === undefined) {
      if (this.remaining > 0) {
        const n = Math.min(this.remaining, chunk.length - off);
        if (this.capture) {
          const useful = Math.max(0, Math.min(n, this.size - this.captured));
          if (useful > 0) this.capture.push(chunk.subarray(off, off + useful));
          this.captured += useful;
        }
        this.remaining -= n;
        off += n;
        if (this.remaining === 0) this.finishData();
        continue;
      }
      let h: Buffer;
      if (this.header.length === 0 && chunk.length - off >= BLOCK) {
        // A header whole in this chunk: read in place.
        h = chunk.subarray(off, off + BLOCK);
        if (isZeroBlock(h)) {
          // The end of the archive: what came before it passes, it does not.
          if (emit && off > run) emit(chunk.subarray(run, off));
          off += BLOCK;
          run = off;
        } else off += BLOCK;
      } else {
        // A header that spans chunks: the bytes before it pass now, the header once it is whole.
        if (emit && this.header.length === 0 && off > run) emit(chunk.subarray(run, off));
        const take = chunk.subarray(off, off + BLOCK - this.header.length);
        this.header = this.header.length === 0 ? Buffer.from(take) : Buffer.concat([this.header, take]);
        off += take.length;
        run = off;
        if (this.header.length < BLOCK) continue;
        h = this.header;
        this.header = Buffer.alloc(0);
        if (emit && !isZeroBlock(h)) emit(h);
      }
      this.onHeader(h);
    }
    if (emit && off > run) emit(chunk.subarray(run, off));
  }

  end(): LoadScan {
    if (this.problem === undefined && !this.ended) {
      if (this.header.length > 0 || this.remaining > this.padding)
        this.problem = 'the archive ends in the middle of an entry';
      else if (this.remaining > 0) {
        // Only the last entry's padding is missing: Go's reader ends there cleanly (the docker CLI
        // sends `-f -` contexts that way), and the entry is whole.
        this.missingPadding = this.remaining;
        this.remaining = 0;
        this.finishData();
      }
    }
    return { tags: [...this.tags], problem: this.problem, manifest: this.sawManifest };
  }

  /**
   * Bytes from here on the scanner does not need to see: the rest of a file's data (and padding)
   * that it does not read. 0 when it needs the next byte.
   */
  get skippable(): number {
    if (this.ended || this.problem !== undefined || this.header.length > 0 || this.capture) return 0;
    return this.remaining;
  }

  /** Passes over n of the skippable bytes (see skippable) without seeing them. */
  skip(n: number): void {
    if (n <= 0) return;
    if (n > this.skippable) throw new Error('the scanner cannot skip bytes it needs');
    this.remaining -= n;
    if (this.remaining === 0) this.finishData();
  }

  /** Whether the scanner reads no further: the archive ended, or cannot be vouched for. */
  get stopped(): boolean {
    return this.ended || this.problem !== undefined;
  }

  /** Padding the archive's last entry went without (zero bytes a forwarder must add before an end block). */
  get unpadded(): number {
    return this.missingPadding;
  }

  private fail(why: string): void {
    this.problem ??= why;
  }

  private onHeader(h: Buffer): void {
    if (isZeroBlock(h)) {
      // Go stops at a zero block (and fails unless another follows): nothing after it is read.
      this.ended = true;
      return;
    }
    // Go refuses a header whose checksum matches neither its unsigned nor its signed sum; so does
    // the scanner, so that it never reads as a header what Go reads as data.
    if (!checksumOk(h)) return this.fail('a header checksum is wrong');
    let type = String.fromCharCode(h[156] ?? 0);
    const magic = h.subarray(257, 263).toString('latin1');
    let name = cstr(h, 0, 100);
    // Go's reader: USTAR (and its prefix) by the magic alone, whatever the version says.
    if (magic === 'ustar\0') {
      const star = h.subarray(508, 512).toString('latin1') === 'tar\0';
      const prefix = cstr(h, 345, star ? 131 : 155);
      if (prefix !== '') name = `${prefix}/${name}`;
    }
    let size = parseSize(h);
    if (!Number.isSafeInteger(size) || size < 0) return this.fail('an entry has a size berth cannot read');
    // Sparse entries put maps before (or in) their data: not read here, so not vouched for.
    if (type === 'S') return this.fail('the archive has a sparse entry, which berth does not read');
    // Go's reader refuses a PAX record block or a GNU long name over 1 MiB (header field too long):
    // the scanner refuses it first, so dockerd is never the one to end a context early.
    if ('gxLK'.includes(type) && size > MAX_SPECIAL) return this.fail('a PAX header or long name over 1 MiB');
    // Meta entries describe the next one. Go's reader returns a global header as an entry of its
    // own, which drops what earlier meta entries said.
    if (type === 'g') {
      this.paxPath = undefined;
      this.paxSize = undefined;
      this.longName = undefined;
      this.paxLink = undefined;
      this.longLink = undefined;
      this.startData(size, undefined);
      return;
    }
    if (type === 'x' || type === 'L' || type === 'K') {
      const meta = type;
      this.startData(size, (data) => this.onMeta(meta, data));
      return;
    }
    // A GNU long name wins over a PAX path, as in Go's reader.
    if (this.paxPath !== undefined) name = this.paxPath;
    if (this.longName !== undefined) name = this.longName;
    if (this.paxSize !== undefined) size = this.paxSize;
    const linkName = this.longLink ?? this.paxLink ?? cstr(h, 157, 100);
    this.paxPath = undefined;
    this.paxSize = undefined;
    this.longName = undefined;
    this.paxLink = undefined;
    this.longLink = undefined;
    // An old-style regular entry whose name ends in a slash is a folder to Go (no data).
    if (type === '\0' && name.endsWith('/')) type = '5';
    const at = landing(name);
    // (Most contexts make no symbolic link: nothing to look through then.)
    if (this.symlinks.size > 0) {
      const parts = at.split('/');
      for (let i = 1; i < parts.length; i++) {
        if (this.symlinks.has(parts.slice(0, i).join('/')))
          return this.fail(`the archive writes ${at} through a symbolic link it made`);
      }
    }
    // link(2) does not follow a symbolic link it is given: a hard link to one is another symbolic
    // link, which the scanner would not know as one. Refused, as is a link through one.
    if (type === '1' && this.symlinks.size > 0) {
      const target = landing(linkName).split('/');
      for (let i = 1; i <= target.length; i++)
        if (this.symlinks.has(target.slice(0, i).join('/')))
          return this.fail(
            `the archive hard-links ${at} to ${target.join('/')}, through a symbolic link it made`,
          );
    }
    if (type === '2') this.symlinks.add(at);
    else this.symlinks.delete(at);
    // A watched file reached through a link (a folder on its way that is a link) would be read
    // from somewhere else than the scanner reads it.
    if (type === '1' || type === '2')
      for (const w of this.opts.watched)
        if (w.startsWith(`${at}/`)) return this.fail(`the archive's ${w} is reached through a link (${at})`);
    if (this.opts.watched.has(at)) {
      if (type !== '0' && type !== '\0' && type !== '7')
        return this.fail(`the archive's ${at} is not a regular file`);
      this.startData(size, (data) => {
        const why = this.opts.read(at, data);
        if (why !== undefined) this.fail(why);
      });
      return;
    }
    // Links, devices, folders and fifos have no data in the stream (Go ignores their size field).
    this.startData('123456'.includes(type) ? 0 : size, undefined);
  }

  private startData(size: number, onData: ((data: Buffer) => void) | undefined): void {
    if (onData && size > MAX_META) return this.fail('a file berth must read in the archive is too large');
    this.size = size;
    this.padding = Math.ceil(size / BLOCK) * BLOCK - size;
    this.captured = 0;
    this.capture = onData ? [] : undefined;
    this.onData = onData;
    this.remaining = Math.ceil(size / BLOCK) * BLOCK;
    if (this.remaining === 0) this.finishData();
  }

  private finishData(): void {
    const cb = this.onData;
    const data = this.capture ? Buffer.concat(this.capture) : undefined;
    this.capture = undefined;
    this.onData = undefined;
    if (cb && data) cb(data);
  }

  private onMeta(type: string, data: Buffer): void {
    if (type === 'x') {
      // A second PAX header replaces the first one whole, as in Go's reader.
      const rec = paxRecords(data);
      if ([...rec.keys()].some((k) => k.startsWith('GNU.sparse.')))
        return this.fail('the archive has a sparse entry, which berth does not read');
      // Go keeps the header's own field where a record's value is empty.
      const path = rec.get('path');
      this.paxPath = path === '' ? undefined : path;
      const link = rec.get('linkpath');
      this.paxLink = link === '' ? undefined : link;
      this.paxSize = undefined;
      const size = rec.get('size');
      if (size !== undefined && size !== '') {
        // Go's ParseInt(v, 10, 64): digits with an optional sign, nothing else.
        const n = /^[+-]?\d+$/.test(size) ? Number(size) : NaN;
        if (!Number.isSafeInteger(n) || n < 0) return this.fail('a PAX size berth cannot read');
        this.paxSize = n;
      }
    } else {
      // GNU long names and link names: Go reads them up to their first NUL, and an empty one
      // leaves the header's own field.
      const z = data.indexOf(0);
      const read = (z < 0 ? data : data.subarray(0, z)).toString('utf8');
      const long = read === '' ? undefined : read;
      if (type === 'L') this.longName = long;
      else this.longLink = long;
    }
  }

  private onWatched(at: string, data: Buffer): string | undefined {
    let v: JValue;
    try {
      v = parseOrdered(data.toString('utf8'));
    } catch {
      return `the archive's ${at} is not JSON berth can read`;
    }
    if (at === 'manifest.json') this.sawManifest = true;
    for (const t of at === 'manifest.json' ? manifestTags(v) : repositoriesTags(v)) this.tags.add(t);
    return undefined;
  }
}

/** An archive that cannot be read (a compression other than gzip, a broken gzip stream). */
export class ArchiveError extends Error {}

/**
 * An image archive read as it arrives, with a LoadScanner: plain or gzip, told apart by its first
 * bytes as dockerd tells them; other compressions are refused. `write` calls back once the piece
 * is taken (a gzip stream's own backpressure), `end` gives the scan.
 */
export class ArchiveScan {
  /** `what` names the archive in errors (an image archive, a build context). */
  constructor(
    private readonly scanner: LoadScanner = new LoadScanner(),
    private readonly what = 'image archive',
  ) {}

  private head = Buffer.alloc(0);
  private kind: Compression | undefined;
  private gunzip: Gunzip | undefined;
  private failed: Error | undefined;
  /** Reads the first bytes a gzip archive inflates to (called once enough came, or at its end). */
  private innerHead: (() => void) | undefined;

  /** The archive's compression, once its first bytes came. */
  get compression(): Compression | undefined {
    return this.kind;
  }

  /** Whether reading failed (a compression other than gzip, a broken gzip stream). */
  get broken(): boolean {
    return this.failed !== undefined;
  }

  write(chunk: Buffer, taken: () => void): void {
    if (this.failed) return taken();
    if (this.kind === undefined) {
      this.head = Buffer.concat([this.head, chunk]);
      if (this.head.length < 8) return taken();
      this.start(this.head);
      return this.feed(this.head, taken);
    }
    this.feed(chunk, taken);
  }

  private start(head: Buffer): void {
    this.kind = compressionOf(head);
    if (this.kind === 'gzip') {
      const z = createGunzip();
      // dockerd looks for a compression again in what it is given: the gate passes the inflated
      // bytes on, so they must not start like a compressed stream themselves.
      let inner: Buffer | undefined = Buffer.alloc(0);
      this.innerHead = () => {
        const head = inner;
        inner = undefined;
        if (head === undefined) return;
        const k = compressionOf(head);
        if (k !== 'none') this.failed ??= new Error(`it holds ${k} inside gzip`);
        else this.scanner.write(head);
      };
      z.on('data', (c: Buffer) => {
        if (this.failed) return;
        if (inner === undefined) return this.scanner.write(c);
        inner = Buffer.concat([inner, c]);
        if (inner.length >= 8) this.innerHead?.();
      });
      z.on('error', (e) => (this.failed ??= e));
      this.gunzip = z;
    }
  }

  private feed(piece: Buffer, taken: () => void): void {
    if (this.kind === 'none') {
      this.scanner.write(piece);
      return taken();
    }
    if (this.gunzip) {
      const z = this.gunzip;
      if (z.write(piece)) return taken();
      // On with the next piece once the gunzip has room, or has failed (then no 'drain' comes).
      const go = (): void => {
        z.off('drain', go);
        z.off('close', go);
        taken();
      };
      z.once('drain', go);
      z.once('close', go);
      return;
    }
    taken(); // a compression refused at the end: nothing to read
  }

  destroy(): void {
    this.gunzip?.destroy();
  }

  /** Stops decompressing until `resume` (whoever takes the scanner's output is full). */
  pause(): void {
    this.gunzip?.pause();
  }

  resume(): void {
    this.gunzip?.resume();
  }

  async end(): Promise<LoadScan> {
    if (this.kind === undefined) {
      // An archive of fewer than 8 bytes: read as it is (the scanner calls it truncated).
      this.start(this.head);
      this.feed(this.head, () => undefined);
    }
    if (this.kind !== 'none' && this.kind !== 'gzip')
      throw new ArchiveError(
        `berth reads a plain or gzip ${this.what}, not ${this.kind}; decompress it first`,
      );
    if (this.gunzip) {
      const z = this.gunzip;
      await new Promise<void>((resolve) => {
        if (this.failed) return resolve();
        z.once('end', resolve);
        z.once('error', () => resolve());
        z.end();
      });
      this.innerHead?.();
    }
    if (this.failed) throw new ArchiveError(`the ${this.what} cannot be read: ${this.failed.message}`);
    return this.scanner.end();
  }
}
