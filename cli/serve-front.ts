import {
  Agent,
  createServer,
  type Server as HttpServer,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http';
import { Http2ServerRequest } from 'node:http2';
import type { Server, Socket } from 'node:net';
import { forwardTo } from '../activator/forward.ts';
import { FunctionCrashed, type HoldSettings, holdRequest } from '../activator/hold.ts';
import { type Backend, pickWithRoom } from '../activator/pick.ts';
import { WaitingRoom } from '../activator/waiting-room.ts';
import { sendJsonError } from '../common/wire-errors.ts';
import { H2Call } from '../proxy/h2/call.ts';
import { createH2PublicServer, createPublicPort } from '../proxy/h2/public-port.ts';
import { UpstreamPool } from '../proxy/h2/upstream-pool.ts';

/** The front leaves limits to the replicas' proxies: it only relays. */
const PASS_THROUGH = {
  heartbeatMs: 0,
  idleMs: Number.POSITIVE_INFINITY,
  maxDurationMs: Number.POSITIVE_INFINITY,
  maxBodyBytes: Number.POSITIVE_INFINITY,
};
const NO_COUNTERS = { events: () => {}, messages: () => {} };

export interface FrontOptions {
  backends: readonly Backend[];
  /** How requests are held while no replica is ready (from the spec). */
  hold: HoldSettings;
  /** spec.scaling.concurrency: the streams one replica takes at once. */
  concurrency: number;
  /** More replicas may be started (below maxReplicas, autoscaling on). */
  canGrow?: () => boolean;
  /** Answers a request itself instead of forwarding it (map without NATS); true when it did. */
  intercept?: (req: IncomingMessage, res: ServerResponse) => boolean;
  /** A request is held now (no replica ready): the autoscaler should act at once. */
  onHeld?: () => void;
  /** Whether a request is load for the autoscaler (default: every one). */
  countsAsLoad?: (req: IncomingMessage) => boolean;
  /** A held request's first byte reached its client, this long after it arrived. */
  onColdStart?: (firstByteMs: number) => void;
  /** Why no replica will come up soon (every function crash-loops): held requests get 503 at once. */
  crashed?: () => string | undefined;
}

export interface Front {
  /** The listening port (HTTP/1.1 and h2c). */
  server: Server;
  /** Its HTTP/1.1 side, where HTTP/1.1 requests arrive. */
  http1: HttpServer;
  /** Requests held now (no replica ready). */
  room: WaitingRoom<Backend>;
  /** Hands held requests to replicas that can take them; call when readiness or load changes. */
  offer: () => void;
  /** Answers every held request with 503 function_crashed when `crashed` names a reason. */
  checkCrashed: () => void;
  closeAll: () => void;
}

/**
 * The front port of `sluice serve`: forwards each request to one replica's proxy and pipes the
 * response back chunk by chunk (headers flushed at once, no buffering, Nagle off), so an event
 * stream reaches the client as the proxy relays it. With no replica ready (at zero, or right
 * after start-up) it holds requests as the cluster's activator does (activator/hold.ts). Like the
 * proxy's, the port speaks h2c too: an HTTP/2 request (a gRPC call) goes on to the replica's
 * proxy over HTTP/2, one stream of a connection per replica, with its trailers, deadline and
 * cancellation.
 */
export function createFront(options: FrontOptions): Front {
  const agent = new Agent({ keepAlive: true });
  const pools = new Map<number, UpstreamPool>();
  const sockets = new Set<Socket>();
  const room = new WaitingRoom<Backend>();
  let turn = 0;
  const pick = () =>
    pickWithRoom(options.backends, options.concurrency, turn++, options.canGrow?.() ?? false);
  const offer = () =>
    room.offer(() => {
      const backend = pick();
      // Reserved at once, so one offer never hands every held request to the same replica.
      if (backend) backend.inFlight += 1;
      return backend;
    });
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (options.intercept?.(req, res)) return;
    const arrived = performance.now();
    let backend = room.size === 0 ? pick() : undefined; // first come, first served
    let started = false;
    let held = false;
    if (backend) {
      backend.inFlight += 1;
    } else {
      const crash = options.crashed?.();
      if (crash) return sendJsonError(res, 'function_crashed', crash, { 'retry-after': '1' });
      held = true;
      const holding = holdRequest(req, res, room, options.hold);
      // Once it is in the room, so the decision counts it.
      options.onHeld?.();
      const outcome = await holding;
      if (!outcome) return;
      ({ target: backend, started } = outcome);
    }
    const chosen = backend;
    const load = options.countsAsLoad?.(req) ?? true;
    if (load) {
      chosen.load += 1;
      chosen.peak = Math.max(chosen.peak, chosen.load);
    }
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      chosen.inFlight -= 1;
      if (load) chosen.load -= 1;
      offer();
    };
    res.on('close', release);
    if (res.destroyed) return release();
    if (req instanceof Http2ServerRequest) {
      let pool = pools.get(chosen.port);
      if (!pool) {
        pool = new UpstreamPool(`http://127.0.0.1:${chosen.port}`);
        pools.set(chosen.port, pool);
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
    forwardTo(
      req,
      res,
      { host: '127.0.0.1', port: chosen.port },
      {
        agent,
        started,
        unavailable: (err) =>
          sendJsonError(
            res,
            'replica_unavailable',
            `${chosen.name} did not answer (${err.code ?? err.message})`,
          ),
        firstByte: held ? () => options.onColdStart?.(performance.now() - arrived) : undefined,
      },
    );
  };
  const http1 = createServer({ noDelay: true }, handle);
  http1.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  const port = createPublicPort({
    http1,
    http2: createH2PublicServer(handle),
  });
  return {
    server: port.server,
    http1,
    room,
    offer,
    checkCrashed: () => {
      const crash = room.size > 0 ? options.crashed?.() : undefined;
      if (crash) room.fail(new FunctionCrashed(crash));
    },
    closeAll: () => {
      void port.close();
      for (const socket of sockets) socket.destroy();
      for (const pool of pools.values()) pool.close();
      agent.destroy();
    },
  };
}
