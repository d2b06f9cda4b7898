import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import {
  type ClientHttp2Stream,
  constants,
  Http2ServerRequest,
  Http2ServerResponse,
  type IncomingHttpHeaders,
} from 'node:http2';
import {
  formatGrpcTimeout,
  GRPC_STATUS,
  GrpcMessageTracker,
  isGrpcContentType,
  parseGrpcTimeout,
} from '../../common/grpc.ts';
import { grpcErrorTrailers, sendJsonError, WIRE_GRPC_STATUS } from '../../common/wire-errors.ts';
import { EventBoundaryTracker } from '../sse-boundary.ts';
import { errorEvent, eventStreamCacheControl, isEventStream, type RelayFailure } from '../stream-relay.ts';
import { downstreamHeaders, upstreamRequestHeaders } from './headers.ts';
import { UpstreamConnectError, type UpstreamPool } from './upstream-pool.ts';

const KEEPALIVE = Buffer.from(': keepalive\n\n');
const MAX_TIMER_MS = 2 ** 31 - 1;
/** After the proxy ends a call, how long a client that reads nothing may hold it before it is cut. */
const END_GRACE_MS = 10_000;

export type DownstreamRequest = IncomingMessage | Http2ServerRequest;
export type DownstreamResponse = ServerResponse | Http2ServerResponse;

/** What a call writes through: the part of ServerResponse and Http2ServerResponse that both have alike. */
interface Sink {
  readonly headersSent: boolean;
  readonly destroyed: boolean;
  readonly writableEnded: boolean;
  readonly writableNeedDrain: boolean;
  writeHead(status: number, headers: OutgoingHttpHeaders): unknown;
  write(chunk: Buffer | string): boolean;
  end(chunk?: string): unknown;
  addTrailers(trailers: OutgoingHttpHeaders): void;
  once(event: 'drain' | 'close', listener: () => void): unknown;
}

export interface CallLimits {
  heartbeatMs: number; // 0 = no heartbeat
  idleMs: number; // Infinity = no limit (sluice serve's front port leaves limits to the proxies)
  maxDurationMs: number;
  /** The largest request body (HTTP) or single request message (gRPC). */
  maxBodyBytes: number;
}

/** Counters a call reports to, as it goes (the proxy's metrics). */
export interface CallCounters {
  events: (count: number) => void;
  messages: (direction: 'to_function' | 'from_function', count: number) => void;
}

export interface CallContext {
  pool: UpstreamPool;
  limits: CallLimits;
  counters: CallCounters;
  /** Set on the response as x-request-id; undefined keeps the one from upstream. */
  requestId?: string;
  /** When the request reached the proxy (performance.now()): a grpc-timeout counts from there. */
  arrivedAt: number;
  /** The code when no connection to the upstream can be made (default upstream_unavailable). */
  unavailableCode?: 'upstream_unavailable' | 'replica_unavailable';
}

/**
 * One request forwarded to the function over HTTP/2 and its response relayed back, in both
 * directions as the bytes arrive: the request body (each gRPC message) goes on at once, the
 * response's headers go out as soon as they come, every chunk is written when its socket read
 * is processed, and the trailers (grpc-status, grpc-message, custom metadata) follow the last
 * byte. Both directions honour backpressure: a client that stops reading pauses the function's
 * stream (its HTTP/2 window closes), so what the proxy holds per call stays within the windows.
 * The call owns its clock (idle limit, heartbeat on event streams, --max-duration, and the
 * client's grpc-timeout) as StreamRelay does, with one timer re-armed from timestamps.
 */
