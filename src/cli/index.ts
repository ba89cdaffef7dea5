/** Public API of the cli subsystem: the entry point, for tests and embedding. */
export { handleError, main } from './main.js';
export { paint, table, useColor } from './output.js';
