import type { ServerResponse } from 'node:http';

/**
 * Writes a map's SSE response. Events written in one turn of the event loop leave as one
 * chunk in one write on setImmediate instead of one syscall each; nothing waits longer than
 * that turn. (Not res.cork(): its uncork sends each corked piece with a write of its own.)
 * A `: keepalive` comment goes out after `heartbeatMs` of silence, between events.
 */
export class EventStreamWriter {
  readonly #res: ServerResponse;
  readonly #heartbeatMs: number;
  #pending = '';
  #scheduled = false;
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
    this.#flush();
    if (!this.#res.writableEnded) this.#res.end();
  }

  close(): void {
    clearTimeout(this.#heartbeat);
  }

  #write(text: string): void {
    if (this.#res.writableEnded || this.#res.destroyed) return;
    this.#pending += text;
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => this.#flush());
    }
  }

  #flush(): void {
    this.#scheduled = false;
    if (!this.#pending) return;
    const text = this.#pending;
    this.#pending = '';
    if (!this.#res.writableEnded && !this.#res.destroyed) this.#res.write(text);
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
