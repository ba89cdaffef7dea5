/**
 * Records of the tags tenants wrote themselves, shared by every guard on an engine.
 *
 * Image tags are one namespace. A tag nobody holds is free to whoever sets it first, and dockerd
 * runs whatever a name points at: a tenant that tags its own image `node:20` before anyone pulled
 * it would have it run by the next tenant that names `node:20`. Each guard knows only its own
 * tenant's claims, so a guard that lets its tenant write a tag (`tag`, a build's `-t`, `commit`,
 * `import`, `load`) first leaves a record on the engine, where the other guards read it: a volume
 * named `berth-tag-<key>-<nonce>` whose labels say which tag, which image, which tenant. Tenants
 * cannot make, see or remove such volumes (the name is reserved, the labels are berth's, and they
 * carry no tenant label). A pull writes no record: what it brings is the registry's for that name.
 *
 * Another tenant's guard takes a name as that tenant's own local image while a record says the
 * name points at the image it points at now; it then answers as if the name were absent, and lets
 * its own tenant's pull write over it (see docs/guard.md, Ownership).
 */
import { createHash, randomBytes } from 'node:crypto';
import { LABEL_PREFIX, LABEL_ROLE, LABEL_TENANT } from '../common/index.js';
import { normalizeTag } from './ownership.js';

/** The volume name prefix of records (reserved: no tenant may name a volume so). */
export const RECORD_PREFIX = 'berth-tag-';
export const RECORD_ROLE = 'tag-record';
const LABEL_KEY = `${LABEL_PREFIX}tag.key`;
const LABEL_NAME = `${LABEL_PREFIX}tag.name`;
const LABEL_WRITER = `${LABEL_PREFIX}tag.tenant`;
const LABEL_IMAGE = `${LABEL_PREFIX}tag.image`;
/** How long a record outlives the tag's next write by the same tenant. */
export const RECORD_GRACE_MS = 60_000;
/** The shortest time between two checks for records lost to prunes (see restoreLost). */
const LOST_CHECK_MS = 1000;
/** A record's image while the write is under way and its image not known yet (a load). */
export const ANY_IMAGE = '*';

export interface TagRecord {
  /** The volume that is the record. */
  readonly volume: string;
  /** The tag, normalised (normalizeTag). */
  readonly tag: string;
  /** The tenant whose guard wrote it. */
  readonly tenant: string;
  /** The image ID the tenant set the tag to, or ANY_IMAGE while that is not known yet. */
  readonly image: string;
}

/** The label value records of one tag share (a tag can be longer than a label should be). */
export function tagKey(tag: string): string {
  return createHash('sha256').update(normalizeTag(tag)).digest('hex').slice(0, 32);
}

/** The volume create body of a record; `labels` are the guard's own (a run's, for the reaper). */
export function recordBody(
  tag: string,
  tenant: string,
  image: string,
  labels: Readonly<Record<string, string>>,
  name = `${RECORD_PREFIX}${tagKey(tag)}-${randomBytes(6).toString('hex')}`,
): { Name: string; Labels: Record<string, string> } {
  // Not the tenant's volume: it must not show in its lists, nor be removable by it.
  const own = Object.fromEntries(Object.entries(labels).filter(([k]) => k !== LABEL_TENANT));
  return {
    Name: name,
    Labels: {
      ...own,
      [LABEL_ROLE]: RECORD_ROLE,
      [LABEL_KEY]: tagKey(tag),
      [LABEL_NAME]: normalizeTag(tag),
      [LABEL_WRITER]: tenant,
      [LABEL_IMAGE]: image,
    },
  };
}

/** The filter that lists the records of one tag. */
export function recordFilter(tag: string): string {
  return JSON.stringify({ label: [`${LABEL_ROLE}=${RECORD_ROLE}`, `${LABEL_KEY}=${tagKey(tag)}`] });
}

/** The filter that lists every record on the engine. */
export const ALL_RECORDS_FILTER = JSON.stringify({ label: [`${LABEL_ROLE}=${RECORD_ROLE}`] });

