/** Public API of the engine subsystem: where the Docker Engine API is, and a typed client for it. */
export {
  DEFAULT_TCP_PORT,
  DEFAULT_TLS_PORT,
  DEFAULT_UNIX_SOCKET,
  endpointToDockerHost,
  loadTlsMaterial,
  parseEndpoint,
} from './endpoint.js';
export type { Endpoint, EndpointEnv, TlsMaterial, TlsSettings } from './endpoint.js';
export {
  DockerClient,
  MAX_API_VERSION,
  MIN_API_VERSION,
  buildQuery,
  compareApiVersions,
  readAll,
} from './client.js';
export type { ClientOptions, PingResult, Query, QueryValue, RequestOptions } from './client.js';
export { EngineError, isConflict, isNotFound } from './errors.js';
export type { FailedRequest } from './errors.js';
export { createTransport } from './transport.js';
export { AnswerParser, ExchangeError, createExchange, requestBytes } from './exchange.js';
export type { Exchange, ExchangeAnswer, ExchangeRequest } from './exchange.js';
export type { Transport } from './transport.js';
export { FrameDecoder, JsonLines, demux, encodeFrame, followProgress } from './stream.js';
export type { Frame, ProgressMessage, StreamKind } from './stream.js';
export { containers, encodeFilters, exec, images, networks, readLogs, system, volumes } from './api.js';
export type {
  ContainerInspect,
  ContainerSummary,
  CreateContainerBody,
  ExecResult,
  Filters,
  ImageInspect,
  NetworkInspect,
  SystemInfo,
  VersionInfo,
  VolumeInspect,
} from './api.js';
export {
  APT_PACKAGES,
  aptInstall,
  defaultLayout,
  dockerdArgs,
  engineDown,
  engineStatus,
  engineUp,
  enginePaths,
} from './bootstrap.js';
export type {
  DownResult,
  EngineLayout,
  EnginePaths,
  EngineStatus,
  UpOptions,
  UpResult,
} from './bootstrap.js';
