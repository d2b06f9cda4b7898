import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { errorEventData, type ResponseCode, sendJsonError, type WireCode } from '../common/wire-errors.ts';
import { endToEndHeaders } from './headers.ts';
import { EventBoundaryTracker } from './sse-boundary.ts';

const KEEPALIVE = Buffer.from(': keepalive\n\n');

export interface RelayLimits {
  heartbeatMs: number; // 0 = no heartbeat
  idleMs: number;
  maxDurationMs: number;
}

/** Why a relay ended early; `code` goes into the `event: error` data (or the JSON error's status) and the log. */
export interface RelayFailure {
  code: ResponseCode;
  message: string;
}

export function isEventStream(contentType: string | string[] | undefined): boolean {
  return /^\s*text\/event-stream\b/i.test(String(contentType ?? ''));
}

/** Cache-Control for an event stream: `no-cache` added, the function's directives (`no-transform`) kept. */
export function eventStreamCacheControl(upstream: string | string[] | undefined): string {
  const directives = String(upstream ?? '')
    .split(',')
    .map((d) => d.trim())
    .filter((d) => d !== '');
  if (!directives.some((d) => /^(no-cache|no-store)$/i.test(d))) directives.unshift('no-cache');
  return directives.join(', ');
}

/** The `event: error` block a failed event stream ends with. */
export function errorEvent(code: WireCode, message: string): string {
  return `event: error\ndata: ${errorEventData(code, message)}\n\n`;
}

/**
 * Relays one response from the function to the client as it arrives: every chunk is written
 * as soon as the socket read that brought it is processed (backpressure pauses the function;
 * nothing waits for more data). It also owns the stream's clock: idle limit, heartbeat and
 * max duration compare against the times of the last reads and writes (one assignment per
 * chunk), so a chunk never touches a timer.
 */
export class StreamRelay {
  readonly res: ServerResponse;
  readonly limits: RelayLimits;
  readonly startedAt = performance.now();
  /** When the first body byte (or the headers of an empty body) arrived, ms since start. */
  firstByteMs: number | undefined;
  bytes = 0;
  failure: RelayFailure | undefined;
  #tracker: EventBoundaryTracker | undefined;
  #upstream: IncomingMessage | undefined;
  #lastFromFunction = performance.now();
  #lastToClient = performance.now();
  #heartbeat = false;
  /** One timer per stream serves the idle limit, the heartbeat and the max duration. */
  #clock: NodeJS.Timeout;
  #done = false;
  #pending: Buffer[] = [];
  #headersOut = false;
  #onEvents: (count: number) => void;

