/** Public API of the server subsystem: `berth serve` — webhooks, queue, API, dashboard, history. */
export { startServer } from './serve.js';
export type { ServeOptions, ServerHandle } from './serve.js';
export { ServerService, checkout, cpuPercent } from './service.js';
export type { ServerEvent } from './service.js';
export { ServerStore } from './store.js';
export type { JobRecord, LogLine, Project, Run, RunStatus, Sample, StepRecord, Trigger } from './store.js';
export { openPostgres, ensurePrivateDir, openSql, openSqlite, parseDbUrl } from './sql.js';
export { detectForge, isPushEvent, parsePush, verifySignature } from './webhooks.js';
export type { Forge, PushEvent } from './webhooks.js';
export { pickRunsToStart } from './schedule.js';
