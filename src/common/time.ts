import { setTimeout as delay } from 'node:timers/promises';
import { BerthError } from './errors.js';

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return delay(ms, undefined, signal ? { signal } : undefined);
}

/** Runs `fn` and fails with BERTH_TIMEOUT if it has not settled after `ms`. */
export async function withTimeout<T>(
  ms: number,
  what: string,
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const ac = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      ac.abort();
      reject(new BerthError('BERTH_TIMEOUT', `${what} did not finish within ${ms} ms`));
    }, ms);
  });
  try {
    return await Promise.race([fn(ac.signal), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A deadline helper for polling loops: `const left = deadline(5000); while (left() > 0) …`. */
export function deadline(ms: number): () => number {
  const end = Date.now() + ms;
  return () => end - Date.now();
}
