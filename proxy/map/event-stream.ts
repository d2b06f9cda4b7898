import type { ServerResponse } from 'node:http';

/**
 * Writes a map's SSE response. Events written in one turn of the event loop leave in one
 * packet (cork until the next turn) instead of one syscall each; nothing waits longer than
 * that turn. A `: keepalive` comment goes out after `heartbeatMs` of silence, between events.
 */
export class EventStreamWriter {
  readonly #res: ServerResponse;
  readonly #heartbeatMs: number;
  #corked = false;
  #heartbeat: NodeJS.Timeout | undefined;

  constructor(res: ServerResponse, heartbeatMs: number) {
    this.#res = res;
    this.#heartbeatMs = heartbeatMs;
  }

  open(): void {
    this.#res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache',
      'x-accel-buffering': 'no',
    });
    this.#res.flushHeaders();
    this.#armHeartbeat();
  }

  event(name: string, data: string, id?: number): void {
    this.#write(
      id === undefined ? `event: ${name}\ndata: ${data}\n\n` : `event: ${name}\nid: ${id}\ndata: ${data}\n\n`,
    );
    this.#armHeartbeat();
  }

  /** True when the client is not keeping up: wait for `drained()` before writing more. */
  get backedUp(): boolean {
    return this.#res.writableNeedDrain;
  }

  drained(): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.#res.off('drain', done);
        this.#res.off('close', done);
        resolve();
      };
      this.#res.once('drain', done);
      this.#res.once('close', done);
    });
  }

  end(): void {
    clearTimeout(this.#heartbeat);
    if (this.#corked) {
      this.#corked = false;
      this.#res.uncork();
    }
    if (!this.#res.writableEnded) this.#res.end();
  }

  close(): void {
    clearTimeout(this.#heartbeat);
  }

  #write(text: string): void {
    if (this.#res.writableEnded || this.#res.destroyed) return;
    if (!this.#corked) {
      this.#corked = true;
      this.#res.cork();
      setImmediate(() => {
        if (!this.#corked) return;
        this.#corked = false;
        this.#res.uncork();
      });
    }
    this.#res.write(text);
  }

  #armHeartbeat(): void {
    if (this.#heartbeatMs <= 0) return;
    clearTimeout(this.#heartbeat);
    this.#heartbeat = setTimeout(() => {
      this.#write(': keepalive\n\n');
      this.#armHeartbeat();
    }, this.#heartbeatMs);
    this.#heartbeat.unref();
  }
}
