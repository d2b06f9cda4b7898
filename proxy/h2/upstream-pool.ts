import {
  type ClientHttp2Session,
  type ClientHttp2Stream,
  type ClientSessionRequestOptions,
  connect,
  type OutgoingHttpHeaders,
  type SecureClientSessionOptions,
} from 'node:http2';
import { SluiceError } from '../../common/errors.ts';

export class UpstreamConnectError extends SluiceError {
  constructor(origin: string, cause: unknown) {
    const code = (cause as NodeJS.ErrnoException | undefined)?.code ?? 'ERR_HTTP2_SESSION';
    super('ERR_UPSTREAM_CONNECT', `no HTTP/2 connection to ${origin} (${code})`, { cause });
  }
}

export class UpstreamWaitAbortedError extends SluiceError {
  constructor(reason: unknown) {
    super('ERR_UPSTREAM_WAIT_ABORTED', 'left before a stream to the function was free', { cause: reason });
  }
}

interface PooledSession {
  session: ClientHttp2Session;
  /** Streams open on it now. */
  open: number;
  /** Settled once the function's SETTINGS arrived (its stream limit is known) or the connection failed. */
  ready: Promise<void>;
  /** No new streams: a GOAWAY arrived or the connection closed. */
  retired: boolean;
}

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

export interface UpstreamPoolOptions {
  /** Most connections to the function at once; beyond them a request waits for a free stream. */
  maxSessions?: number;
  connectTimeoutMs?: number;
  /** Session options for node:http2's connect (settings, header limits). */
  session?: SecureClientSessionOptions;
}

/**
 * HTTP/2 connections to the function (`--upstream-protocol h2c`), shared by every call: each
 * call is one stream, multiplexed on one connection while the function's
 * SETTINGS_MAX_CONCURRENT_STREAMS allows, on another (up to `maxSessions`) when it does not,
 * and waiting in FIFO order for a stream to close when all are full. A connection that fails
 * or is told to go away takes no new streams; the next call opens a fresh one.
 */
export class UpstreamPool {
  readonly origin: string;
  readonly #maxSessions: number;
  readonly #connectTimeoutMs: number;
  readonly #sessionOptions: SecureClientSessionOptions;
  readonly #sessions: PooledSession[] = [];
  readonly #waiters: Waiter[] = [];
  #closed = false;

  constructor(origin: string, options: UpstreamPoolOptions = {}) {
    this.origin = origin;
    this.#maxSessions = options.maxSessions ?? 4;
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 5000;
    this.#sessionOptions = options.session ?? {};
  }

  /** Connections now open (for tests and logs). */
  get sessions(): number {
    return this.#sessions.length;
  }

  /**
   * Opens a stream to the function as soon as one is allowed. Rejects with UpstreamConnectError
   * when no connection can be made, UpstreamWaitAbortedError when `signal` aborts the wait.
   */
  async request(
    headers: OutgoingHttpHeaders,
    options: ClientSessionRequestOptions,
    signal?: AbortSignal,
  ): Promise<ClientHttp2Stream> {
    for (;;) {
      if (this.#closed) throw new UpstreamConnectError(this.origin, new Error('pool closed'));
      if (signal?.aborted) throw new UpstreamWaitAbortedError(signal.reason);
      const pooled = this.#withRoom() ?? this.#open();
      if (!pooled) {
        await this.#wait(signal);
        continue;
      }
      await pooled.ready;
      if (pooled.retired || pooled.open >= this.#limit(pooled)) continue; // raced: look again
      pooled.open++;
      let stream: ClientHttp2Stream;
      try {
        stream = pooled.session.request(headers, options);
      } catch (err) {
        pooled.open--;
        this.#retire(pooled);
        throw new UpstreamConnectError(this.origin, err);
      }
      stream.once('close', () => {
        pooled.open--;
        this.#wakeOne();
      });
      return stream;
    }
  }

  close(): void {
    this.#closed = true;
    for (const pooled of this.#sessions.splice(0)) pooled.session.destroy();
    for (const waiter of this.#waiters.splice(0))
      waiter.reject(new UpstreamConnectError(this.origin, new Error('pool closed')));
  }

  #limit(pooled: PooledSession): number {
    return pooled.session.remoteSettings.maxConcurrentStreams ?? Number.POSITIVE_INFINITY;
  }

  #withRoom(): PooledSession | undefined {
    // The busiest connection with room first, so calls share a connection and spares close idle.
    let best: PooledSession | undefined;
    for (const pooled of this.#sessions) {
      if (pooled.retired || pooled.open >= this.#limit(pooled)) continue;
      if (!best || pooled.open > best.open) best = pooled;
    }
    return best;
  }

  #open(): PooledSession | undefined {
    if (this.#sessions.length >= this.#maxSessions) return undefined;
    const session = connect(this.origin, this.#sessionOptions);
    const pooled: PooledSession = { session, open: 0, retired: false, ready: Promise.resolve() };
    this.#sessions.push(pooled);
    pooled.ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => fail(new Error(`no SETTINGS within ${this.#connectTimeoutMs} ms`)),
        this.#connectTimeoutMs,
      );
      const fail = (err: Error) => {
        clearTimeout(timer);
        this.#retire(pooled);
        session.destroy();
        reject(new UpstreamConnectError(this.origin, err));
      };
      session.once('remoteSettings', () => {
        clearTimeout(timer);
        resolve();
      });
      session.once('error', fail);
      session.once('close', () => fail(new Error('connection closed')));
    });
    pooled.ready.catch(() => {}); // the callers waiting on it see the rejection
    session.on('error', () => {}); // reported to the calls through their streams
    session.once('goaway', () => this.#retire(pooled));
    session.once('close', () => this.#retire(pooled));
    return pooled;
  }

  #retire(pooled: PooledSession): void {
    if (pooled.retired) return;
    pooled.retired = true;
    const at = this.#sessions.indexOf(pooled);
    if (at >= 0) this.#sessions.splice(at, 1);
    // Graceful: streams open on it finish; the connection closes after the last one.
    if (!pooled.session.destroyed) pooled.session.close();
    this.#wakeOne();
  }

  #wait(signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const at = this.#waiters.indexOf(waiter);
        if (at >= 0) this.#waiters.splice(at, 1);
        reject(new UpstreamWaitAbortedError(signal?.reason));
      };
      const waiter: Waiter = {
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
        reject,
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  #wakeOne(): void {
    this.#waiters.shift()?.resolve();
  }
}
