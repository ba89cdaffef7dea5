/** Public API of the runner: `berth run`, its events, its store, the reaper. */
import './modes.js';
export { runPipeline, selectJobs, effectiveNeeds, shouldRun } from './run.js';
export type { RunOptions, RunOutcome } from './run.js';
/** The runner's view of a pipeline (parsed and validated by src/pipeline). */
export {
  loadRunSpec,
  parseRunSpec,
  parseDuration,
  maskSecrets,
  fromPipeline,
  DEFAULT_IMAGE,
  DOCKER_MODES,
} from './spec.js';
export type { RunSpec, JobSpec, StepSpec, ServiceSpec, DockerSpec, DockerMode, When } from './spec.js';
/** Events and their shared text formatters (CLI, dashboard). */
export { formatters, formatEvent, formatDuration } from './events.js';
export type { RunEvent, RunEventKind, EventOf, JobStatus, RunStatus, StepStatus } from './events.js';
/** The run history (SQLite + log files) the server reads too. */
export { Store, openStore } from './store.js';
export type { RunRow, JobRow, StepRow } from './store.js';
/** Removal of leftovers of dead runners. */
export { reap, reapTenant, isStale, ofRunTenant } from './reaper.js';
export type { ReapOptions, ReapResult } from './reaper.js';
/** Plug-in point for the docker modes (guard, dind come from their subsystems). */
export { registerDockerAccess, hasDockerAccess } from './access.js';
export type { DockerAccess, DockerAccessContext, DockerAccessProvider } from './access.js';
export { defaultStoreDir, newRunId, objectName } from './paths.js';
