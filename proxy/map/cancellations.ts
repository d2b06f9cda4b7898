import type { JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { errorMessage } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import type { MapNames } from '../../common/map-streams.ts';
import type { JetStreamPublisher } from './js-publisher.ts';
import { type CancelledRecord, cancelledMsgId, encodeRecord } from './records.ts';

export interface CancellationsOptions {
  nc: NatsConnection;
  jsm: JetStreamManager;
  publisher: JetStreamPublisher;
  names: MapNames;
  /** How long cancelled request ids are remembered (--map-retention). */
  retentionMs: number;
  log: Logger;
}

/**
 * Cancelled maps, as every replica learns of them. Cancelling (a DELETE, a caller gone past
 * its grace) stores a `cancelled` record (so streams and resumes end with it), tells every
 * replica on the cancel subject (they skip the request's queued tasks and abort its running
 * ones), and purges its tasks still in the work queue.
 */
export class Cancellations {
  readonly #o: CancellationsOptions;
  /** Request ids cancelled, and when (insertion order, so pruning stops at the first young one). */
  readonly #cancelled = new Map<string, number>();
  readonly #listeners = new Set<(requestId: string) => void>();
  #sub: Subscription | undefined;

  constructor(options: CancellationsOptions) {
    this.#o = options;
  }

  start(): void {
    this.#sub = this.#o.nc.subscribe(this.#o.names.cancelSubject, {
      callback: (err, msg) => {
        if (!err) this.#heard(msg.string());
      },
    });
  }

  has(requestId: string): boolean {
    return this.#cancelled.has(requestId);
  }

  /** Calls `listener` with each request id cancelled from now on; returns the unsubscribe. */
  onCancel(listener: (requestId: string) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Cancels `requestId` everywhere. Throws when NATS could not be told. */
  async cancel(requestId: string, reason: CancelledRecord['reason']): Promise<void> {
    const { publisher, nc, names, log } = this.#o;
    const record: CancelledRecord = { reason };
    await publisher.publish(
      `${names.resultsOf(requestId)}.cancelled`,
      encodeRecord(record),
      cancelledMsgId(requestId),
    );
    nc.publish(names.cancelSubject, requestId);
    const purged = await this.purge(requestId);
    log.info({ requestId, reason, purged }, 'map cancelled');
  }

  /** Drops the request's tasks still queued; returns how many. */
  async purge(requestId: string): Promise<number> {
    const { jsm, names, log } = this.#o;
    try {
      const purged = await jsm.streams.purge(names.tasksStream, { filter: `${names.tasksOf(requestId)}.>` });
      return purged.purged;
    } catch (err) {
      // The replicas skip them anyway (they heard the cancel); only a replica started later would not.
      log.warn({ requestId, err: errorMessage(err) }, 'could not purge the tasks of a cancelled map');
      return 0;
    }
  }

  close(): void {
    this.#sub?.unsubscribe();
    this.#listeners.clear();
  }

  #heard(requestId: string): void {
    const now = Date.now();
    if (!this.#cancelled.has(requestId)) this.#cancelled.set(requestId, now);
    for (const [id, at] of this.#cancelled) {
      if (now - at <= this.#o.retentionMs) break;
      this.#cancelled.delete(id);
    }
    for (const listener of this.#listeners) listener(requestId);
  }
}
