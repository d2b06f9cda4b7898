import type { Msg, NatsConnection, Subscription } from '@nats-io/transport-node';
import { ownInbox } from './js-publisher.ts';

export interface PullerOptions {
  nc: NatsConnection;
  /** Sends the pull requests with the turn's other messages (JetStreamPublisher.send). */
  send: (subject: string, data: string, reply: string) => void;
  stream: string;
  consumer: string;
  /** Prefix of every task subject (`sluice.<ns>.<name>.tasks.`): anything else on the inbox is a status. */
  taskPrefix: string;
  /** How many more tasks the worker can start now (its slots less the tasks it holds). */
  free: () => number;
  /** Pull when at least this many can be asked for at once (or nothing is asked for yet). */
  minBatch: number;
  expiresMs: number;
  onTask: (msg: Msg) => void;
  /** The consumer or its stream is gone (deleted, not made yet): make it exist, then call resume(). */
  onMissing: () => void;
}

/** A pull request in flight: how many tasks it may still bring, and until when. */
interface Pull {
  batch: number;
  until: number;
}

const NANOS_PER_MS = 1_000_000;
/** After its expiry a pull request's 408 should have arrived; past this margin it is taken as lost. */
const LOST_MARGIN_MS = 2_000;

/**
 * Pulls tasks from the shared durable consumer for one worker with one inbox subscription:
 * it asks only for as many tasks as the worker can start now, so no replica hoards work
 * another could start, and several pulls may be in flight at once. It keeps count of the
 * tasks asked for and not yet delivered (less those a 408/409 status hands back) instead of
 * making a new subscription per fetch as nats.js's `consumer.fetch()` does.
 */
export class TaskPuller {
  readonly #o: PullerOptions;
  readonly #inbox: string;
  readonly #api: string;
  #sub: Subscription | undefined;
  #outstanding = 0;
  #pulls: Pull[] = [];
  #paused = true;
  #sweep: NodeJS.Timeout | undefined;

  constructor(options: PullerOptions) {
    this.#o = options;
    this.#inbox = ownInbox(options.nc);
    this.#api = `$JS.API.CONSUMER.MSG.NEXT.${options.stream}.${options.consumer}`;
  }

  /** Subscribes and starts pulling. */
  start(): void {
    this.#sub ??= this.#o.nc.subscribe(this.#inbox, {
      callback: (err, msg) => {
        if (!err) this.#received(msg);
      },
    });
    this.#sweep ??= setInterval(() => this.#dropLost(), 1000).unref();
    this.resume();
  }

  /** Stops asking for tasks (pulls in flight may still deliver some: the worker hands them back). */
  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    this.fill();
  }

  /** Forget the pulls in flight (they died with a connection) and ask again. */
  reset(): void {
    this.#outstanding = 0;
    this.#pulls = [];
    this.fill();
  }

  get paused(): boolean {
    return this.#paused;
  }

  /** Asks for more tasks when the worker has room for a batch of them. */
  fill(): void {
    if (this.#paused || !this.#sub) return;
    const want = this.#o.free() - this.#outstanding;
    if (want <= 0 || (want < this.#o.minBatch && this.#outstanding > 0)) return;
    this.#outstanding += want;
    this.#pulls.push({ batch: want, until: performance.now() + this.#o.expiresMs });
    // A pull lost with a closed connection is let go by #dropLost (and reset() on reconnect).
    this.#o.send(this.#api, `{"batch":${want},"expires":${this.#o.expiresMs * NANOS_PER_MS}}`, this.#inbox);
  }

  stop(): void {
    this.#paused = true;
    clearInterval(this.#sweep);
    this.#sub?.unsubscribe();
    this.#sub = undefined;
  }

  #received(msg: Msg): void {
    if (msg.subject.startsWith(this.#o.taskPrefix)) {
      this.#delivered(1);
      this.#o.onTask(msg);
      return;
    }
    // Statuses come on the inbox itself: 408 a pull expired, 409 the server ended pulls
    // (leader change, consumer deleted, too many waiting), 503 nothing serves the consumer.
    const h = msg.headers;
    const code = h?.code ?? 0;
    if (code === 100) return; // heartbeat
    if (code === 503) {
      this.#outstanding = 0;
      this.#pulls = [];
      this.pause();
      this.#o.onMissing();
      return;
    }
    const pending = Number(h?.get('Nats-Pending-Messages'));
    if (code === 409 && /consumer deleted/i.test(h?.description ?? '')) {
      this.reset();
      this.pause();
      this.#o.onMissing();
      return;
    }
    if (Number.isInteger(pending) && pending > 0) this.#delivered(pending, true);
    else if (code >= 400) this.#dropLost();
    this.fill();
  }

  /** `count` tasks of the oldest pulls arrived (or, `expired`, will not). */
  #delivered(count: number, expired = false): void {
    this.#outstanding = Math.max(0, this.#outstanding - count);
    let left = count;
    while (left > 0 && this.#pulls.length > 0) {
      const pull = this.#pulls[0]!;
      const used = Math.min(left, pull.batch);
      pull.batch -= used;
      left -= used;
      if (pull.batch === 0) this.#pulls.shift();
    }
    if (expired && this.#pulls.length === 0) this.#outstanding = 0;
  }

  /** Pulls whose expiry passed without a status (a lost 408, a server that went away) are let go. */
  #dropLost(): void {
    const now = performance.now();
    const before = this.#pulls.length;
    this.#pulls = this.#pulls.filter((pull) => pull.until + LOST_MARGIN_MS > now);
    if (this.#pulls.length === before) return;
    this.#outstanding = Math.min(
      this.#outstanding,
      this.#pulls.reduce((sum, pull) => sum + pull.batch, 0),
    );
    this.fill();
  }
}