/**
 * The records in a volume list answer. Only volumes a guard made count: a record's name, role and
 * fields, and no tenant label (every volume a tenant makes carries one).
 */
export function parseRecords(answer: unknown): TagRecord[] {
  const vols = (answer as { Volumes?: unknown } | null)?.Volumes;
  if (!Array.isArray(vols)) return [];
  const out: TagRecord[] = [];
  for (const v of vols as { Name?: unknown; Labels?: Record<string, unknown> | null }[]) {
    const l = v.Labels ?? {};
    const [name, tag, tenant, image] = [v.Name, l[LABEL_NAME], l[LABEL_WRITER], l[LABEL_IMAGE]];
    if (
      typeof name !== 'string' ||
      !name.startsWith(RECORD_PREFIX) ||
      l[LABEL_ROLE] !== RECORD_ROLE ||
      LABEL_TENANT in l ||
      typeof tag !== 'string' ||
      typeof tenant !== 'string' ||
      typeof image !== 'string'
    )
      continue;
    out.push({ volume: name, tag, tenant, image });
  }
  return out;
}

/**
 * The record that makes `tag` (naming `image` now) another tenant's local image for `tenant`, if
 * one does: written by another tenant, for that tag, on that image (or on any, while unsettled).
 */
export function foreignRecord(
  records: readonly TagRecord[],
  tag: string,
  image: string,
  tenant: string,
): TagRecord | undefined {
  const t = normalizeTag(tag);
  return records.find(
    (r) => r.tenant !== tenant && r.tag === t && (r.image === image || r.image === ANY_IMAGE),
  );
}

/** Whether a reference names an image by ID or digest (no tag is looked up for it). */
export function byIdOrDigest(ref: string): boolean {
  return ref.includes('@') || /^(sha256:)?[0-9a-f]{64}$/.test(ref);
}

type Upstream = (method: string, path: string, body?: unknown) => Promise<{ status: number; json: unknown }>;

/** One guard's records: writes its tenant's, reads everyone's. */
export class TagRecords {
  /** The records this guard wrote that are still on the engine (tag → volume names, oldest first). */
  private readonly mine = new Map<string, string[]>();
  /** The image each of them names (volume name → image ID or ANY_IMAGE). */
  private readonly imageOf = new Map<string, string>();
  /** When a later write of the same tag replaced each (volume name → ms). */
  private readonly replacedAt = new Map<string, number>();
  /** Records whose write was kept (a record still under way is its own write's to drop). */
  private readonly settled = new Set<string>();
  /** Records this guard is removing (their removal is not a loss to restore). */
  private readonly removing = new Set<string>();

  constructor(
    private readonly tenant: string,
    private readonly labels: Readonly<Record<string, string>>,
    private readonly upstream: Upstream,
  ) {}

  /**
   * Records that the tenant is about to set `tag` to `image` (before the write, so no other guard
   * sees the tag without its record). `keep` once the tag is set, `drop` when it was not. A
   * record this `keep` replaces goes at a later `keep` once it was replaced RECORD_GRACE_MS ago:
   * another guard that read the name a moment before it moved still finds the record of the
   * image it read.
   */
  async before(tag: string, image: string): Promise<{ keep(): Promise<void>; drop(): Promise<void> }> {
    const t = normalizeTag(tag);
    // A record of this guard's that names this very image and was not replaced says it already (a
    // rebuild that comes out as the image the tag names): it is kept, if the engine still has it,
    // rather than written again (a volume create is an fsync in dockerd, about 7 ms).
    const live = image === ANY_IMAGE ? undefined : await this.stillRecorded(t, image);
    let name: string;
    if (live !== undefined) name = live;
    else {
      const body = recordBody(t, this.tenant, image, this.labels);
      const r = await this.upstream('POST', '/volumes/create', body);
      const labels = (r.json as { Labels?: Record<string, string> | null } | null)?.Labels;
      if (r.status >= 300 || labels?.[LABEL_WRITER] !== this.tenant)
        throw new Error(`cannot record the tag ${t} for the other guards (engine answered ${r.status})`);
      const list = this.mine.get(t) ?? [];
      list.push(body.Name);
      this.mine.set(t, list);
      this.imageOf.set(body.Name, image);
      name = body.Name;
    }
    return {
      keep: async () => {
        this.settled.add(name);
        const now = Date.now();
        for (const v of [...(this.mine.get(t) ?? [])]) {
          if (v === name) continue;
          const at = this.replacedAt.get(v);
          if (at === undefined) this.replacedAt.set(v, now);
          else if (at < now - RECORD_GRACE_MS) await this.remove(t, v);
        }
      },
      drop: async () => {
        // A record that was there before this write stays: it still says what the tag names.
        if (live === undefined) await this.remove(t, name);
      },
    };
  }

