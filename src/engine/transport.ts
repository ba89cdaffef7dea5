/**
 * The thin HTTP transport under the engine client: node:http / node:https over a unix socket or TCP,
 * with keep-alive agents. berth keeps its own transport instead of docker-modem because the guard
 * needs byte-level control (raw bodies, hijacked connections with half-close, backpressure) and the
 * same transport serves the client and the proxy's upstream side. See docs/engine.md.
 */
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type { Endpoint, TlsMaterial } from './endpoint.js';
import { loadTlsMaterial } from './endpoint.js';
import { createExchange } from './exchange.js';
import type { Exchange } from './exchange.js';

export interface Transport {
  readonly endpoint: Endpoint;
  /** Options for http(s).request that reach the engine; `path` and method are the caller's. */
  requestOptions(): http.RequestOptions;
  /** http.request or https.request, as the endpoint needs. */
  request(options: http.RequestOptions): http.ClientRequest;
  /**
   * A new plain connection to the engine that reads into caller-given buffers (net's `onread`),
   * for byte-for-byte relays; absent for TLS endpoints.
   */
  connectRaw?: (onread: net.OnReadOpts) => net.Socket;
  /**
   * Small exchanges (answers that end, held whole) over a lean keep-alive pool, bypassing
   * node:http's per-request objects; absent for TLS endpoints.
   */
  exchange?: Exchange;
  /** Closes idle keep-alive sockets. */
  close(): void;
}

export function createTransport(endpoint: Endpoint): Transport {
  if (endpoint.kind === 'unix') {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
    const exchange = createExchange(() => net.connect({ path: endpoint.socketPath }));
    return {
      endpoint,
      requestOptions: () => ({ socketPath: endpoint.socketPath, agent, headers: { Host: 'docker' } }),
      request: (o) => http.request(o),
      connectRaw: (onread) => net.connect({ path: endpoint.socketPath, onread }),
      exchange,
      close: () => {
        agent.destroy();
        exchange.close();
      },
    };
  }
  const material: TlsMaterial | undefined = endpoint.tls ? loadTlsMaterial(endpoint.tls) : undefined;
  if (material) {
    const agent = new https.Agent({
      keepAlive: true,
      maxSockets: 64,
      ca: material.ca,
      cert: material.cert,
      key: material.key,
      rejectUnauthorized: material.rejectUnauthorized,
    });
    return {
      endpoint,
      requestOptions: () => ({ host: endpoint.host, port: endpoint.port, agent }),
      request: (o) => https.request(o),
      close: () => agent.destroy(),
    };
  }
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const exchange = createExchange(() => net.connect({ host: endpoint.host, port: endpoint.port }));
  return {
    endpoint,
    requestOptions: () => ({ host: endpoint.host, port: endpoint.port, agent }),
    request: (o) => http.request(o),
    connectRaw: (onread) => net.connect({ host: endpoint.host, port: endpoint.port, onread }),
    exchange,
    close: () => {
      agent.destroy();
      exchange.close();
    },
  };
}
