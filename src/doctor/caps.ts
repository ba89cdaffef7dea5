/** Linux capabilities: bit numbers and names, and decoding of /proc/<pid>/status masks. Pure. */

export const CAPABILITIES = [
  'CHOWN',
  'DAC_OVERRIDE',
  'DAC_READ_SEARCH',
  'FOWNER',
  'FSETID',
  'KILL',
  'SETGID',
  'SETUID',
  'SETPCAP',
  'LINUX_IMMUTABLE',
  'NET_BIND_SERVICE',
  'NET_BROADCAST',
  'NET_ADMIN',
  'NET_RAW',
  'IPC_LOCK',
  'IPC_OWNER',
  'SYS_MODULE',
  'SYS_RAWIO',
  'SYS_CHROOT',
  'SYS_PTRACE',
  'SYS_PACCT',
  'SYS_ADMIN',
  'SYS_BOOT',
  'SYS_NICE',
  'SYS_RESOURCE',
  'SYS_TIME',
  'SYS_TTY_CONFIG',
  'MKNOD',
  'LEASE',
  'AUDIT_WRITE',
  'AUDIT_CONTROL',
  'SETFCAP',
  'MAC_OVERRIDE',
  'MAC_ADMIN',
  'SYSLOG',
  'WAKE_ALARM',
  'BLOCK_SUSPEND',
  'AUDIT_READ',
  'PERFMON',
  'BPF',
  'CHECKPOINT_RESTORE',
] as const;
export type Capability = (typeof CAPABILITIES)[number];

/** Decodes a hex capability mask (as in CapBnd) into capability names. */
export function decodeCapMask(hex: string): Capability[] {
  const mask = BigInt(`0x${hex.trim()}`);
  return CAPABILITIES.filter((_, bit) => (mask >> BigInt(bit)) & 1n);
}

/** Reads a capability line (CapBnd, CapEff, …) out of /proc/<pid>/status text. */
export function capLine(status: string, field: 'CapBnd' | 'CapEff' | 'CapPrm'): string | undefined {
  return new RegExp(`^${field}:\\s*([0-9a-fA-F]+)`, 'm').exec(status)?.[1];
}

/** Capabilities a privileged container would get that the host's bounding set lacks. */
export function missingCapabilities(bounding: readonly Capability[]): Capability[] {
  const have = new Set(bounding);
  return CAPABILITIES.filter((c) => !have.has(c));
}

/** Whether an engine error is runc refusing capabilities the host cannot grant. */
export function isCapsFailure(message: string): boolean {
  return /unable to apply caps|apply caps: operation not permitted/i.test(message);
}
