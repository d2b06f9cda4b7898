import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { errorEventData, type ResponseCode, sendJsonError, type WireCode } from '../common/wire-errors.ts';
import { EventBoundaryTracker } from './sse-boundary.ts';
import { ChunkScanner, chunk, LAST_CHUNK } from './upstream/chunked.ts';
import type { BodyFraming } from './upstream/response-head.ts';

const KEEPALIVE = ': keepalive\n\n';
const KEEPALIVE_BYTES = Buffer.from(KEEPALIVE);
const KEEPALIVE_CHUNK = chunk(KEEPALIVE);
const CRLF = 0x0d0a;

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

/** What the relay reports as it goes (the proxy's metrics). */
export interface RelayStats {
  eventsArrived(count: number, sincePrevious: number | undefined): void;
}

/** The function's side of a relay: paused while the client cannot take more, aborted when the relay fails. */
export interface UpstreamFlow {
  pause(): void;
  resume(): void;
  abort(): void;
}

/** A response head from the function, ready to go out. */
export interface RelayedHead {
  statusCode: number;
  statusMessage: string;
  /** End-to-end headers (no hop-by-hop ones). */
  headers: OutgoingHttpHeaders;
  framing: BodyFraming;
}

export function isEventStream(contentType: string | string[] | number | undefined): boolean {
  return /^\s*text\/event-stream\b/i.test(String(contentType ?? ''));
}

