/**
 * The catalogue of berth's coded errors. Every error berth raises on purpose is a BerthError with a
 * stable `code`, an HTTP `status` (used when the error answers an API client) and a process
 * `exitCode` (used when it ends the CLI). The CLI handles them once, at the top (src/cli/main.ts).
 */

export interface ErrorSpec {
  /** HTTP status when the error answers an API client. */
  readonly status: number;
  /** Process exit code when the error ends the CLI. */
  readonly exitCode: number;
  /** One line telling the user what to do about it. */
  readonly hint?: string;
}

export const ERRORS = {
  BERTH_USAGE: { status: 400, exitCode: 64, hint: 'run with --help for usage' },
  BERTH_CONFIG: { status: 400, exitCode: 78 },
  BERTH_INTERNAL: { status: 500, exitCode: 70 },
  BERTH_INTERRUPTED: { status: 499, exitCode: 130 },
  BERTH_TIMEOUT: { status: 504, exitCode: 124 },
  ENGINE_ENDPOINT: {
    status: 400,
    exitCode: 78,
    hint: 'DOCKER_HOST takes unix:///path, tcp://host[:port], http:// or https://',
  },
  ENGINE_UNREACHABLE: {
    status: 502,
    exitCode: 69,
    hint: 'start one with `berth engine up`, or point DOCKER_HOST at a running daemon',
  },
  ENGINE_HTTP: { status: 502, exitCode: 69 },
  ENGINE_PROTOCOL: { status: 502, exitCode: 69 },
  ENGINE_TLS: {
    status: 400,
    exitCode: 78,
    hint: 'DOCKER_CERT_PATH must hold ca.pem, cert.pem and key.pem',
  },
  BOOTSTRAP_UNSUPPORTED: { status: 500, exitCode: 69 },
  BOOTSTRAP_FAILED: { status: 500, exitCode: 69 },
  IMAGE_BUILD_FAILED: { status: 500, exitCode: 1 },
  GUARD_DENIED: { status: 403, exitCode: 1 },
  GUARD_NOT_FOUND: { status: 404, exitCode: 1 },
  GUARD_BAD_REQUEST: { status: 400, exitCode: 1 },
  GUARD_CONFLICT: { status: 409, exitCode: 1 },
  GUARD_UPSTREAM: { status: 502, exitCode: 69 },
  GUARD_POLICY: { status: 400, exitCode: 78 },
  DIND_START_FAILED: { status: 500, exitCode: 1 },
  DIND_CACHE_BUSY: { status: 409, exitCode: 75 },
  DIND_NOT_FOUND: { status: 404, exitCode: 1 },
  PIPELINE_INVALID: { status: 400, exitCode: 2 },
  PIPELINE_NOT_FOUND: { status: 404, exitCode: 2 },
  RUN_FAILED: { status: 500, exitCode: 1 },
  BENCH_INCOMPLETE: {
    status: 500,
    exitCode: 1,
    hint: 'the report lists what was not measured and why; rerun with --scenario/--contender to retry',
  },
  RUN_NOT_FOUND: { status: 404, exitCode: 1 },
  STORE_FAILED: { status: 500, exitCode: 1 },
  SERVER_UNAUTHORIZED: { status: 401, exitCode: 1 },
} as const satisfies Record<string, ErrorSpec>;

export type ErrorCode = keyof typeof ERRORS;

export interface BerthErrorOptions {
  cause?: unknown;
  /** Overrides the catalogue's hint. */
  hint?: string;
  /** Structured details for JSON output and logs. */
  details?: Record<string, unknown>;
}

export class BerthError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly exitCode: number;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: BerthErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BerthError';
    const spec: ErrorSpec = ERRORS[code];
    this.code = code;
    this.status = spec.status;
    this.exitCode = spec.exitCode;
    this.hint = options.hint ?? spec.hint;
    this.details = options.details;
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, hint: this.hint, details: this.details };
  }
}

export function isBerthError(err: unknown, code?: ErrorCode): err is BerthError {
  return err instanceof BerthError && (code === undefined || err.code === code);
}

/** The message of anything thrown, for logs. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
