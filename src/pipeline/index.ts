/**
 * The pipeline file `berth.yml`: parsing and validation (every problem at once, with positions),
 * matrix expansion, the job DAG, step environments and secret masking.
 */
export * from './types.js';
export { parsePipeline, loadPipeline, PipelineError, formatProblems, parseDuration } from './parse.js';
export { plan } from './plan.js';
export type { Plan } from './plan.js';
export {
  stepEnvironment,
  matrixEnvironment,
  maskSecrets,
  gitInfo,
  resolveSecrets,
  MIN_SECRET_LENGTH,
} from './env.js';
export type { RunContext, GitInfo } from './env.js';
