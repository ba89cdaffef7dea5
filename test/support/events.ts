/**
 * Event replays for tests that check what a tenant's replay leaves out. dockerd keeps only its last
 * 256 events for `since` replays, so on a busy engine (other test files running beside this one)
 * the start of a window can be gone by the time it is read, and a check that something is absent
 * would then pass without meaning anything (or a control that something is present would fail).
 * `replayWindow` runs `act` in a window of its own, reads the window through the tenant's socket and
 * then straight from the engine, and runs again while the engine's own replay lacks what the test
 * needs to have been there.
 */
import { readAll } from '../../src/engine/index.js';
import type { DockerClient } from '../../src/engine/index.js';
import { send } from './rawhttp.js';
import type { RawResponse } from './rawhttp.js';

export interface EngineEvent {
  Type: string;
  Action: string;
  Actor: { ID: string; Attributes?: Record<string, string> };
  timeNano: number;
}

/** The events in a replay's body, one JSON object per line. */
export function parseEvents(text: string): EngineEvent[] {
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as EngineEvent);
}

/** A time as dockerd's `since`/`until` take it: seconds with a fraction. */
function seconds(ms: number): string {
  return (ms / 1000).toFixed(3);
}

export interface ReplayWindow<T> {
  /** The tenant's replay of the window, as its socket answered it. */
  tenant: RawResponse;
  events: EngineEvent[];
  /** The same window read straight from the engine, after the tenant's (so no later loss). */
  engine: EngineEvent[];
  /** What `act` returned in the try that counted. */
  made: T;
}

export async function replayWindow<T>(opts: {
  /** The tenant's socket (the guard's). */
  sock: string;
  /** The engine, read directly. */
  engine: DockerClient;
  /** Does what the window must hold; runs once per try. */
  act: () => Promise<T>;
  /** Whether the engine's own replay holds everything the test checks against. */
  complete: (engine: EngineEvent[], made: T) => boolean;
  /** Undoes a try that did not count (a name the next try would collide with). */
  discard?: (made: T) => Promise<void>;
  tries?: number;
}): Promise<ReplayWindow<T>> {
  const tries = opts.tries ?? 4;
  for (let i = 1; ; i++) {
    const since = seconds(Date.now() - 50);
    const made = await opts.act();
    // dockerd holds a replay open until `until`; a moment past the last action is enough.
    const until = seconds(Date.now() + 300);
    const tenant = await send(
      opts.sock,
      { path: `/v1.41/events?since=${since}&until=${until}` },
      { timeoutMs: 20_000 },
    );
    if (tenant.status !== 200) throw new Error(`tenant's replay: HTTP ${tenant.status} ${tenant.text}`);
    const direct = await opts.engine.request({ path: '/events', query: { since, until } });
    const engine = parseEvents((await readAll(direct)).toString('utf8'));
    if (opts.complete(engine, made)) return { tenant, events: parseEvents(tenant.text), engine, made };
    if (i >= tries)
      throw new Error(
        `the engine's own replay lacked the window's events ${tries} times (it keeps only its last 256; the engine is busy)`,
      );
    await opts.discard?.(made);
  }
}
