import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { errorMessage } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import type { MapNames } from '../../common/map-streams.ts';

export interface GraceOptions {
  nc: NatsConnection;
  names: MapNames;
  /** --map-cancel-after-disconnect, in ms (0: a break cancels at once). */
  graceMs: number;
  cancel: (requestId: string) => Promise<void>;
  log: Logger;
}

/** How often a live map stream says so: well inside the grace, and at most every 5 s. */
export function watchIntervalMs(graceMs: number): number {
  return Math.min(5_000, Math.max(100, Math.floor(graceMs / 3)));
}

/**
 * The grace a map's caller has to come back (SPEC §2 `cancelAfterDisconnectSeconds`), kept by
 * every replica alike so that a resume on any replica counts and a replica that stops does not
 * take the timer with it. A stream that breaks announces `left <requestId>` on the function's
 * watch subject; every replica then starts the grace for it. Every live stream of a map
 * (started or resumed, on any replica) announces `watching <requestId>` at once and every
 * watchIntervalMs, which stops those timers; a late `left` (a proxy behind a slow ingress
 * noticing the break after the resume began) is undone by the next `watching`. When the grace
 * runs out the map is cancelled (by each replica; the cancel record is deduplicated).
 * Maps started with `"keep": true` never take part.
 */
export class DisconnectGrace {
  readonly #o: GraceOptions;
  readonly #timers = new Map<string, NodeJS.Timeout>();
  readonly #interval: number;
  #sub: Subscription | undefined;

  constructor(options: GraceOptions) {
    this.#o = options;
    this.#interval = watchIntervalMs(options.graceMs);
  }

  start(): void {
    this.#sub = this.#o.nc.subscribe(this.#o.names.watchSubject, {
      callback: (err, msg) => {
        if (err) return;
        const text = msg.string();
        const space = text.indexOf(' ');
        const verb = text.slice(0, space);
        const requestId = text.slice(space + 1);
        if (verb === 'watching') this.#stopTimer(requestId);
        else if (verb === 'left') this.#startTimer(requestId);
      },
    });
  }

  /** A stream of `requestId` is live here until the returned function is called. */
  watch(requestId: string): () => void {
    this.#say('watching', requestId);
    const timer = setInterval(() => this.#say('watching', requestId), this.#interval);
    timer.unref();
    return () => clearInterval(timer);
  }

  /** A stream of `requestId` broke before its end: the grace starts on every replica. */
  left(requestId: string): void {
    this.#say('left', requestId);
  }

  close(): void {
    this.#sub?.unsubscribe();
    for (const timer of this.#timers.values()) clearTimeout(timer);
    this.#timers.clear();
  }

  #say(verb: 'watching' | 'left', requestId: string): void {
    try {
      this.#o.nc.publish(this.#o.names.watchSubject, `${verb} ${requestId}`);
    } catch (err) {
      this.#o.log.warn({ requestId, err: errorMessage(err) }, `could not announce a map stream ${verb}`);
    }
  }

  #startTimer(requestId: string): void {
    if (this.#timers.has(requestId)) return;
    const timer = setTimeout(() => {
      this.#timers.delete(requestId);
      this.#o.cancel(requestId).catch((err: unknown) => {
        this.#o.log.warn({ requestId, err: errorMessage(err) }, 'could not cancel a map whose caller left');
      });
    }, this.#o.graceMs);
    timer.unref();
    this.#timers.set(requestId, timer);
  }

  #stopTimer(requestId: string): void {
    const timer = this.#timers.get(requestId);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.#timers.delete(requestId);
  }
}