  constructor(res: ServerResponse, limits: RelayLimits, onEvents: (count: number) => void) {
    this.res = res;
    this.limits = limits;
    this.#onEvents = onEvents;
    this.#clock = setTimeout(this.#tick, Math.min(limits.idleMs, limits.maxDurationMs));
    res.once('close', () => this.#stop());
  }

  get events(): number {
    return this.#tracker?.events ?? 0;
  }

  /** The function's response headers arrived: send them on at once, then relay the body. */
  start(upstream: IncomingMessage, extraHeaders: OutgoingHttpHeaders): void {
    if (this.#done) {
      upstream.destroy();
      return;
    }
    this.#upstream = upstream;
    this.#lastFromFunction = performance.now();
    const headers: OutgoingHttpHeaders = { ...endToEndHeaders(upstream.headers), ...extraHeaders };
    if (isEventStream(upstream.headers['content-type'])) {
      this.#tracker = new EventBoundaryTracker();
      headers['cache-control'] = eventStreamCacheControl(upstream.headers['cache-control']);
      headers['x-accel-buffering'] = 'no';
      if (this.limits.heartbeatMs > 0) {
        this.#heartbeat = true;
        clearTimeout(this.#clock);
        const { idleMs, maxDurationMs, heartbeatMs } = this.limits;
        this.#clock = setTimeout(this.#tick, Math.min(heartbeatMs, idleMs, maxDurationMs));
      }
    }
    this.res.writeHead(upstream.statusCode ?? 502, upstream.statusMessage, headers);
    // writeHead alone waits for the first body write, but the client should see the headers
    // now: they go out when this socket read is processed, with the first chunk if it came along.
    process.nextTick(this.#flush);
    this.#lastToClient = performance.now();

    upstream.on('data', (chunk: Buffer) => this.#relay(chunk));
    upstream.on('end', () => this.#finish());
    upstream.on('error', () => {}); // reported through 'close' below, with the cause
    upstream.on('close', () => {
      if (!upstream.complete) {
        this.fail({
          code: 'upstream_closed',
          message: 'the function closed the connection before the response was complete',
        });
      }
    });
  }

  /**
   * Ends the response early. Before headers: a JSON error with the code's status. On an event
   * stream: an `event: error` after the last complete event, then a clean end. Otherwise the
   * connection is cut, so the client can tell the body is incomplete.
   */
  fail(failure: RelayFailure): void {
    if (this.#done) return;
    this.failure = failure;
    this.#stop();
    this.#upstream?.destroy();
    const res = this.res;
    if (res.destroyed || res.writableEnded) return;
    if (!res.headersSent) {
      sendJsonError(res, failure.code, failure.message);
      return;
    }
    this.#flush(); // what the function wrote before failing still goes out
    if (!this.#tracker) {
      res.destroy();
      return;
    }
    // A partial event is closed first so the error event is parsed on its own.
    const separator = this.#tracker.atBoundary ? '' : '\n\n';
    res.end(separator + errorEvent(failure.code, failure.message));
  }

  #relay(chunk: Buffer): void {
    const now = performance.now();
    this.firstByteMs ??= now - this.startedAt;
    this.#lastFromFunction = now;
    this.#lastToClient = now;
    this.bytes += chunk.length;
    if (this.#tracker) {
      const completed = this.#tracker.push(chunk);
      if (completed > 0) this.#onEvents(completed);
    }
    // Chunks parsed from one socket read arrive in one synchronous burst; they leave in one
    // write when that burst is over (process.nextTick), so nothing waits for more data.
    if (this.#pending.push(chunk) === 1) process.nextTick(this.#flush);
  }

  #flush = (): void => {
    const pending = this.#pending;
    if (this.res.destroyed) return;
    if (pending.length === 0) {
      if (!this.#headersOut) this.res.flushHeaders();
      this.#headersOut = true;
      return;
    }
    this.#headersOut = true;
    this.#pending = [];
    if (!this.res.write(pending.length === 1 ? pending[0]! : Buffer.concat(pending))) {
      const upstream = this.#upstream!;
      upstream.pause();
      this.res.once('drain', () => upstream.resume());
    }
  };

  #finish(): void {
    if (this.#done) return;
    this.firstByteMs ??= performance.now() - this.startedAt;
    this.#stop();
    this.#flush();
    this.res.end();
  }

  /**
   * Checks the three clocks against the last write times (chunks only set a timestamp) and
   * re-arms for whichever comes due first.
   */
  #tick = (): void => {
    if (this.#done) return;
    const now = performance.now();
    const { idleMs, maxDurationMs, heartbeatMs } = this.limits;
    if (now - this.startedAt + 1 >= maxDurationMs) {
      this.fail({
        code: 'max_duration',
        message: `stream exceeded the maximum duration of ${maxDurationMs / 1000} s (--max-duration)`,
      });
      return;
    }
    if (now - this.#lastFromFunction + 1 >= idleMs) {
      this.fail({
        code: 'idle_timeout',
        message: `no data from the function for ${idleMs / 1000} s (--idle-timeout)`,
      });
      return;
    }
    let next = Math.min(this.#lastFromFunction + idleMs, this.startedAt + maxDurationMs);
    if (this.#heartbeat) {
      if (now - this.#lastToClient + 1 >= heartbeatMs) {
        // Mid-event (or a client that is not reading) a comment would corrupt or pile up: retry later.
        if (this.#tracker?.atBoundary && !this.res.writableNeedDrain) this.res.write(KEEPALIVE);
        this.#lastToClient = now;
      }
      next = Math.min(next, this.#lastToClient + heartbeatMs);
    }
    this.#clock = setTimeout(this.#tick, Math.max(1, next - now));
  };

  #stop(): void {
    if (this.#done) return;
    this.#done = true;
    clearTimeout(this.#clock);
  }
}