export class H2Call {
  readonly req: DownstreamRequest;
  readonly res: DownstreamResponse;
  readonly #sink: Sink;
  readonly startedAt = performance.now();
  firstByteMs: number | undefined;
  /** Response body bytes relayed from the function. */
  bytes = 0;
  failure: RelayFailure | undefined;
  /** The call's grpc-status as the client got it (gRPC calls only). */
  grpcStatus: number | undefined;
  readonly grpc: boolean;
  readonly #ctx: CallContext;
  #upstream: ClientHttp2Stream | undefined;
  /** The function's trailers, kept until its last DATA frame has been relayed. */
  #trailers: IncomingHttpHeaders | undefined;
  readonly #waiting = new AbortController();
  #events: EventBoundaryTracker | undefined;
  #responseMessages: GrpcMessageTracker | undefined;
  readonly #requestMessages: GrpcMessageTracker | undefined;
  #requestBytes = 0;
  #lastActivity = performance.now();
  #lastToClient = performance.now();
  #deadlineAt = Number.POSITIVE_INFINITY;
  #clock: NodeJS.Timeout | undefined;
  #pending: Buffer[] = [];
  #headersOut = false;
  /** The proxy is done with the call: it ended the response, or the client or a failure ended it. */
  #done = false;
  /** The response was completed (not cut short). */
  #completed = false;

