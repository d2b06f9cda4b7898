import {
  createInbox,
  headers,
  type Msg,
  type NatsConnection,
  type PublishOptions,
  type Subscription,
} from '@nats-io/transport-node';
import { SluiceError } from '../../common/errors.ts';

/** A JetStream publish that was not stored (no ack in time, no stream, the server refused it). */
export class PublishError extends SluiceError {
  constructor(message: string) {
    super('ERR_MAP_PUBLISH', message);
  }
}

interface Pending {
  resolve: () => void;
  reject: (err: PublishError) => void;
  at: number;
}

type Outgoing = [subject: string, data: string | Uint8Array, options: PublishOptions | undefined];

/** A new inbox under the connection's own prefix (a locked-down account allows only that one). */
export function ownInbox(nc: NatsConnection): string {
  const prefix = (nc as { options?: { inboxPrefix?: string } }).options?.inboxPrefix;
  return createInbox(prefix);
}

/**
 * Pipelined JetStream publishing, as nats.go's PublishAsync: every publish carries a reply
 * subject under one inbox of ours (`<inbox>.<n>`), so a single subscription takes all the
 * acks and one sweep timer expires the late ones. nats.js's `js.publish` instead runs a full
 * request per message (its own timer and an Error object with a stack each), which was the
 * map path's largest cost.
 *
 * Everything sent in one turn of the event loop (publishes, and the acks and progress
 * reports of `send`) leaves in one write on setImmediate instead of one write per message.
 */
export class JetStreamPublisher {
  readonly #nc: NatsConnection;
  readonly #timeoutMs: number;
  readonly #inbox: string;
  readonly #sub: Subscription;
  readonly #pending = new Map<number, Pending>();
  readonly #sweep: NodeJS.Timeout;
  #next = 0;
  #queue: Outgoing[] = [];
  #scheduled = false;

  constructor(nc: NatsConnection, timeoutMs: number) {
    this.#nc = nc;
    this.#timeoutMs = timeoutMs;
    this.#inbox = ownInbox(nc);
    this.#sub = nc.subscribe(`${this.#inbox}.*`, {
      callback: (err, msg) => {
        if (!err) this.#acked(msg);
      },
    });
    this.#sweep = setInterval(() => this.#expire(), Math.min(1000, timeoutMs)).unref();
  }

  /** Resolves once the stream stored the message (or dropped it as a duplicate of `msgId`). */
  publish(subject: string, data: string | Uint8Array, msgId?: string): Promise<void> {
    const token = this.#next++;
    const options: PublishOptions = { reply: `${this.#inbox}.${token}` };
    if (msgId !== undefined) {
      const h = headers();
      h.set('Nats-Msg-Id', msgId);
      options.headers = h;
    }
    return new Promise<void>((resolve, reject) => {
      this.#pending.set(token, { resolve, reject, at: performance.now() });
      this.#enqueue([subject, data, options]);
    });
  }

  /** A core message (an ack to JetStream, a pull request) sent with this turn's batch. */
  send(subject: string, data: string | Uint8Array, reply?: string): void {
    this.#enqueue([subject, data, reply === undefined ? undefined : { reply }]);
  }

  /** Rejects what still waits for an ack, and stops. */
  close(): void {
    clearInterval(this.#sweep);
    this.#flush();
    this.#sub.unsubscribe();
    for (const pending of this.#pending.values()) pending.reject(new PublishError('the publisher closed'));
    this.#pending.clear();
  }

  #enqueue(message: Outgoing): void {
    this.#queue.push(message);
    if (!this.#scheduled) {
      this.#scheduled = true;
      setImmediate(() => this.#flush());
    }
  }

  #flush(): void {
    this.#scheduled = false;
    const queue = this.#queue;
    this.#queue = [];
    for (const [subject, data, options] of queue) {
      try {
        this.#nc.publish(subject, data, options);
      } catch (err) {
        // Closed connection or a message over max_payload: only a publish can tell its caller.
        const token = options?.reply?.startsWith(this.#inbox)
          ? Number(options.reply.slice(this.#inbox.length + 1))
          : Number.NaN;
        this.#settle(token, new PublishError(`cannot publish to ${subject}: ${(err as Error).message}`));
      }
    }
  }

  #acked(msg: Msg): void {
    const token = Number(msg.subject.slice(this.#inbox.length + 1));
    if (msg.data.length === 0) {
      // A status without a body: 503 means no stream listens on the subject.
      const code = msg.headers?.code ?? 0;
      this.#settle(
        token,
        new PublishError(code === 503 ? 'no JetStream stream takes this subject' : `status ${code}`),
      );
      return;
    }
    const text = msg.string();
    if (!text.includes('"error"')) {
      this.#settle(token, undefined);
      return;
    }
    let description = text;
    try {
      description = (JSON.parse(text) as { error?: { description?: string } }).error?.description ?? text;
    } catch {
      // Keep the raw text.
    }
    this.#settle(token, new PublishError(`JetStream refused the message: ${description}`));
  }

  #settle(token: number, err: PublishError | undefined): void {
    const pending = this.#pending.get(token);
    if (!pending) return;
    this.#pending.delete(token);
    if (err) pending.reject(err);
    else pending.resolve();
  }

  #expire(): void {
    const oldest = performance.now() - this.#timeoutMs;
    for (const [token, pending] of this.#pending) {
      if (pending.at > oldest) break; // insertion order: the rest are younger
      this.#pending.delete(token);
      pending.reject(new PublishError(`no JetStream ack within ${this.#timeoutMs} ms`));
    }
  }
}
