/**
 * The pipeline file `berth.yml`: parsing and validation (every problem at once, with positions),
 * matrix expansion, the job DAG, matrix variables and secret masking.
 */
export * from './types.js';
export { parsePipeline, loadPipeline, PipelineError, formatProblems, parseDuration } from './parse.js';
export { plan } from './plan.js';
export type { Plan } from './plan.js';
export { matrixEnvironment, maskSecrets, gitInfo, MIN_SECRET_LENGTH } from './env.js';
export type { GitInfo } from './env.js';
