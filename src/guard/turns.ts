/**
 * Operations that take turns, by key: each runs after the ones before it under the same key
 * (whether they succeeded or failed) and before the ones after it. Keys with nothing under way
 * are forgotten.
 */
export class Turns {
  private readonly last = new Map<string, Promise<unknown>>();

  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const run = (this.last.get(key) ?? Promise.resolve()).then(fn, fn);
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.last.set(key, settled);
    try {
      return await run;
    } finally {
      if (this.last.get(key) === settled) this.last.delete(key);
    }
  }

  /** Keys with an operation under way. */
  get size(): number {
    return this.last.size;
  }
}
