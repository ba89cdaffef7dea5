/**
 * Decodes request bodies the way dockerd's Go code does — object keys match struct fields
 * case-insensitively (with Go's folding of U+017F ſ to s and U+212A K to k), a repeated object
 * merges into the earlier one and otherwise the last duplicate wins, unknown keys are ignored, null
 * keeps what was there — into canonical field names, checking scalar types as Go would. The proxy forwards only the re-encoding of this canonical value. Pure.
 */
import { JObject, parseOrdered, toPlain } from './json.js';
import type { JValue } from './json.js';

export type Schema =
  | 'string'
  | 'bool'
  | 'int'
  | 'any'
  /** Docker's strslice.StrSlice: a JSON array of strings, or a single string meaning a one-element list. */
  | 'strslice'
  | { arr: Schema }
  | { map: Schema }
  | { obj: Record<string, Schema> };

export class BodyError extends Error {}

/** Go's field-name folding for ASCII field names. */
export function foldKey(k: string): string {
  return k
    .replace(/\u017f/g, 's')
    .replace(/\u212a/g, 'k')
    .toLowerCase();
}

function typeName(v: JValue): string {
  if (v instanceof JObject) return 'object';
  if (Array.isArray(v)) return 'array';
  return typeof v;
}

export const isRecord = (x: unknown): x is Record<string, unknown> =>
  typeof x === 'object' && x !== null && !Array.isArray(x);

/**
 * `prev` is what an earlier occurrence of the same field decoded to: Go decodes a repeated object
 * into the existing struct (fields merge) and a repeated map into the existing map (entries are
 * kept), while arrays and scalars are replaced.
 */
