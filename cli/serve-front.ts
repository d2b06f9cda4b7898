import {
  Agent,
  createServer,
  type Server as HttpServer,
  type IncomingMessage,
  request,
  type ServerResponse,
} from 'node:http';
import { Http2ServerRequest } from 'node:http2';
import type { Server, Socket } from 'node:net';
import { sendJsonError } from '../common/wire-errors.ts';
import { H2Call } from '../proxy/h2/call.ts';
import { createH2PublicServer, createPublicPort } from '../proxy/h2/public-port.ts';
import { UpstreamPool } from '../proxy/h2/upstream-pool.ts';
import { endToEndHeaders } from '../proxy/headers.ts';

/** The front leaves limits to the replicas' proxies: it only relays. */
const PASS_THROUGH = {
  heartbeatMs: 0,
  idleMs: Number.POSITIVE_INFINITY,
  maxDurationMs: Number.POSITIVE_INFINITY,
  maxBodyBytes: Number.POSITIVE_INFINITY,
};
const NO_COUNTERS = { events: () => {}, messages: () => {} };

export interface Backend {
  name: string;
  port: number;
  ready: boolean;
  inFlight: number;
}

/** Least requests in flight among ready backends; ties go round-robin so idle replicas share the load. */
export function pickBackend(backends: readonly Backend[], turn: number): Backend | undefined {
  const ready = backends.filter((b) => b.ready);
  const pool = ready.length > 0 ? ready : backends;
  let best: Backend | undefined;
  for (let i = 0; i < pool.length; i++) {
    const candidate = pool[(turn + i) % pool.length]!;
    if (!best || candidate.inFlight < best.inFlight) best = candidate;
  }
  return best;
}

export interface FrontOptions {
  backends: readonly Backend[];
  /** How long a request that arrives while no replica is ready waits for one (default 30 s). */
  readyWaitMs?: number;
  /** Answers a request itself instead of forwarding it (map without NATS); true when it did. */
  intercept?: (req: IncomingMessage, res: ServerResponse) => boolean;
  /** Why no replica will come up soon (every function crash-loops); a waiting request gets 503 at once. */
  crashed?: () => string | undefined;
}

/**
 * The front port of `sluice serve`: forwards each request to one replica's proxy and pipes the
 * response back chunk by chunk (headers flushed at once, no buffering, Nagle off), so an event
 * stream reaches the client as the proxy relays it. A client that leaves aborts the upstream
 * request, which the proxy passes on to the function. Like the proxy's, the port speaks h2c
 * too: an HTTP/2 request (a gRPC call) goes on to the replica's proxy over HTTP/2, one stream
 * of a connection per replica, with its trailers, deadline and cancellation.
 */
export function createFront(options: FrontOptions): {
  /** The listening port (both protocols). */
  server: Server;
  /** Its HTTP/1.1 side, where HTTP/1.1 requests arrive. */
  http1: HttpServer;
  closeAll: () => void;
} {
  const agent = new Agent({ keepAlive: true });
  const pools = new Map<number, UpstreamPool>();
  const sockets = new Set<Socket>();
  let turn = 0;
  const readyWaitMs = options.readyWaitMs ?? 30_000;
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (options.intercept?.(req, res)) return;
    // Right after start-up (or while every function restarts) a request waits for a replica
    // to turn ready, as the proxy's own queue would, instead of failing with a 502.
    const waited = await someReady(options.backends, readyWaitMs, res, options.crashed);
    if (waited !== 'ready') {
      if (res.destroyed) return;
      res.setHeader('retry-after', '1');
      if (waited !== 'timeout') return sendJsonError(res, 'function_crashed', waited.crashed);
      return sendJsonError(res, 'no_replica', `no replica became ready within ${readyWaitMs / 1000} s`);
    }
    const backend = pickBackend(options.backends, turn++);
    if (!backend) return sendJsonError(res, 'no_replica', 'no replica is running');
    backend.inFlight += 1;
    let released = false;
    const release = () => {
      if (!released) backend.inFlight -= 1;
      released = true;
    };
    if (req instanceof Http2ServerRequest) {
      res.once('close', release);
      let pool = pools.get(backend.port);
      if (!pool) {
        pool = new UpstreamPool(`http://127.0.0.1:${backend.port}`);
        pools.set(backend.port, pool);
      }
      const call = new H2Call(req, res, {
        pool,
        limits: PASS_THROUGH,
        counters: NO_COUNTERS,
        arrivedAt: performance.now(),
        unavailableCode: 'replica_unavailable',
      });
      void call.start();
      return;
    }
    const headers = endToEndHeaders(req.headers);
    const upstream = request({
      host: '127.0.0.1',
      port: backend.port,
      method: req.method,
      path: req.url,
      headers,
      agent,
    });
    upstream.on('socket', (socket) => socket.setNoDelay(true));
    upstream.on('response', (response: IncomingMessage) => {
      res.writeHead(response.statusCode ?? 502, endToEndHeaders(response.headers));
      res.flushHeaders();
      response.pipe(res);
      // The proxy ended the stream abruptly: end the client's the same way rather than cleanly.
      response.on('aborted', () => res.destroy());
      response.on('error', () => res.destroy());
    });
    upstream.on('error', (err: NodeJS.ErrnoException) => {
      release();
      if (res.headersSent) res.destroy(err);
      else
        sendJsonError(
          res,
          'replica_unavailable',
          `${backend.name} did not answer (${err.code ?? err.message})`,
        );
    });
    res.on('close', () => {
      release();
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
  };
  const http1 = createServer({ noDelay: true }, handle);
  http1.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  const port = createPublicPort({
    http1,
    http2: createH2PublicServer(handle),
    firstBytesTimeoutMs: 60_000,
  });
  return {
    server: port.server,
    http1,
    closeAll: () => {
      void port.close();
      for (const socket of sockets) socket.destroy();
      for (const pool of pools.values()) pool.close();
      agent.destroy();
    },
  };
}

/**
 * 'ready' once a backend is ready; 'timeout' after `timeoutMs` or when the client leaves; the
 * reason at once when `crashed` says no replica is coming.
 */
async function someReady(
  backends: readonly Backend[],
  timeoutMs: number,
  res: ServerResponse,
  crashed: () => string | undefined = () => undefined,
): Promise<'ready' | 'timeout' | { crashed: string }> {
  const deadline = Date.now() + timeoutMs;
  while (!backends.some((b) => b.ready)) {
    const reason = crashed();
    if (reason) return { crashed: reason };
    if (res.destroyed || Date.now() >= deadline) return 'timeout';
    // Readiness is polled by serve every few hundred ms; a short wait here costs nothing.
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return 'ready';
}
