/** Public API of the doctor subsystem: what this host can do, found by trying. */
export { CAPABILITIES, capLine, decodeCapMask, isCapsFailure, missingCapabilities } from './caps.js';
export type { Capability } from './caps.js';
export { DIND_IMAGE, runDoctor } from './doctor.js';
export { PROBE_IMAGE, fallbackHostConfig, hostBoundingSet, iptablesMode, probePrivileges } from './probe.js';
export type { PrivilegeReport, ProbeOutcome } from './probe.js';
export { reportRows, verdicts } from './report.js';
export type { DoctorReport, ModeVerdict } from './report.js';
