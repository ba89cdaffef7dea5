export { BerthError, ERRORS, errorMessage, isBerthError } from './errors.js';
export type { BerthErrorOptions, ErrorCode, ErrorSpec } from './errors.js';
export * from './labels.js';
export { sleep, withTimeout, deadline } from './time.js';
export { ownerGone, ownerLabels, pidAlive } from './owner.js';
export { privateDirProblem } from './private.js';
