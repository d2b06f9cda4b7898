import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../common/log.ts';
import { sendJsonError } from '../common/wire-errors.ts';
import { bearerToken, type TokenFile } from './auth.ts';
import { BodyTooLargeError, declaredLength, hasBody } from './body.ts';
import type { ProxyConfig } from './config.ts';
import type { H2Call } from './h2/call.ts';
import { grpcCallStatus, type H2Forwarder } from './h2/forwarder.ts';
import { pathOf, refusedTarget, stripPathPrefix } from './headers.ts';
import { type ConcurrencyLimiter, QueueTimeoutError, type Release } from './limiter.ts';
import { isMapPath, type MapService } from './map-service.ts';
import type { ProxyMetrics } from './metrics.ts';
import { normaliseTarget } from './path.ts';
import { watchRequestBody } from './request-timeouts.ts';
import { SilenceWatch } from './silence-watch.ts';
import { streamEndReason } from './stream-end.ts';
import { type RelayFailure, type RelayLimits, StreamRelay } from './stream-relay.ts';
import { FunctionCall, type FunctionCallOptions } from './upstream/function-call.ts';
import { UpstreamPool } from './upstream/pool.ts';

export interface PublicHandlerOptions {
  config: ProxyConfig;
  limiter: ConcurrencyLimiter;
  metrics: ProxyMetrics;
  log: Logger;
  tokens?: TokenFile;
  map?: MapService;
  /** Set with --upstream-protocol h2c: admitted requests go to the function over HTTP/2. */
  h2?: H2Forwarder;
}

/** One request on the public port, from arrival to the end of its response. */
interface Exchange {
  id: string;
  req: IncomingMessage;
  res: ServerResponse;
  /** performance.now() at arrival. */
  arrived: number;
  /** Aborts a wait for a concurrency slot; made only when the request has to wait. */
  queue?: AbortController;
  /** The concurrency slot, once granted. */
  release?: Release;
  /** StreamRelay for an HTTP/1.1 function; H2Call with --upstream-protocol h2c. */
  relay?: StreamRelay | H2Call;
  call?: FunctionCall;
  /** Set when the body went silent for --body-timeout and the request was answered 408. */
  bodyStalled?: boolean;
}

const REQUEST_ID = /^[\x21-\x7e]{1,200}$/;

const SHUTDOWN: RelayFailure = {
  code: 'shutdown',
  message: 'the proxy is shutting down (drain period over)',
};

/**
 * The public port: refuses what must not pass (non-origin-form targets, missing tokens, bodies
 * over --max-body), routes `/_sluice/*`, waits for a concurrency slot, and forwards the rest
 * to the function (FunctionCall over a pool of kept-alive connections), relaying the response
 * itself (StreamRelay); with --upstream-protocol h2c, over HTTP/2 (H2Forwarder).
 */
export class PublicHandler {
  readonly #options: PublicHandlerOptions;
  readonly #exchanges = new Map<IncomingMessage, Exchange>();
  readonly #pool: UpstreamPool;
  readonly #call: FunctionCallOptions;
  #draining = false;
  /** Set while draining: called when the last in-flight exchange closes. */
  #onAllClosed: (() => void) | undefined;
  // Shared by every stream: an idle stream should cost as little as possible.
  readonly #limits: RelayLimits;
  readonly #bodies: SilenceWatch;

