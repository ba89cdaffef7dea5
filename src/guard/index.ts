/** Public API of the guard subsystem: a Docker API socket that is safe to hand to a CI job. */
export { TENANT_NAME, createGuard } from './guard.js';
export type { GuardHandle, GuardOptions } from './guard.js';
export { startGuardThread } from './thread.js';
export { nativeHelper } from './native.js';
export type { GuardThreadOptions } from './thread.js';
export { RULES, policyFor } from './policy-file.js';
export { DEFAULT_SAFE_SYSCTLS, defaultPolicy, translateJobPath } from './policy.js';
export { normalizeTag, tenantNetworkName, tenantSlug } from './ownership.js';
export { recordedTag, recordsOf, tagWriterOf } from './tagrecords.js';
export type { AuditRecord, Decision, PathMap, Policy, RuleName, TenantLimits } from './contracts.js';
