/**
 * A guard in a worker thread of its own. The worker has its own V8 isolate, so its heap holds only
 * the guard: a host process with a heap of about 10 MB (the server; the CLI once its guard had
 * served a few thousand requests) would otherwise make V8 run a full mark-compact on almost every
 * scavenge while a build context streams through (see
 * docs/guard.md, "Performance notes"). The worker ends with its host process, as an in-process
 * guard would; the reaper handles what a killed process leaves.
 */
import { once } from 'node:events';
import { setFlagsFromString } from 'node:v8';
import { Worker } from 'node:worker_threads';
import { BerthError, errorMessage } from '../common/index.js';
import type { ErrorCode } from '../common/index.js';
import type { GuardHandle, GuardOptions } from './guard.js';

/** What a thread guard accepts: the guard's options that can cross to another thread. */
export type GuardThreadOptions = Omit<GuardOptions, 'audit'> & { audit?: string };

/** Messages between the host and the guard's worker. */
export type ToGuardThread = { kind: 'close'; cleanup?: boolean };
export type FromGuardThread =
  | { kind: 'ready'; address: string }
  | { kind: 'closed' }
  | { kind: 'failed'; code?: ErrorCode; message: string; hint?: string };

/** An error from the worker, as the host raises it (a BerthError keeps its code and hint). */
export function errorFromThread(m: Extract<FromGuardThread, { kind: 'failed' }>): Error {
  return m.code ? new BerthError(m.code, m.message, { hint: m.hint }) : new Error(m.message);
}

/**
 * The old generation's first collection limit for the isolates made after this (the guards'
 * workers; V8 reads it when it sets a heap up). V8 counts the external memory allocated since the
 * last full collection against that limit, and every piece of an upload is a fresh Buffer of
 * external memory: with V8's own start (a limit a few MB over a heap of about 8 MB), a guard that
 * had served a few thousand requests ran a full mark-compact every 20 MB or so of build context,
 * 28 of them in four 256 MiB uploads, against none with this. The limit is when V8 collects, not
 * memory it takes: most of a guard's garbage dies young and goes with scavenges.
 */
let heapConfigured = false;
function configureGuardHeaps(): void {
  if (heapConfigured) return;
  heapConfigured = true;
  setFlagsFromString(`--initial-old-space-size=${GUARD_OLD_SPACE_MB}`);
}
const GUARD_OLD_SPACE_MB = 64;

/** Starts a guard in a worker thread; resolves once its socket is listening. */
export async function startGuardThread(o: GuardThreadOptions): Promise<GuardHandle> {
  configureGuardHeaps();
  const ext = import.meta.url.endsWith('.ts') ? 'ts' : 'js';
  const entry = new URL(`./thread-main.${ext}`, import.meta.url);
  // Run from TypeScript sources (tests, `npm run berth`), the worker registers the loader first.
  const worker =
    ext === 'ts'
      ? new Worker(
          `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})` +
            `.then((tsx) => { tsx.register(); return import(${JSON.stringify(entry.href)}); })`,
          { eval: true, workerData: o },
        )
      : new Worker(entry, { workerData: o });
  const exit = once(worker, 'exit').then(([code]) => code as number);
  // A guard's thread that fails is that tenant's guard gone, never the process that hosts the
  // others (an error event nobody hears is thrown in the host: red-team pass 32).
  worker.on('error', (err) =>
    process.emitWarning(`berth guard ${o.tenant}: its thread failed: ${errorMessage(err)}`),
  );
  let exited = false;
  void exit.then(() => (exited = true));
  /** The worker's next message; an 'error' rejects it (once's own rule), and so does its end. */
  const next = (): Promise<FromGuardThread> =>
    Promise.race([
      once(worker, 'message').then(([m]) => m as FromGuardThread),
      exit.then((code) => {
        throw new BerthError('BERTH_INTERNAL', `the guard's thread ended (exit code ${code})`);
      }),
    ]);
  let first: FromGuardThread;
  try {
    first = await next();
  } catch (err) {
    await worker.terminate();
    throw err;
  }
  if (first.kind !== 'ready') {
    await worker.terminate();
    throw first.kind === 'failed'
      ? errorFromThread(first)
      : new BerthError('BERTH_INTERNAL', `the guard's thread sent ${first.kind} before ready`);
  }
  let closing: Promise<void> | undefined;
  const close = (opts: { cleanup?: boolean } = {}): Promise<void> => {
    closing ??= (async () => {
      if (exited) return;
      const answer = next();
      worker.postMessage({ kind: 'close', cleanup: opts.cleanup } satisfies ToGuardThread);
      const m = await answer.catch((err: unknown) => ({
        kind: 'failed' as const,
        message: errorMessage(err),
      }));
      // The guard is closed (or failed to): end the thread whatever handles it still holds.
      await worker.terminate();
      if (m.kind === 'failed') throw errorFromThread(m);
    })();
    return closing;
  };
  return { address: first.address, tenant: o.tenant, close, [Symbol.asyncDispose]: () => close() };
}