/** Cache-Control for an event stream: `no-cache` added, the function's directives (`no-transform`) kept. */
export function eventStreamCacheControl(upstream: string | string[] | number | undefined): string {
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
 * Where the data of the read being scanned lies (start, end, start, end...). One for every
 * relay: a read is scanned and written in one synchronous call, and an idle stream should hold
 * no array sized by its busiest read.
 */
const RANGES: number[] = [];

// How the body is delimited (numbers: type stripping has no enums).
const NONE = 0;
const CHUNKED = 1;
const LENGTH = 2;
const CLOSE = 3;

/**
 * Relays one response from the function to the client as it arrives: each socket read from
 * the function is written to the client at once, in one write, nothing coalesced or held.
 *
 * A chunked body going to an HTTP/1.1 client goes on its client's socket directly, one chunk
 * per read: a ChunkScanner finds where the data lies in the read (no parser runs over the
 * body), the event boundary tracker and the byte count see the data only, and the data of the
 * read leaves as one chunk (however many the function wrote), so the client parses one chunk
 * per read too. Between reads the client is always between two chunks: a `: keepalive` (a
 * chunk of its own) needs only to fall between two events, and a failure can always end the
 * body cleanly. Other bodies (a length, read to the end, or a client that cannot take chunks)
 * are written through ServerResponse.
 *
 * It also owns the stream's clock: idle limit, heartbeat and max duration compare against the
 * times of the last reads and writes (one assignment per read), so a read never touches a timer.
 */
export class StreamRelay {
  readonly res: ServerResponse;
  readonly limits: RelayLimits;
  readonly startedAt = performance.now();
  /** When the first body byte (or the headers of an empty body) arrived, ms since start. */
  firstByteMs: number | undefined;
  /** Body bytes relayed (data only, without chunk framing). */
  bytes = 0;
  events = 0;
  failure: RelayFailure | undefined;
  readonly #stats: RelayStats;
  #tracker: EventBoundaryTracker | undefined;
  #framing = NONE;
  /** LENGTH: body bytes still to come. */
  #remaining = 0;
  #scanner: ChunkScanner | undefined;
  /** CHUNKED: data bytes of the read being scanned (their places are in RANGES). */
  #rangeBytes = 0;
  /** The client's socket, when chunks are written to it directly. */
  #raw: Socket | undefined;
  #upstream: UpstreamFlow | undefined;
  #paused = false;
  /** The head has been handed to the socket (headersSent turns true earlier, at writeHead). */
  #headOut = false;
  #lastFromFunction = performance.now();
  #lastToClient = performance.now();
  #lastEventAt: number | undefined;
  #heartbeat = false;
  /** One timer per stream serves the idle limit, the heartbeat and the max duration. */
  #clock: NodeJS.Timeout;
  #done = false;
  /** Events completed in the read being handled. */
  #readEvents = 0;

  constructor(res: ServerResponse, limits: RelayLimits, stats: RelayStats) {
    this.res = res;
    this.limits = limits;
    this.#stats = stats;
    this.#clock = setTimeout(this.#tick, Math.min(limits.idleMs, limits.maxDurationMs));
  }

  get done(): boolean {
    return this.#done;
  }

  /** The request to the function that this relay answers with. */
  connect(upstream: UpstreamFlow): void {
    this.#upstream = upstream;
  }

  /**
   * The function's response head arrived: it goes out now, with the body bytes of the same read
   * if the caller passes them next (body() right after start(), in the same tick).
   */
  start(head: RelayedHead): void {
    if (this.#done) return;
    const { res, limits } = this;
    this.#lastFromFunction = performance.now();
    const headers = head.headers;
    if (isEventStream(headers['content-type'])) {
      this.#tracker = new EventBoundaryTracker();
      headers['cache-control'] = eventStreamCacheControl(headers['cache-control']);
      headers['x-accel-buffering'] = 'no';
      // A length the function may not honour is not passed on: the client gets the events framed
      // by the proxy (chunked, or up to the close for HTTP/1.0), so a stream cut short can still
      // end with a well-framed `event: error`, and heartbeats can go between events.
      delete headers['content-length'];
      if (limits.heartbeatMs > 0) {
        this.#heartbeat = true;
        clearTimeout(this.#clock);
        const { idleMs, maxDurationMs, heartbeatMs } = limits;
        this.#clock = setTimeout(this.#tick, Math.min(heartbeatMs, idleMs, maxDurationMs));
      }
    }
    const framing = head.framing;
    if (framing.kind === 'chunked') {
      this.#framing = CHUNKED;
      this.#scanner = new ChunkScanner();
      const socket = res.socket;
      // Written on the socket directly only when this response has the connection now (one
      // queued behind a pipelined response has none yet) and the client speaks HTTP/1.1 over it.
      if (socket && res.req.httpVersion === '1.1' && res.req.method !== 'HEAD') {
        this.#raw = socket;
        headers['transfer-encoding'] = 'chunked';
      }
    } else if (framing.kind === 'length') {
      this.#framing = LENGTH;
      this.#remaining = framing.length;
    } else if (framing.kind === 'close') {
      this.#framing = CLOSE;
    }
    // HTTP/2 has no reason phrase (Node warns when given one).
    res.writeHead(head.statusCode, res.req.httpVersionMajor === 1 ? head.statusMessage : undefined, headers);
    // The chunk framing comes from the function from here on: Node must not add its own.
    if (this.#raw) res.chunkedEncoding = false;
    this.#lastToClient = performance.now();
    if (this.#framing === NONE) this.#finish();
  }

  /**
   * Body bytes from the function: `buf` from `start`. Returns the index just past the end of the
   * body when this read completes it, else -1. Throws on bytes that break the chunk framing.
   */
  body(buf: Buffer, start: number): number {
    if (this.#done || start >= buf.length) return -1;
    const now = performance.now();
    this.firstByteMs ??= now - this.startedAt;
    this.#lastFromFunction = now;
    this.#lastToClient = now;
    this.#readEvents = 0;
    let end = -1;
    switch (this.#framing) {
      case CHUNKED: {
        RANGES.length = 0;
        this.#rangeBytes = 0;
        try {
          end = this.#scanner!.scan(buf, start, this);
        } finally {
          // What arrived before broken framing still goes out (then the caller fails the stream).
          this.#writeRead(buf, end !== -1);
        }
        break;
      }
      case LENGTH: {
        const take = Math.min(this.#remaining, buf.length - start);
        this.#remaining -= take;
        if (this.#remaining === 0) end = start + take;
        this.data(buf, start, start + take);
        break;
      }
      default: // CLOSE: everything until the function closes the connection
        if (start < buf.length) this.data(buf, start, buf.length);
        break;
    }
    if (this.#readEvents > 0) {
      this.#stats.eventsArrived(
        this.#readEvents,
        this.#lastEventAt === undefined ? undefined : (now - this.#lastEventAt) / 1000,
      );
      this.#lastEventAt = now;
    }
    if (end !== -1) this.#finish();
    return end;
  }

  /**
   * A range of body data (chunk framing removed): counted, followed by the event tracker, and
   * written (a chunked body's ranges are gathered and written once per read). The ChunkScanner's sink.
   */
  data(buf: Buffer, start: number, end: number): void {
    if (start === end) return;
    this.bytes += end - start;
    if (this.#tracker) {
      const completed = this.#tracker.push(buf, start, end);
      this.events += completed;
      this.#readEvents += completed;
    }
    if (this.#framing === CHUNKED) {
      RANGES.push(start, end);
      this.#rangeBytes += end - start;
    } else if (!this.#done) {
      this.#write(start === 0 && end === buf.length ? buf : buf.subarray(start, end));
    }
  }

  /** The data of one read of a chunked body, as one chunk (and the last chunk when the body ended). */
  #writeRead(buf: Buffer, last: boolean): void {
    const ranges = RANGES;
    const size = this.#rangeBytes;
    if (this.#done || (size === 0 && !last)) return;
    if (!this.#raw) {
      if (size > 0)
        this.#write(
          ranges.length === 2 ? buf.subarray(ranges[0], ranges[1]) : gather(buf, ranges, size, 0, 0),
        );
      return;
    }
    const sizeLine = size > 0 ? `${size.toString(16)}\r\n` : '';
    const tail = (size > 0 ? 2 : 0) + (last ? LAST_CHUNK.length : 0);
    const out = gather(buf, ranges, size, sizeLine.length, tail);
    out.write(sizeLine, 0, 'latin1');
    let at = sizeLine.length + size;
    if (size > 0) at = out.writeUInt16BE(CRLF, at);
    if (last) LAST_CHUNK.copy(out, at);
    this.#writeRaw(out);
  }

  /** Through ServerResponse, which frames it as the client needs. */
  #write(bytes: Buffer): void {
    this.#headOut = true;
    if (!this.res.write(bytes)) this.#pauseUpstream(this.res);
  }

  /** The function closed its connection: the end of a body read to the end, else a failure. */
  upstreamEnded(): void {
    if (this.#done) return;
    if (this.#framing === CLOSE) this.#finish();
    else
      this.fail({
        code: 'upstream_closed',
        message: 'the function closed the connection before the response was complete',
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
    this.#upstream?.abort();
    const res = this.res;
    if (res.destroyed || res.writableEnded) return;
    if (!res.headersSent) {
      sendJsonError(res, failure.code, failure.message);
      return;
    }
    const tracker = this.#tracker;
    if (!tracker) {
      res.destroy();
      return;
    }
    // A partial event is closed first so the error event is parsed on its own.
    const text = (tracker.atBoundary ? '' : '\n\n') + errorEvent(failure.code, failure.message);
    if (this.#raw) {
      // Between reads the client is between two chunks: the error goes as one, then the last.
      this.#writeRaw(Buffer.concat([chunk(text), LAST_CHUNK]));
      res.end();
    } else {
      res.end(text);
    }
  }

  /** Writes on the client's socket directly, the head first if it has not gone out yet. */
  #writeRaw(bytes: Buffer): void {
    if (bytes.length === 0) return;
    const socket = this.#raw!;
    if (this.#headOut) {
      if (!socket.write(bytes)) this.#pauseUpstream(socket);
      return;
    }
    // The head and the first bytes of the body leave in one write.
    this.#headOut = true;
    socket.cork();
    this.res.flushHeaders();
    socket.write(bytes);
    socket.uncork();
    if (socket.writableNeedDrain) this.#pauseUpstream(socket);
  }

  #pauseUpstream(writer: { once(event: 'drain', listener: () => void): unknown }): void {
    if (this.#paused) return;
    this.#paused = true;
    this.#upstream!.pause();
    writer.once('drain', () => {
      this.#paused = false;
      this.#upstream!.resume();
    });
  }

  /**
   * The read that carried the head has been handled: if it brought no body bytes, the head goes
   * out alone now, so the client has it while the function is silent.
   */
  flushHead(): void {
    if (this.#done || this.#headOut) return;
    this.#headOut = true;
    this.res.flushHeaders();
  }

  #finish(): void {
    if (this.#done) return;
    this.firstByteMs ??= performance.now() - this.startedAt;
    this.#stop();
    this.#headOut = true;
    this.res.end();
  }

  /**
   * Checks the three clocks against the last write times (reads only set a timestamp) and
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
        this.#heartbeatNow();
        this.#lastToClient = now;
      }
      next = Math.min(next, this.#lastToClient + heartbeatMs);
    }
    this.#clock = setTimeout(this.#tick, Math.max(1, next - now));
  };

  /** Mid-event, or to a client that is not reading, a comment would corrupt or pile up: retry later. */
  #heartbeatNow(): void {
    if (!this.#tracker?.atBoundary || !this.#headOut) return;
    const raw = this.#raw;
    if (raw) {
      if (!raw.writableNeedDrain) raw.write(KEEPALIVE_CHUNK);
    } else if (!this.res.writableNeedDrain) {
      this.res.write(KEEPALIVE_BYTES);
    }
  }

  /** The client left or the relay ended: no more timers. */
  stop(): void {
    this.#stop();
  }

  #stop(): void {
    if (this.#done) return;
    this.#done = true;
    clearTimeout(this.#clock);
  }
}

/** Copies the data ranges of `buf` into one new buffer, leaving `head` bytes before and `tail` after. */
function gather(buf: Buffer, ranges: number[], size: number, head: number, tail: number): Buffer {
  const out = Buffer.allocUnsafe(head + size + tail);
  let at = head;
  for (let i = 0; i < ranges.length; i += 2) at += buf.copy(out, at, ranges[i], ranges[i + 1]);
  return out;
}