  /** This guard's record of `tag` on `image`, not replaced since, that the engine still has. */
  private async stillRecorded(tag: string, image: string): Promise<string | undefined> {
    // Only a record whose own write was kept (red-team pass 18: a write that reused a record still
    // under way lost it when that first write failed and dropped it).
    const v = (this.mine.get(tag) ?? []).find(
      (n) => this.imageOf.get(n) === image && this.settled.has(n) && !this.replacedAt.has(n),
    );
    if (v === undefined) return undefined;
    const r = await this.upstream('GET', `/volumes/${encodeURIComponent(v)}`);
    const labels = (r.json as { Labels?: Record<string, string> | null } | null)?.Labels;
    if (r.status === 200 && labels?.[LABEL_WRITER] === this.tenant && labels[LABEL_IMAGE] === image) return v;
    // Gone (someone pruned the engine's volumes): forgotten here too, and written again.
    if (r.status === 404) await this.remove(tag, v);
    return undefined;
  }

  /** Another tenant's record that makes `tag` (naming `image` now) its local image, if any. */
  async foreign(tag: string, image: string): Promise<TagRecord | undefined> {
    const r = await this.upstream('GET', `/volumes?filters=${encodeURIComponent(recordFilter(tag))}`);
    if (r.status !== 200) throw new Error(`cannot read the tag records (engine answered ${r.status})`);
    return foreignRecord(parseRecords(r.json), tag, image, this.tenant);
  }

  /**
   * Removes the records this guard wrote (at the tenant's cleanup, once its tags are gone), except
   * those of a name that still names the image recorded: a tag whose removal failed (dockerd keeps
   * an image's last tag while a container uses the image) stays marked as the tenant's.
   * `imageOf` answers what a tag names now.
   */
  async dropAll(imageOf: (tag: string) => Promise<string | undefined>): Promise<number> {
    let n = 0;
    for (const [t, vols] of [...this.mine]) {
      const now = await imageOf(t);
      for (const v of [...vols]) {
        const recorded = this.imageOf.get(v);
        if (now !== undefined && (recorded === now || recorded === ANY_IMAGE)) continue;
        if (await this.remove(t, v)) n++;
      }
    }
    return n;
  }

  /**
   * Writes again a record of this guard's that left the engine without this guard removing it
   * (the host pruned the engine's volumes, or removed it): until then, another tenant's guard
   * would take the tag as free. Same name, same fields. Answers whether it was one to restore.
   */
  async restore(volume: string): Promise<boolean> {
    const image = this.imageOf.get(volume);
    if (image === undefined || this.removing.has(volume)) return false;
    const tag = [...this.mine].find(([, vols]) => vols.includes(volume))?.[0];
    if (tag === undefined) return false;
    const r = await this.upstream(
      'POST',
      '/volumes/create',
      recordBody(tag, this.tenant, image, this.labels, volume),
    );
    if (r.status >= 300)
      throw new Error(`cannot write the record of the tag ${tag} again (engine answered ${r.status})`);
    return true;
  }

