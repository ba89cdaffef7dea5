/**
 * Where the Docker Engine API is, decided the way the docker CLI decides it:
 * DOCKER_HOST (unix://, tcp://, http://, https://; default unix:///var/run/docker.sock),
 * DOCKER_TLS_VERIFY (any non-empty value: TLS and verify the server against ca.pem),
 * DOCKER_TLS (any non-empty value: TLS without verification, client cert if present),
 * DOCKER_CERT_PATH (default ~/.docker; ca.pem, cert.pem, key.pem) and DOCKER_API_VERSION (pin).
 */
import { readFileSync, existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { BerthError } from '../common/index.js';

export const DEFAULT_UNIX_SOCKET = '/var/run/docker.sock';
export const DEFAULT_TCP_PORT = 2375;
export const DEFAULT_TLS_PORT = 2376;

export interface TlsSettings {
  /** Verify the server certificate against `caFile` (DOCKER_TLS_VERIFY). */
  readonly verify: boolean;
  readonly certPath: string;
  readonly caFile: string;
  readonly certFile: string;
  readonly keyFile: string;
}

export type Endpoint =
  | { readonly kind: 'unix'; readonly socketPath: string; readonly url: string }
  | {
      readonly kind: 'tcp';
      readonly host: string;
      readonly port: number;
      readonly tls: TlsSettings | undefined;
      readonly url: string;
    };

export interface EndpointEnv {
  DOCKER_HOST?: string | undefined;
  DOCKER_TLS_VERIFY?: string | undefined;
  DOCKER_TLS?: string | undefined;
  DOCKER_CERT_PATH?: string | undefined;
  HOME?: string | undefined;
}

/** Parses a DOCKER_HOST-style address, with TLS settings from the environment. Pure. */
export function parseEndpoint(env: EndpointEnv = process.env): Endpoint {
  const raw = (env.DOCKER_HOST ?? '').trim();
  const verify = nonEmpty(env.DOCKER_TLS_VERIFY);
  const tlsOn = verify || nonEmpty(env.DOCKER_TLS);
  if (raw === '') return unixEndpoint(DEFAULT_UNIX_SOCKET);

  const m = /^([a-z][a-z0-9+.-]*):\/\/(.*)$/i.exec(raw);
  if (!m) {
    // The docker CLI treats a bare path as an error; so do we, with a hint.
    throw new BerthError('ENGINE_ENDPOINT', `DOCKER_HOST=${raw} has no scheme`, {
      hint: raw.startsWith('/') ? `did you mean unix://${raw}?` : `did you mean tcp://${raw}?`,
    });
  }
  const scheme = (m[1] ?? '').toLowerCase();
  const rest = m[2] ?? '';
  switch (scheme) {
    case 'unix': {
      const path = rest === '' ? DEFAULT_UNIX_SOCKET : rest;
      if (!path.startsWith('/')) {
        throw new BerthError('ENGINE_ENDPOINT', `DOCKER_HOST=${raw}: a unix socket path must be absolute`);
      }
      return unixEndpoint(path);
    }
    case 'tcp':
    case 'http':
    case 'https': {
      const useTls = scheme === 'https' || tlsOn;
      const { host, port } = splitHostPort(rest.replace(/\/+$/, ''), useTls, raw);
      const tls = useTls ? tlsSettings(env, verify) : undefined;
      return { kind: 'tcp', host, port, tls, url: `tcp://${formatHost(host)}:${port}` };
    }
    case 'ssh':
    case 'npipe':
    case 'fd':
      throw new BerthError(
        'ENGINE_ENDPOINT',
        `DOCKER_HOST=${raw}: the ${scheme}:// transport is not supported by berth`,
        {
          hint: 'use a unix socket or tcp:// (with DOCKER_TLS_VERIFY for TLS)',
        },
      );
    default:
      throw new BerthError('ENGINE_ENDPOINT', `DOCKER_HOST=${raw}: unknown scheme ${scheme}://`);
  }
}

function unixEndpoint(socketPath: string): Endpoint {
  return { kind: 'unix', socketPath, url: `unix://${socketPath}` };
}

function nonEmpty(v: string | undefined): boolean {
  return v !== undefined && v !== '';
}

function formatHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

function splitHostPort(hostport: string, tls: boolean, raw: string): { host: string; port: number } {
  const defaultPort = tls ? DEFAULT_TLS_PORT : DEFAULT_TCP_PORT;
  if (hostport.includes('/')) {
    throw new BerthError('ENGINE_ENDPOINT', `DOCKER_HOST=${raw}: a path after host:port is not supported`);
  }
  let host: string;
  let portText: string | undefined;
  if (hostport.startsWith('[')) {
    const end = hostport.indexOf(']');
    if (end < 0) throw new BerthError('ENGINE_ENDPOINT', `DOCKER_HOST=${raw}: unclosed [ in IPv6 address`);
    host = hostport.slice(1, end);
    const after = hostport.slice(end + 1);
    if (after !== '' && !after.startsWith(':')) {
      throw new BerthError('ENGINE_ENDPOINT', `DOCKER_HOST=${raw}: unexpected text after ]`);
    }
    portText = after === '' ? undefined : after.slice(1);
  } else {
    const idx = hostport.lastIndexOf(':');
    host = idx < 0 ? hostport : hostport.slice(0, idx);
    portText = idx < 0 ? undefined : hostport.slice(idx + 1);
  }
  if (host === '') host = '127.0.0.1';
  let port = defaultPort;
  if (portText !== undefined && portText !== '') {
    if (!/^\d{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) {
      throw new BerthError('ENGINE_ENDPOINT', `DOCKER_HOST=${raw}: invalid port ${portText}`);
    }
    port = Number(portText);
  }
  return { host, port };
}

function tlsSettings(env: EndpointEnv, verify: boolean): TlsSettings {
  const certPath = nonEmpty(env.DOCKER_CERT_PATH)
    ? (env.DOCKER_CERT_PATH as string)
    : join(env.HOME ?? homedir(), '.docker');
  return {
    verify,
    certPath,
    caFile: join(certPath, 'ca.pem'),
    certFile: join(certPath, 'cert.pem'),
    keyFile: join(certPath, 'key.pem'),
  };
}

export interface TlsMaterial {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  rejectUnauthorized: boolean;
}

/** Reads the certificate files named by the settings; missing files are an error only where needed. */
export function loadTlsMaterial(tls: TlsSettings): TlsMaterial {
  const read = (file: string, required: boolean): Buffer | undefined => {
    if (!existsSync(file)) {
      if (required) throw new BerthError('ENGINE_TLS', `TLS file ${file} does not exist`);
      return undefined;
    }
    return readFileSync(file);
  };
  const ca = read(tls.caFile, tls.verify);
  const cert = read(tls.certFile, false);
  const key = read(tls.keyFile, cert !== undefined);
  const material: TlsMaterial = { rejectUnauthorized: tls.verify };
  if (ca) material.ca = ca;
  if (cert) material.cert = cert;
  if (key) material.key = key;
  return material;
}

/** Formats an endpoint as a DOCKER_HOST value. */
export function endpointToDockerHost(ep: Endpoint): string {
  return ep.url;
}
