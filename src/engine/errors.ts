import { BerthError } from '../common/index.js';
import type { ErrorCode } from '../common/index.js';

export interface FailedRequest {
  readonly method: string;
  readonly path: string;
  readonly endpoint: string;
}

/**
 * A request the engine answered with an error status, or could not answer at all. Keeps the status
 * code, the daemon's own message and the request that failed.
 */
export class EngineError extends BerthError {
  readonly statusCode: number | undefined;
  readonly daemonMessage: string | undefined;
  readonly request: FailedRequest;

  constructor(
    code: Extract<ErrorCode, 'ENGINE_HTTP' | 'ENGINE_UNREACHABLE' | 'ENGINE_PROTOCOL'>,
    request: FailedRequest,
    opts: { statusCode?: number; daemonMessage?: string; cause?: unknown; message?: string } = {},
  ) {
    const what = `${request.method} ${request.path}`;
    const message =
      opts.message ??
      (code === 'ENGINE_HTTP'
        ? `engine answered ${opts.statusCode ?? '?'} to ${what}: ${opts.daemonMessage ?? '(no message)'}`
        : code === 'ENGINE_UNREACHABLE'
          ? `cannot reach the Docker engine at ${request.endpoint} (${what}): ${causeText(opts.cause)}`
          : `bad answer from the engine to ${what}: ${causeText(opts.cause)}`);
    super(code, message, {
      cause: opts.cause,
      details: { statusCode: opts.statusCode, daemonMessage: opts.daemonMessage, request },
    });
    this.name = 'EngineError';
    this.statusCode = opts.statusCode;
    this.daemonMessage = opts.daemonMessage;
    this.request = request;
  }
}

function causeText(cause: unknown): string {
  if (cause instanceof Error) {
    const code = (cause as NodeJS.ErrnoException).code;
    return code ? `${code} ${cause.message}` : cause.message;
  }
  return String(cause);
}

export function isNotFound(err: unknown): boolean {
  return err instanceof EngineError && err.statusCode === 404;
}

export function isConflict(err: unknown): boolean {
  return err instanceof EngineError && err.statusCode === 409;
}
