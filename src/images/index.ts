/** Public API of the images subsystem: the berth-local/* images, built from this machine's files. */
export { DOCKER_CLI, contextFromFiles, ensureLocalImages } from './build.js';
export type { BuildOptions, BuildResult } from './build.js';
export {
  DIND_PACKAGES,
  IMAGE_BUSYBOX,
  IMAGE_DIND,
  IMAGE_NAMES,
  IMAGE_TOOLS,
  LABEL_IMAGE_KEY,
  LOCAL_IMAGES,
  cacheKey,
  parseAptSources,
  parseLdd,
  pickMirror,
} from './recipes.js';
export type { AptSource, LocalImage } from './recipes.js';
