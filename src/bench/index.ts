/** Public API of the bench subsystem: berth against raw socket, HAProxy, and nested daemons. */
export { defaultContenders, machineInfo, runBench, writeReport } from './run.js';
export type { ContenderFactory } from './run.js';
export { haproxyConfig, haproxyContender, rawContender, rssOf, stopChild, waitReady } from './contenders.js';
export { ALL_SCENARIOS } from './scenarios.js';
export { listProblems, rows, toMarkdown } from './report.js';
export type { BenchReport, MachineInfo, Row } from './report.js';
export { fmt, quantile, slope, summarize } from './stats.js';
export type { Summary } from './stats.js';
export type { BenchOptions, Contender, ContenderId, Measurement, Scenario } from './types.js';
export { benchLabels, reapBench } from './reap.js';
export type { BenchReapResult } from './reap.js';