  /**
   * Writes again every record of this guard's that the engine no longer has (after a prune), and
   * answers how many. Prunes that come while a check runs share one more check after it (a tenant
   * pruning its volumes in a loop makes every guard on the engine look at its records).
   */
  restoreLost(): Promise<number> {
    if (this.lostCheck) {
      this.lostAgain = true;
      return this.lostCheck;
    }
    const run = async (): Promise<number> => {
      let n = 0;
      do {
        const started = Date.now();
        this.lostAgain = false;
        if (this.imageOf.size > 0) {
          // One list of this guard's records on the engine, not a look per record (red-team pass
          // 22: a tenant's empty prunes in a loop made every guard read each of its records).
          const r = await this.upstream('GET', `/volumes?filters=${encodeURIComponent(this.mineFilter())}`);
          if (r.status !== 200) throw new Error(`cannot list the tag records (engine answered ${r.status})`);
          const there = new Set(parseRecords(r.json).map((x) => x.volume));
          for (const volume of [...this.imageOf.keys()])
            if (!there.has(volume) && (await this.restore(volume))) n++;
        }
        // At most one check a second, however many prunes come.
        const wait = started + LOST_CHECK_MS - Date.now();
        if (this.checkAgain() && wait > 0) await new Promise((r) => setTimeout(r, wait));
        // A prune's event can come while the loop awaits (TypeScript reads the flag as still false).
      } while (this.checkAgain());
      return n;
    };
    this.lostCheck = run().finally(() => (this.lostCheck = undefined));
    return this.lostCheck;
  }
  /** The filter that lists this guard's tenant's records. */
  private mineFilter(): string {
    return JSON.stringify({ label: [`${LABEL_ROLE}=${RECORD_ROLE}`, `${LABEL_WRITER}=${this.tenant}`] });
  }
  private lostCheck: Promise<number> | undefined;
  private lostAgain = false;
  private checkAgain(): boolean {
    return this.lostAgain;
  }

  private async remove(tag: string, volume: string): Promise<boolean> {
    this.removing.add(volume);
    try {
      return await this.removeNow(tag, volume);
    } finally {
      this.removing.delete(volume);
    }
  }

  private async removeNow(tag: string, volume: string): Promise<boolean> {
    const r = await this.upstream('DELETE', `/volumes/${encodeURIComponent(volume)}`).catch(() => undefined);
    const gone = r !== undefined && (r.status < 300 || r.status === 404);
    if (gone) {
      this.imageOf.delete(volume);
      this.replacedAt.delete(volume);
      this.settled.delete(volume);
      const rest = (this.mine.get(tag) ?? []).filter((v) => v !== volume);
      if (rest.length === 0) this.mine.delete(tag);
      else this.mine.set(tag, rest);
    }
    return gone;
  }
}

/**
 * The tenant that set `ref` (naming `imageId` now) to an image of its own, for a reader outside
 * every tenant (the runner, picking a job's image): any tenant's record counts. `list` answers the
 * engine's volume list for a filter.
 */
export async function tagWriterOf(
  list: (filters: string) => Promise<unknown>,
  ref: string,
  imageId: string,
): Promise<string | undefined> {
  if (byIdOrDigest(ref)) return undefined;
  return foreignRecord(parseRecords(await list(recordFilter(ref))), ref, imageId, '')?.tenant;
}

/** The label filter of the records a tenant's guard wrote (`berth reap --tenant` looks at them). */
export function recordsOf(tenant: string): string[] {
  return [`${LABEL_ROLE}=${RECORD_ROLE}`, `${LABEL_WRITER}=${tenant}`];
}

/**
 * The tag and image a record's labels name, when they are a record's (for a reaper: a record
 * whose tag still names its image marks a tag that outlived its tenant's cleanup, and stays).
 */
export function recordedTag(
  labels: Readonly<Record<string, string>> | null | undefined,
): { tag: string; image: string } | undefined {
  if (!labels || labels[LABEL_ROLE] !== RECORD_ROLE || LABEL_TENANT in labels) return undefined;
  const tag = labels[LABEL_NAME];
  const image = labels[LABEL_IMAGE];
  return tag !== undefined && image !== undefined ? { tag, image } : undefined;
}