function decode(v: JValue, s: Schema, path: string, prev?: unknown): unknown {
  if (v === null) return undefined; // Go leaves the zero value
  const bad = (want: string): never => {
    throw new BodyError(`json: cannot unmarshal ${typeName(v)} into Go struct field ${path} of type ${want}`);
  };
  if (s === 'any') return toPlain(v);
  if (s === 'string') return typeof v === 'string' ? v : bad('string');
  if (s === 'bool') return typeof v === 'boolean' ? v : bad('bool');
  if (s === 'int') return typeof v === 'number' && Number.isInteger(v) ? v : bad('int64');
  if (s === 'strslice') {
    if (typeof v === 'string') return [v];
    if (!Array.isArray(v)) return bad('strslice.StrSlice');
    return v.map((x, i) => decode(x, 'string', `${path}[${i}]`) ?? '');
  }
  if ('arr' in s) {
    if (!Array.isArray(v)) return bad('[]');
    return v.map((x, i) => decode(x, s.arr, `${path}[${i}]`));
  }
  if ('map' in s) {
    if (!(v instanceof JObject)) return bad('map');
    const out: Record<string, unknown> = {};
    if (isRecord(prev)) {
      for (const [k, x] of Object.entries(prev))
        Object.defineProperty(out, k, { value: x, enumerable: true, writable: true, configurable: true });
    }
    for (const [k, x] of v.pairs) {
      const d = decode(x, s.map, `${path}.${k}`);
      Object.defineProperty(out, k, {
        value: d ?? (s.map === 'string' ? '' : null),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    }
    return out;
  }
  if (!(v instanceof JObject)) return bad('struct');
  const fields = new Map<string, string>();
  for (const name of Object.keys(s.obj)) fields.set(foldKey(name), name);
  const out: Record<string, unknown> = isRecord(prev) ? { ...prev } : {};
  for (const [k, x] of v.pairs) {
    const name = fields.get(foldKey(k));
    if (name === undefined) continue; // unknown: Go ignores it, so do we (and we do not forward it)
    const sub = s.obj[name] as Schema;
    const d = decode(x, sub, `${path}.${name}`, out[name]);
    // null keeps an earlier value. Go does that for plain values; for pointers, slices and maps it
    // clears them, so keeping the earlier value is the stricter reading (checked, and forwarded).
    if (d !== undefined) out[name] = d;
  }
  return out;
}

/** Parses one JSON value and decodes it against a schema, as Go would; null → undefined. */
function decodeText(text: string, schema: Schema, root: string): unknown {
  let parsed: JValue;
  try {
    parsed = parseOrdered(text);
  } catch (err) {
    throw new BodyError(`invalid JSON: ${(err as Error).message}`);
  }
  return parsed === null ? undefined : decode(parsed, schema, root);
}

/** Parses and canonicalises a JSON body against a schema. Empty body → `{}` (as dockerd treats it). */
export function canonicalize(body: string, schema: Schema, root: string): Record<string, unknown> {
  if (body.trim() === '') return {};
  return (decodeText(body, schema, root) ?? {}) as Record<string, unknown>;
}

const S = 'string' as const;
const B = 'bool' as const;
const I = 'int' as const;
const A = 'any' as const;
const strings = { arr: S } as const;
const strslice = 'strslice' as const;
const stringMap = { map: S } as const;
const HOST_CONFIG_ULIMITS: Schema = { arr: { obj: { Name: S, Soft: I, Hard: I } } };

const Resources: Record<string, Schema> = {
  CpuShares: I,
  Memory: I,
  CgroupParent: S,
  BlkioWeight: I,
  BlkioWeightDevice: A,
  BlkioDeviceReadBps: A,
  BlkioDeviceWriteBps: A,
  BlkioDeviceReadIOps: A,
  BlkioDeviceWriteIOps: A,
  CpuPeriod: I,
  CpuQuota: I,
  CpuRealtimePeriod: I,
  CpuRealtimeRuntime: I,
  CpusetCpus: S,
  CpusetMems: S,
  Devices: { arr: A },
  DeviceCgroupRules: strings,
  DeviceRequests: { arr: A },
  KernelMemory: I,
  KernelMemoryTCP: I,
  MemoryReservation: I,
  MemorySwap: I,
  MemorySwappiness: I,
  NanoCpus: I,
  OomKillDisable: B,
  Init: B,
  PidsLimit: I,
  Ulimits: HOST_CONFIG_ULIMITS,
  CpuCount: I,
  CpuPercent: I,
  IOMaximumIOps: I,
  IOMaximumBandwidth: I,
};

const Mount: Schema = {
  obj: {
    Target: S,
    Source: S,
    Type: S,
    ReadOnly: B,
    Consistency: S,
    BindOptions: A,
    VolumeOptions: {
      obj: { NoCopy: B, Labels: stringMap, DriverConfig: { obj: { Name: S, Options: stringMap } } },
    },
    TmpfsOptions: A,
  },
};

export const HOST_CONFIG: Schema = {
  obj: {
    ...Resources,
    Binds: strings,
    ContainerIDFile: S,
    LogConfig: { obj: { Type: S, Config: stringMap } },
    NetworkMode: S,
    PortBindings: A,
    RestartPolicy: A,
    AutoRemove: B,
    VolumeDriver: S,
    VolumesFrom: strings,
    Mounts: { arr: Mount },
    CapAdd: strslice,
    CapDrop: strslice,
    CgroupnsMode: S,
    Dns: strings,
    DnsOptions: strings,
    DnsSearch: strings,
    ExtraHosts: strings,
    GroupAdd: strings,
    IpcMode: S,
    Cgroup: S,
    Links: strings,
    OomScoreAdj: I,
    PidMode: S,
    Privileged: B,
    PublishAllPorts: B,
    ReadonlyRootfs: B,
    SecurityOpt: strings,
    StorageOpt: stringMap,
    Tmpfs: stringMap,
    UTSMode: S,
    UsernsMode: S,
    ShmSize: I,
    Sysctls: stringMap,
    Runtime: S,
    ConsoleSize: A,
    Isolation: S,
    MaskedPaths: strings,
    ReadonlyPaths: strings,
  },
};

const ENDPOINT: Schema = {
  obj: {
    IPAMConfig: A,
    Links: strings,
    Aliases: strings,
    // NetworkID and EndpointID are deliberately not in the schema, so never forwarded: dockerd's
    // getNetworkID prefers EndpointSettings.NetworkID over the network the request names (for
    // user-defined networks), which would attach to a network the guard never checked.
    Gateway: S,
    IPAddress: S,
    IPPrefixLen: I,
    IPv6Gateway: S,
    GlobalIPv6Address: S,
    GlobalIPv6PrefixLen: I,
    MacAddress: S,
    DriverOpts: stringMap,
  },
};

export const CONTAINER_CONFIG: Record<string, Schema> = {
  Hostname: S,
  Domainname: S,
  User: S,
  AttachStdin: B,
  AttachStdout: B,
  AttachStderr: B,
  ExposedPorts: A,
  Tty: B,
  OpenStdin: B,
  StdinOnce: B,
  Env: strings,
  Cmd: strslice,
  Healthcheck: {
    obj: { Test: strings, Interval: I, Timeout: I, StartPeriod: I, StartInterval: I, Retries: I },
  },
  ArgsEscaped: B,
  Image: S,
  Volumes: A,
  WorkingDir: S,
  Entrypoint: strslice,
  NetworkDisabled: B,
  MacAddress: S,
  OnBuild: strings,
  Labels: stringMap,
  StopSignal: S,
  StopTimeout: I,
  Shell: strslice,
};

/**
 * A build's `ulimits` query value (a JSON list of units.Ulimit, whose fields Go matches without
 * case, the last duplicate winning), decoded as dockerd decodes it: what the checks read, and what
 * is forwarded in place of the client's text (red-team pass 22: `{"Name":"nofile","NAME":"memlock"}`
 * was checked as nofile and applied as memlock). Null (the docker CLI's "none") is undefined.
 */
export function canonicalUlimits(text: string): unknown[] | undefined {
  return decodeText(text, HOST_CONFIG_ULIMITS, 'ulimits') as unknown[] | undefined;
}

export const SCHEMAS = {
  'container.create': {
    obj: {
      ...CONTAINER_CONFIG,
      HostConfig: HOST_CONFIG,
      NetworkingConfig: { obj: { EndpointsConfig: { map: ENDPOINT } } },
    },
  },
  'container.update': { obj: { ...Resources, RestartPolicy: A } },
  'exec.create': {
    obj: {
      AttachStdin: B,
      AttachStdout: B,
      AttachStderr: B,
      DetachKeys: S,
      Tty: B,
      Env: strings,
      Cmd: strings,
      Privileged: B,
      User: S,
      WorkingDir: S,
      ConsoleSize: A,
    },
  },
  'exec.start': { obj: { Detach: B, Tty: B, ConsoleSize: A } },
  'exec.resize': { obj: {} },
  'image.commit': { obj: CONTAINER_CONFIG },
  'network.create': {
    obj: {
      Name: S,
      CheckDuplicate: B,
      Driver: S,
      Scope: S,
      Internal: B,
      Attachable: B,
      Ingress: B,
      IPAM: {
        obj: {
          Driver: S,
          Config: {
            arr: { obj: { Subnet: S, IPRange: S, Gateway: S, AuxiliaryAddresses: { map: S } } },
          },
          Options: { map: S },
        },
      },
      EnableIPv6: B,
      Options: stringMap,
      Labels: stringMap,
      ConfigOnly: B,
      ConfigFrom: A,
    },
  },
  'network.connect': { obj: { Container: S, EndpointConfig: ENDPOINT } },
  'network.disconnect': { obj: { Container: S, Force: B } },
  'volume.create': {
    obj: { Name: S, Driver: S, DriverOpts: stringMap, Labels: stringMap, ClusterVolumeSpec: A },
  },
  auth: { obj: { username: S, password: S, email: S, serveraddress: S, identitytoken: S, registrytoken: S } },
} as const satisfies Record<string, Schema>;

export type SchemaRoute = keyof typeof SCHEMAS;