  constructor(req: DownstreamRequest, res: DownstreamResponse, ctx: CallContext) {
    this.req = req;
    this.res = res;
    this.#sink = res as Sink;
    this.#ctx = ctx;
    this.grpc = req instanceof Http2ServerRequest && isGrpcContentType(req.headers['content-type']);
    if (this.grpc) this.#requestMessages = new GrpcMessageTracker();
    res.once('close', this.#onClientClose);
  }

  /** SSE events or gRPC messages relayed from the function. */
  get events(): number {
    return this.#events?.events ?? this.#responseMessages?.messages ?? 0;
  }

  /** Opens the function's stream and relays in both directions until one side ends. */
  async start(): Promise<void> {
    const { req } = this;
    const { limits, pool } = this.#ctx;
    const headers = upstreamRequestHeaders({
      method: req.method ?? 'GET',
      url: req.url ?? '/',
      headers: req.headers,
      remoteAddress: req.socket?.remoteAddress,
    });
    if (this.grpc) {
      // The function gets what is left of the client's deadline (the wait for a slot came off
      // it), capped by --max-duration, so it can stop working when nobody will read the answer.
      const timeoutMs = parseGrpcTimeout(req.headers['grpc-timeout']);
      if (timeoutMs !== undefined) this.#deadlineAt = this.#ctx.arrivedAt + timeoutMs;
      const left = Math.min(this.#deadlineAt - performance.now(), limits.maxDurationMs);
      if (left <= 0) {
        this.fail({
          code: 'deadline_exceeded',
          message: 'the grpc-timeout ran out while waiting for a slot',
        });
        return;
      }
      headers['grpc-timeout'] = formatGrpcTimeout(left);
    }
    this.#arm();
    const endStream = !hasBody(req);
    let upstream: ClientHttp2Stream;
    try {
      upstream = await pool.request(
        headers,
        { endStream, waitForTrailers: !endStream },
        this.#waiting.signal,
      );
    } catch (err) {
      if (err instanceof UpstreamConnectError) {
        this.fail({
          code: this.#ctx.unavailableCode ?? 'upstream_unavailable',
          message: `${pool.origin} did not answer (${err.message})`,
        });
      }
      return; // otherwise the client left while waiting
    }
    if (this.#done) {
      upstream.close(constants.NGHTTP2_CANCEL);
      return;
    }
    this.#upstream = upstream;
    upstream.on('response', this.#onResponse);
    upstream.on('data', this.#onFunctionData);
    upstream.on('trailers', (trailers: IncomingHttpHeaders) => {
      this.#trailers = trailers;
    });
    upstream.on('end', this.#onFunctionEnd);
    upstream.on('error', () => {}); // reported through 'close', with the stream's reset code
    upstream.on('close', this.#onFunctionClose);
    upstream.on('frameError', this.#onFrameError);
    if (!endStream) this.#relayRequestBody(upstream);
  }

  /**
   * Ends the call early. Before the response started: the code's JSON error (a trailers-only
   * gRPC status for a gRPC call). After: a gRPC call ends with the code's status in its
   * trailers, an event stream with an `event: error`, any other body is cut (RST_STREAM, or the
   * connection on HTTP/1.1) so the client can tell it is incomplete.
   */
  fail(failure: RelayFailure): void {
    if (this.#done) return;
    this.#done = true;
    this.failure = failure;
    this.#finishClock();
    this.#waiting.abort(failure);
    this.#upstream?.close(constants.NGHTTP2_CANCEL);
    this.req.resume(); // a request body still coming is drained, not left to stall its window
    const res = this.#sink;
    if (res.destroyed || res.writableEnded) return;
    if (!res.headersSent) {
      if (this.grpc) this.grpcStatus = GRPC_STATUS[WIRE_GRPC_STATUS[failure.code]];
      sendJsonError(this.res, failure.code, failure.message);
      return;
    }
    this.#flush();
    if (this.grpc) {
      const trailers = grpcErrorTrailers(failure.code, failure.message);
      this.grpcStatus = Number(trailers['grpc-status']);
      res.addTrailers(trailers);
      this.#end();
    } else if (this.#events) {
      const separator = this.#events.atBoundary ? '' : '\n\n';
      this.#end(separator + errorEvent(failure.code, failure.message));
    } else {
      this.#cut(constants.NGHTTP2_INTERNAL_ERROR);
    }
  }

  #relayRequestBody(upstream: ClientHttp2Stream): void {
    const { req } = this;
    const { maxBodyBytes } = this.#ctx.limits;
    req.on('data', (chunk: Buffer) => {
      if (this.#done) return; // ended early: the rest of the body is read and dropped
      this.#lastActivity = performance.now();
      this.#requestBytes += chunk.length;
      if (this.#requestMessages) {
        const completed = this.#requestMessages.push(chunk);
        if (completed > 0) this.#ctx.counters.messages('to_function', completed);
        if (this.#requestMessages.largest > maxBodyBytes) {
          this.fail({
            code: 'body_too_large',
            message: `a request message of ${this.#requestMessages.largest} bytes is over the limit of ${maxBodyBytes} (--max-body)`,
          });
          return;
        }
      } else if (this.#requestBytes > maxBodyBytes) {
        this.fail({
          code: 'body_too_large',
          message: `request body is larger than the limit of ${maxBodyBytes} bytes (--max-body)`,
        });
        return;
      }
      if (!upstream.write(chunk)) {
        req.pause();
        upstream.once('drain', () => req.resume());
      }
    });
    req.once('end', () => {
      if (upstream.destroyed) return;
      upstream.once('wantTrailers', () => {
        const trailers = req.trailers && Object.keys(req.trailers).length > 0 ? req.trailers : {};
        upstream.sendTrailers(downstreamHeaders(trailers));
      });
      upstream.end();
    });
  }

  #onResponse = (headers: IncomingHttpHeaders, flags: number): void => {
    if (this.#done) return;
    const res = this.#sink;
    const status = Number(headers[':status'] ?? 502);
    const out = downstreamHeaders(headers);
    if (this.#ctx.requestId) out['x-request-id'] = this.#ctx.requestId;
    if (isEventStream(headers['content-type'])) {
      this.#events = new EventBoundaryTracker();
      out['cache-control'] = eventStreamCacheControl(headers['cache-control']);
      out['x-accel-buffering'] = 'no';
      this.#arm();
    } else if (isGrpcContentType(headers['content-type'])) {
      this.#responseMessages = new GrpcMessageTracker();
    }
    this.#lastActivity = performance.now();
    if (flags & constants.NGHTTP2_FLAG_END_STREAM) {
      // Headers that end the stream: a gRPC trailers-only response (the status is in them) or an
      // empty body. It leaves as one HEADERS frame again, which is what gRPC clients require.
      this.firstByteMs ??= performance.now() - this.startedAt;
      this.#recordStatus(headers);
      this.#completed = true;
      this.#finishClock();
      if (this.res instanceof Http2ServerResponse) {
        const { stream } = this.res;
        if (!stream.destroyed) stream.respond({ ...out, ':status': status }, { endStream: true });
      } else {
        res.writeHead(status, out);
        res.end();
      }
      return;
    }
    res.writeHead(status, out);
    // The client gets the headers now (gRPC initial metadata, an event stream's 200), with the
    // first chunk when it came in the same read.
    process.nextTick(this.#flush);
    this.#lastToClient = performance.now();
  };

  #onFunctionData = (chunk: Buffer): void => {
    const now = performance.now();
    this.firstByteMs ??= now - this.startedAt;
    this.#lastActivity = now;
    this.#lastToClient = now;
    this.bytes += chunk.length;
    if (this.#events) {
      const completed = this.#events.push(chunk);
      if (completed > 0) this.#ctx.counters.events(completed);
    } else if (this.#responseMessages) {
      const completed = this.#responseMessages.push(chunk);
      if (completed > 0) this.#ctx.counters.messages('from_function', completed);
    }
    // Chunks parsed from one socket read arrive in one synchronous burst and leave in one write.
    if (this.#pending.push(chunk) === 1) process.nextTick(this.#flush);
  };

  #flush = (): void => {
    const res = this.#sink;
    if (res.destroyed || res.writableEnded) return;
    const pending = this.#pending;
    if (pending.length === 0) {
      // HTTP/1.1 holds headers until the first write; HTTP/2's writeHead has sent them already.
      if (!this.#headersOut && !res.headersSent) (this.res as ServerResponse).flushHeaders();
      this.#headersOut = true;
      return;
    }
    this.#headersOut = true;
    this.#pending = [];
    if (!res.write(pending.length === 1 ? pending[0]! : Buffer.concat(pending))) {
      const upstream = this.#upstream;
      if (!upstream) return;
      upstream.pause();
      res.once('drain', () => upstream.resume());
    }
  };

  #onFunctionEnd = (): void => {
    if (this.#done) return;
    this.#completed = true;
    this.#finishClock();
    this.#flush();
    if (this.#trailers) {
      this.#recordStatus(this.#trailers);
      // Trailers leave after the last DATA frame: res.end() sends them once every byte before is out.
      this.#sink.addTrailers(downstreamHeaders(this.#trailers));
    }
    this.firstByteMs ??= performance.now() - this.startedAt;
    this.#end();
  };

  /** The function's stream closed: after 'end' that is normal; before it, the function reset it or its connection died. */
  #onFunctionClose = (): void => {
    if (this.#done) return;
    const upstream = this.#upstream!;
    const code = upstream.rstCode ?? constants.NGHTTP2_INTERNAL_ERROR;
    const connectionLost = upstream.session?.destroyed !== false;
    if (!this.res.headersSent || this.grpc === false || connectionLost || this.#events) {
      this.fail({
        code: this.res.headersSent ? 'upstream_closed' : 'upstream_unavailable',
        message: connectionLost
          ? 'the connection to the function closed mid-call'
          : `the function reset the stream (HTTP/2 error ${code})`,
      });
      return;
    }
    // A gRPC call the function reset after it started: the client gets the same reset (its
    // library maps the code to a status as it would have without the proxy).
    this.failure = {
      code: 'upstream_closed',
      message: `the function reset the stream (HTTP/2 error ${code})`,
    };
    this.#finishClock();
    this.#flush();
    this.#cut(code);
  };

  /** A frame the proxy could not send on the client's stream (trailers over the header limits): end it rather than hang. */
  #onFrameError = (): void => {
    if (!this.#done)
      this.fail({ code: 'internal', message: 'a frame from the function could not be relayed' });
  };

  #onClientClose = (): void => {
    if (this.#completed || this.failure) {
      this.#finishClock();
      return;
    }
    // The client left (or reset its stream): the function's stream is cancelled now, so the GPU
    // stops working for nobody; a gRPC server sees CANCELLED.
    this.#done = true;
    if (this.grpc && this.grpcStatus === undefined) this.grpcStatus = GRPC_STATUS.CANCELLED;
    this.#finishClock();
    this.#waiting.abort(new Error('client closed the stream'));
    this.#upstream?.close(constants.NGHTTP2_CANCEL);
  };

  #recordStatus(headers: IncomingHttpHeaders): void {
    const status = headers['grpc-status'];
    if (status !== undefined) this.grpcStatus = Number(status);
  }

  #end(last?: string): void {
    this.#done = true;
    this.#sink.end(last);
    // A client that reads nothing could hold a finished call (and its slot) forever.
    const timer = setTimeout(() => this.#cut(constants.NGHTTP2_CANCEL), END_GRACE_MS);
    timer.unref();
    this.res.once('close', () => clearTimeout(timer));
  }

  #cut(code: number): void {
    this.#done = true;
    const { res } = this;
    if (res.destroyed) return;
    if (res instanceof Http2ServerResponse) res.stream.close(code);
    else res.destroy();
  }

  // The clock: one timer checks --max-duration, the grpc-timeout, the idle limit and the
  // heartbeat against timestamps and re-arms for whichever comes due first.
  #arm(): void {
    clearTimeout(this.#clock);
    if (this.#done) return;
    const { idleMs, maxDurationMs, heartbeatMs } = this.#ctx.limits;
    const now = performance.now();
    let next = Math.min(this.#lastActivity + idleMs, this.startedAt + maxDurationMs, this.#deadlineAt);
    if (this.#events && heartbeatMs > 0) next = Math.min(next, this.#lastToClient + heartbeatMs);
    if (next === Number.POSITIVE_INFINITY) return; // no limits at all: no timer
    // setTimeout takes at most 2^31-1 ms (more fires at once); a later tick re-arms for the rest.
    this.#clock = setTimeout(this.#tick, Math.min(MAX_TIMER_MS, Math.max(1, next - now)));
  }

  #tick = (): void => {
    if (this.#done) return;
    const now = performance.now();
    const { idleMs, maxDurationMs, heartbeatMs } = this.#ctx.limits;
    if (now + 1 >= this.#deadlineAt) {
      this.fail({ code: 'deadline_exceeded', message: 'the call ran past its grpc-timeout' });
      return;
    }
    if (now - this.startedAt + 1 >= maxDurationMs) {
      this.fail({
        code: 'max_duration',
        message: `stream exceeded the maximum duration of ${maxDurationMs / 1000} s (--max-duration)`,
      });
      return;
    }
    if (now - this.#lastActivity + 1 >= idleMs) {
      this.fail({
        code: 'idle_timeout',
        message: `no data from the function or the client for ${idleMs / 1000} s (--idle-timeout)`,
      });
      return;
    }
    if (this.#events && heartbeatMs > 0 && now - this.#lastToClient + 1 >= heartbeatMs) {
      // Only between two events, and never onto a client that is not reading.
      if (this.#events.atBoundary && this.#pending.length === 0 && !this.#sink.writableNeedDrain) {
        this.#sink.write(KEEPALIVE);
      }
      this.#lastToClient = now;
    }
    this.#arm();
  };

  #finishClock(): void {
    clearTimeout(this.#clock);
    this.#clock = undefined;
  }
}

/** Whether the request has a body to forward (HTTP/2: no END_STREAM on its headers; HTTP/1.1: a length or chunks). */
function hasBody(req: DownstreamRequest): boolean {
  if (req instanceof Http2ServerRequest) return !req.stream.endAfterHeaders;
  const length = req.headers['content-length'];
  if (length !== undefined) return length !== '0';
  return req.headers['transfer-encoding'] !== undefined;
}
