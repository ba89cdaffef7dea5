/**
 * The engine's image events, read for as long as the guard runs, so that the tenant's claims on
 * images and names end when what they name does. A claim is kept as "name → image ID"; a registry
 * image's ID is its content's digest, the same for whoever pulls it, so a claim that outlived its
 * image (deleted by the host, by another tenant, by the tenant by ID) would come back to life the
 * next time anyone pulled that name (a fourteenth attack pass: the tenant then re-tagged another
 * tenant's fresh pull to its own image, and its cleanup deleted the host's re-pulled image).
 *
 * The watch keeps one `/events` stream open (image events, and volume removals for the tag
 * records: see tagrecords.ts) and hands every event to the
 * guard in order. Before a decision that rests on a claim, `sync()` replays what the engine logged
 * since the last event the stream brought, up to now (dockerd keeps its last 256 events for such
 * replays; the live stream keeps the window small), and waits until every event was handled.
 */
import type { Readable } from 'node:stream';
import { JsonLines } from '../engine/index.js';

/** An image event as dockerd 20.10+ writes it (older fields `id`/`status` as fallbacks). */
export interface ImageEvent {
  Type?: string;
  Action?: string;
  status?: string;
  id?: string;
  Actor?: { ID?: string; Attributes?: Record<string, string> | null } | null;
  time?: number;
  timeNano?: number;
}

/** What the guard makes of an event; see imageEventEffect. */
export type ImageEventEffect =
  | { kind: 'gone'; id: string; atMs: number }
  | { kind: 'volumeGone'; name: string }
  | { kind: 'volumesPruned' }
  | { kind: 'untagged'; id: string }
  | { kind: 'written'; ref: string; atMs: number }
  | { kind: 'none' };

/**
 * The effect of an image event on claims (pure):
 * - `delete`: the image left the engine; every claim naming its ID ends.
 * - `untag`: one of the image's names went (the event does not say which): the claims naming the
 *   image are checked against the engine again.
 * - `tag` (the new name is `Attributes.name`) and `pull` (the name is the actor's ID): someone
 *   wrote a name; a settled claim on it older than the event ends (the tenant's own writes come
 *   before their claim settles: dockerd logs the event before it answers).
 */
export function imageEventEffect(ev: ImageEvent): ImageEventEffect {
  const action = ev.Action ?? ev.status ?? '';
  const actor = ev.Actor?.ID ?? ev.id ?? '';
  const atMs = eventMillis(ev);
  // A volume went (the tag records are volumes: a host that prunes the engine's volumes takes
  // them too, and the guard that wrote one writes it again). A prune logs one event that names no
  // volume; a removal, one per volume.
  if (ev.Type === 'volume') {
    if (action === 'prune') return { kind: 'volumesPruned' };
    return action === 'destroy' && actor !== '' ? { kind: 'volumeGone', name: actor } : { kind: 'none' };
  }
  switch (action) {
    case 'delete':
      return actor === '' ? { kind: 'none' } : { kind: 'gone', id: actor, atMs };
    case 'untag':
      return actor === '' ? { kind: 'none' } : { kind: 'untagged', id: actor };
    case 'tag': {
      const ref = ev.Actor?.Attributes?.name ?? '';
      return ref === '' ? { kind: 'none' } : { kind: 'written', ref, atMs };
    }
    case 'pull':
      return actor === '' ? { kind: 'none' } : { kind: 'written', ref: actor, atMs };
    default:
      return { kind: 'none' };
  }
}

/** An event's time in ms (timeNano when given: `time` has whole seconds only). */
export function eventMillis(ev: ImageEvent): number {
  if (typeof ev.timeNano === 'number' && ev.timeNano > 0) return ev.timeNano / 1e6;
  return (ev.time ?? 0) * 1000;
}

export interface ImageWatchDeps {
  /** GET `path` on the engine; the answer's body (JSON lines), or an error. */
  open(path: string): Promise<Readable>;
  /** Handles one event; events may come twice (a replay overlaps the stream). */
  handle(ev: ImageEvent): Promise<void>;
}

/**
 * Image events, and volumes' removals and prunes (a volume's other events, mounts at every
 * container start among them, are not read). Actions are filtered across types, so the image
 * actions read above and the volume's are named together (an image prune's event means nothing
 * here: its deletes come one by one).
 */
const FILTER = encodeURIComponent(
  JSON.stringify({
    type: ['image', 'volume'],
    event: ['delete', 'untag', 'tag', 'pull', 'destroy', 'prune'],
  }),
);

export class ImageWatch {
  /** The newest event time seen (ms), or when the watch began. */
  private last: number;
  private live: Readable | undefined;
  private closed = false;
  /** Read through a call: the loop below awaits, and close() may come meanwhile. */
  private isClosed(): boolean {
    return this.closed;
  }
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private readonly deps: ImageWatchDeps,
    now = Date.now(),
  ) {
    this.last = now;
  }

  /** Opens the live stream (again after it broke, from the last event seen). */
  start(): void {
    void this.run();
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      try {
        const body = await this.deps.open(`/events?since=${seconds(this.last - 1000)}&filters=${FILTER}`);
        if (this.isClosed()) {
          body.destroy();
          return;
        }
        this.live = body;
        await this.read(body);
      } catch {
        // the engine went away or restarted: read again from the last event seen
      }
      this.live = undefined;
      if (!this.isClosed()) await new Promise((r) => setTimeout(r, 1000).unref());
    }
  }

  private async read(body: Readable): Promise<void> {
    const lines = body.pipe(new JsonLines());
    body.once('error', (e) => lines.destroy(e));
    // Cut before its end (the watch closed, the engine went away): the reader stops too.
    body.once('close', () => {
      if (!body.readableEnded) lines.destroy(new Error('the engine’s event stream was cut'));
    });
    for await (const ev of lines) this.take(ev as ImageEvent);
  }

  private take(ev: ImageEvent): void {
    this.last = Math.max(this.last, eventMillis(ev));
    this.chain = this.chain.then(() => this.deps.handle(ev)).catch(() => undefined);
  }

  /** Every image event the engine logged up to now has been handled. */
  async sync(): Promise<void> {
    const until = Date.now();
    const body = await this.deps.open(
      `/events?since=${seconds(this.last - 1000)}&until=${seconds(until)}&filters=${FILTER}`,
    );
    await this.read(body);
    await this.chain;
  }

  close(): void {
    this.closed = true;
    this.live?.destroy();
  }
}

/** A time for dockerd's `since`/`until`: seconds with a fraction. */
function seconds(ms: number): string {
  return (Math.max(0, ms) / 1000).toFixed(6);
}
