import { Socket } from 'node:net';

// However long the function would wait, an idle connection is not kept longer than this.
const MAX_IDLE_SECONDS = 600;

/** What a connection reports to the exchange using it. */
export interface ConnectionOwner {
  onData(chunk: Buffer): void;
  onDrain(): void;
  onClose(error: Error | undefined): void;
}

/**
 * A connection to the function. Its listeners are shared functions that pass each event to the
 * exchange now using it (`owner`), so reusing a connection adds no closures or listeners.
 */
export class UpstreamSocket extends Socket {
  readonly pool: UpstreamPool;
  owner: ConnectionOwner | undefined;
  /** The last error seen, reported with 'close'. */
  error: Error | undefined;

  constructor(pool: UpstreamPool) {
    super();
    this.pool = pool;
  }
}

function onData(this: UpstreamSocket, chunk: Buffer): void {
  if (this.owner) this.owner.onData(chunk);
  else this.destroy(); // bytes on an idle connection: the function broke the protocol
}
function onDrain(this: UpstreamSocket): void {
  this.owner?.onDrain();
}
function onError(this: UpstreamSocket, err: Error): void {
  this.error = err;
}
function onClose(this: UpstreamSocket): void {
  const owner = this.owner;
  this.owner = undefined;
  if (owner) owner.onClose(this.error);
  else this.pool.forget(this);
}
function onIdleTimeout(this: UpstreamSocket): void {
  if (!this.owner) this.destroy();
}

/**
 * Kept-alive connections to the function, most recently used first, so the ones left over after
 * a burst go idle and are closed. An idle one closes a second before the function would close
 * it (its `Keep-Alive: timeout=N`, as undici does), or after `idleMs` when it does not say:
 * 4 s, before the 5 s most servers (uvicorn, Node) use. So a request never goes out on a
 * connection the function is closing.
 */
export class UpstreamPool {
  readonly #host: string;
  readonly #port: number;
  readonly #idleMs: number;
  readonly #idle: UpstreamSocket[] = [];
  #closed = false;

  constructor(upstream: URL, idleMs = 4000) {
    this.#host = upstream.hostname.replace(/^\[|\]$/g, '');
    this.#port = Number(upstream.port || 80);
    this.#idleMs = idleMs;
  }

  /** `host:port` of the function, for the Host header of requests without one and for errors. */
  get authority(): string {
    return `${this.#host.includes(':') ? `[${this.#host}]` : this.#host}:${this.#port}`;
  }

  /** An idle connection, or a new one (connecting: writes wait for it). */
  take(owner: ConnectionOwner): UpstreamSocket {
    let socket = this.#idle.pop();
    if (socket) {
      socket.setTimeout(0);
    } else {
      socket = new UpstreamSocket(this);
      socket.setNoDelay(true);
      socket.on('data', onData);
      socket.on('drain', onDrain);
      socket.on('error', onError);
      socket.on('close', onClose);
      socket.on('timeout', onIdleTimeout);
      socket.connect(this.#port, this.#host);
    }
    socket.owner = owner;
    return socket;
  }

  /**
   * Takes back a connection whose exchange ended cleanly (`keepAliveSeconds`: what the function
   * said it allows); closes it if the pool is closed or the function allows no idle time.
   */
  give(socket: UpstreamSocket, keepAliveSeconds?: number): void {
    socket.owner = undefined;
    const idleMs =
      keepAliveSeconds === undefined ? this.#idleMs : Math.min(keepAliveSeconds - 1, MAX_IDLE_SECONDS) * 1000;
    if (this.#closed || socket.destroyed || idleMs <= 0) {
      socket.destroy();
      return;
    }
    socket.setTimeout(idleMs);
    this.#idle.push(socket);
  }

  /** An idle connection closed (timed out, or the function closed it). */
  forget(socket: UpstreamSocket): void {
    const at = this.#idle.indexOf(socket);
    if (at !== -1) this.#idle.splice(at, 1);
  }

  close(): void {
    this.#closed = true;
    for (const socket of this.#idle.splice(0)) socket.destroy();
  }
}