  constructor(options: PublicHandlerOptions) {
    this.#options = options;
    const { config } = options;
    this.#limits = {
      heartbeatMs: config.heartbeat * 1000,
      idleMs: config.idleTimeout * 1000,
      maxDurationMs: config.maxDuration * 1000,
    };
    this.#bodies = new SilenceWatch(config.bodyTimeout * 1000);
    this.#pool = new UpstreamPool(new URL(config.upstream));
    this.#call = { pool: this.#pool, maxBody: config.maxBody, upstream: config.upstream };
  }

  get inFlight(): number {
    return this.#exchanges.size;
  }

  get draining(): boolean {
    return this.#draining;
  }

  /** Stops taking new requests; after `drainMs`, ends what is still in flight with a `shutdown` error. */
  async drain(drainMs: number): Promise<void> {
    this.#draining = true;
    if (this.#exchanges.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((resolve) => {
          this.#onAllClosed = resolve;
        }),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, drainMs);
        }),
      ]);
      clearTimeout(timer);
    }
    const ended = [...this.#exchanges.values()].map((exchange) => {
      const closed = new Promise<void>((resolve) => exchange.res.once('close', () => resolve()));
      exchange.queue?.abort(SHUTDOWN);
      if (exchange.relay) exchange.relay.fail(SHUTDOWN);
      else sendJsonError(exchange.res, SHUTDOWN.code, SHUTDOWN.message, { connection: 'close' });
      return closed;
    });
    // Let the final error events reach the clients before the sockets are closed.
    await Promise.race([Promise.all(ended), new Promise((resolve) => setTimeout(resolve, 2000).unref())]);
    this.#pool.close();
  }

  handle = (req: IncomingMessage, res: ServerResponse): void => {
    const exchange = this.#begin(req, res);
    this.#route(exchange).catch((err: unknown) => {
      if (exchange.bodyStalled) return; // answered 408 already; the reader saw the body cut off
      this.#options.log.error({ err, requestId: exchange.id }, 'request failed inside the proxy');
      if (exchange.relay) exchange.relay.fail({ code: 'internal', message: 'proxy error' });
      else sendJsonError(res, 'internal', 'proxy error');
    });
  };

  #begin(req: IncomingMessage, res: ServerResponse): Exchange {
    const given = req.headers['x-request-id'];
    const id = typeof given === 'string' && REQUEST_ID.test(given) ? given : randomUUID();
    // Every answer carries it: JSON errors read it from here, the relay and map set it on their
    // heads (not res.setHeader: that keeps a copy of every header for the life of a stream).
    req.headers['x-request-id'] = id;
    const arrived = performance.now();
    const exchange: Exchange = { id, req, res, arrived };
    this.#exchanges.set(req, exchange);
    // The one close listener of an exchange: everything it holds is let go here.
    res.once('close', () => {
      this.#exchanges.delete(req);
      if (this.#exchanges.size === 0) this.#onAllClosed?.();
      // A client that leaves while queued frees its place in the line.
      exchange.queue?.abort(new Error('client closed the connection'));
      exchange.release?.();
      if (exchange.relay instanceof StreamRelay) this.#closeStream(exchange, exchange.relay);
      this.#logFinished(exchange, performance.now() - arrived);
    });
    return exchange;
  }

  async #route(exchange: Exchange): Promise<void> {
    const { req, res } = exchange;
    const { config, tokens, map } = this.#options;
    if (this.#draining) {
      sendJsonError(res, 'shutting_down', 'the proxy is shutting down', { connection: 'close' });
      return;
    }
    const refused = refusedTarget(req.method, req.url);
    if (refused) {
      sendJsonError(res, 'bad_request_target', refused);
      return;
    }
    req.url = stripPathPrefix(normaliseTarget(req.url!), config.pathPrefix);
    // HTTP/1.1 bodies only: an HTTP/2 call's silence is bounded by its deadline (grpc-timeout,
    // --max-duration), and a connection's bytes say nothing about one of its streams.
    // Only a request that has a body (a bodiless GET is not complete yet either, here in its
    // 'request' handler): an idle stream costs no watch entry.
    if (req.httpVersionMajor === 1 && !req.complete && hasBody(req))
      res.once(
        'close',
        watchRequestBody(this.#bodies, req, res, () => this.#bodyStalled(exchange)),
      );
    const path = pathOf(req.url);
    if (tokens && !tokens.accepts(bearerToken(req))) {
      sendJsonError(res, 'unauthorized', 'a valid Authorization: Bearer token is required', {
        'www-authenticate': 'Bearer',
      });
      return;
    }
    if (path.startsWith('/_sluice/')) {
      if (!isMapPath(path)) sendJsonError(res, 'not_found', `no such path ${path}`);
      else if (!map) sendJsonError(res, 'map_disabled', 'map needs --nats (SLUICE_NATS)');
      else {
        res.setHeader('x-request-id', exchange.id);
        await map.handle(req, res, path);
      }
      return;
    }
    const declared = declaredLength(req);
    if (declared !== undefined && declared > config.maxBody) {
      sendJsonError(res, 'body_too_large', new BodyTooLargeError(config.maxBody).message);
      return;
    }
    const release = await this.#slot(exchange);
    if (!release) return;
    if (res.destroyed) {
      release();
      return;
    }
    exchange.release = release;
    if (this.#options.h2) {
      res.setHeader('x-request-id', exchange.id);
      exchange.relay = this.#options.h2.forward(req, res, {
        requestId: exchange.id,
        arrivedAt: exchange.arrived,
      });
    } else this.#forward(exchange);
  }

  /** The client stopped sending its body: answer 408, stop the function's request, free the slot. */
  #bodyStalled(exchange: Exchange): void {
    const failure: RelayFailure = {
      code: 'body_timeout',
      message: `the request body sent nothing for ${this.#options.config.bodyTimeout} s (--body-timeout)`,
    };
    exchange.bodyStalled = true;
    exchange.res.setHeader('connection', 'close'); // the rest of this body is not coming
    exchange.queue?.abort(failure);
    if (exchange.relay) exchange.relay.fail(failure);
    else sendJsonError(exchange.res, failure.code, failure.message);
    exchange.call?.abort();
  }

  /** Waits in FIFO order for a slot; answers 503 + Retry-After itself when none frees up. */
  async #slot(exchange: Exchange): Promise<Release | undefined> {
    const { config, limiter } = this.#options;
    try {
      const free = limiter.tryAcquire();
      if (free) return free;
      exchange.queue = new AbortController();
      return await limiter.acquire(config.queueTimeout * 1000, exchange.queue.signal);
    } catch (err) {
      if (err instanceof QueueTimeoutError) {
        sendJsonError(
          exchange.res,
          'queue_timeout',
          `all ${limiter.limit} slots stayed busy for ${config.queueTimeout} s (--concurrency, --queue-timeout)`,
          { 'retry-after': String(Math.max(1, Math.ceil(config.queueTimeout))) },
        );
      } else if (exchange.queue?.signal.reason === SHUTDOWN) {
        sendJsonError(exchange.res, SHUTDOWN.code, SHUTDOWN.message, { connection: 'close' });
      }
      return undefined;
    }
  }

  #forward(exchange: Exchange): void {
    const relay = new StreamRelay(exchange.res, this.#limits, this.#options.metrics);
    exchange.relay = relay;
    this.#options.metrics.streamsActive.inc();
    exchange.call = new FunctionCall(exchange.req, exchange.id, relay, this.#call);
  }

  /**
   * The client's connection closed: a stream cut short stops here, and the function is told
   * (http-proxy #1520). writableEnded, not writableFinished: an HTTP/2 client's response reports
   * its stream's, which a client's reset also finishes.
   */
  #closeStream(exchange: Exchange, relay: StreamRelay): void {
    const { res, call } = exchange;
    const { metrics } = this.#options;
    relay.stop();
    if (!res.writableEnded) call?.abort();
    metrics.streamsActive.dec();
    if (relay.bytes > 0) metrics.bytes.inc(relay.bytes);
  }

  #logFinished(exchange: Exchange, durationMs: number): void {
    const { res, relay } = exchange;
    const { metrics, log } = this.#options;
    const status = res.headersSent ? res.statusCode : 499; // 499: client left before any response
    metrics.requests.inc({ code: String(status) });
    const grpcStatus = grpcCallStatus(res, relay && 'grpcStatus' in relay ? relay.grpcStatus : undefined);
    if (grpcStatus) metrics.grpcCalls.inc({ grpc_code: grpcStatus });
    const reason = relay && streamEndReason(relay.failure?.code, !res.writableEnded);
    if (relay) {
      metrics.streamDuration.observe(durationMs / 1000);
      if (relay.firstByteMs !== undefined) metrics.timeToFirstByte.observe(relay.firstByteMs / 1000);
      if (reason) metrics.streamEnded(reason);
    }
    log.info(
      {
        requestId: exchange.id,
        method: exchange.req.method,
        path: exchange.req.url,
        // What the client (an ingress controller, mostly) spoke: 1.1 or 2.0.
        http: exchange.req.httpVersion,
        status,
        grpcStatus,
        ttfbMs: relay?.firstByteMs === undefined ? undefined : round(relay.firstByteMs),
        durationMs: round(durationMs),
        bytes: relay?.bytes ?? 0,
        events: relay?.events ?? 0,
        outcome: relay?.failure?.code ?? (res.writableEnded ? 'complete' : 'client_closed'),
        reason,
      },
      'request finished',
    );
  }
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
