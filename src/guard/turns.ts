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

/**
 * Operations that may run side by side (shared) but never while one that must run alone
 * (exclusive) is under way; an exclusive one waits for the shared ones under way, and shared ones
 * that come after it wait for it.
 */
export class SharedTurns {
  private tail: Promise<void> = Promise.resolve();
  private readonly active = new Set<Promise<void>>();

  async shared<T>(fn: () => Promise<T>): Promise<T> {
    // Registered with no await between the last look at the tail and the registration: an
    // exclusive operation that comes later sees this one under way.
    for (let t = this.tail; ; t = this.tail) {
      await t;
      if (t === this.tail) break;
    }
    const run = (async () => fn())();
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.active.add(settled);
    try {
      return await run;
    } finally {
      this.active.delete(settled);
    }
  }

  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const before = this.tail;
    let release = (): void => undefined;
    this.tail = new Promise<void>((r) => (release = r));
    try {
      await before;
      while (this.active.size > 0) await Promise.all([...this.active]);
      return await fn();
    } finally {
      release();
    }
  }
}
