/** Public API of the dind subsystem: nested Docker daemons in sidecar containers. */
export { listDind, purgeCache, startDind, stopDind, UPSTREAM_DIND_IMAGE } from './dind.js';
export type { DindHandle, DindOptions, DindSummary } from './dind.js';
export {
  OWN_SOCKET_DIR_PREFIX,
  isOwnCacheLock,
  isOwnCacheVolume,
  isOwnSidecar,
  isOwnSocketDir,
  ownSidecarName,
  ownSocketDir,
  socketDirBase,
} from './ownership.js';
export {
  SOCKET_DIR_IN_CONTAINER,
  STORAGE_DRIVERS,
  classifyFailure,
  daemonJson,
  fallbackCaps,
  names as dindNames,
  startScript,
  validateName,
  validateOptions,
} from './config.js';
export type { FailureCause } from './config.js';
