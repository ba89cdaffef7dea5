/** The guard's worker thread (see thread.ts): starts the guard, closes it when told, then ends. */
import { parentPort, workerData } from 'node:worker_threads';
import { BerthError, errorMessage } from '../common/index.js';
import { createGuard } from './guard.js';
import type { FromGuardThread, GuardThreadOptions, ToGuardThread } from './thread.js';

const port = parentPort;
const send = (m: FromGuardThread) => port?.postMessage(m);
const failed = (err: unknown): FromGuardThread =>
  err instanceof BerthError
    ? { kind: 'failed', code: err.code, message: err.message, hint: err.hint }
    : { kind: 'failed', message: errorMessage(err) };

if (port) {
  try {
    const guard = await createGuard(workerData as GuardThreadOptions);
    // A failure nothing caught ends the guard in order: the tenant's objects are removed (unless
    // it keeps them), the host hears of it, and the thread ends.
    const fail = (err: unknown): void => {
      void guard
        .close()
        .catch(() => undefined)
        .finally(() => {
          send(failed(err));
          process.exit(1);
        });
    };
    process.on('uncaughtException', fail);
    process.on('unhandledRejection', fail);
    // The only message the host sends is `close` (ToGuardThread).
    port.once('message', (m: ToGuardThread) => {
      guard.close({ cleanup: m.cleanup }).then(
        () => send({ kind: 'closed' }),
        (err: unknown) => send(failed(err)),
      );
    });
    send({ kind: 'ready', address: guard.address });
  } catch (err) {
    send(failed(err));
    port.close();
  }
}
