import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import type { MapNames } from '../../common/map-streams.ts';
import type { JetStreamPublisher } from './js-publisher.ts';
import { batchLine, type RecordLine } from './records.ts';

export interface ResultWriterOptions {
  publisher: JetStreamPublisher;
  names: MapNames;
  /** Largest message NATS takes now (less header room). */
  maxBytes: () => number;
  /** How long a batch is retried before its tasks are left to run again (ack wait). */
  giveUpMs: number;
  stopped: () => boolean;
  log: Logger;
}

interface Waiting {
  line: string;
  bytes: number;
  stored: (ok: boolean) => void;
}

/** One request's records: those waiting, and whether a batch of them is being stored. */
interface Lane {
  waiting: Waiting[];
  busy: boolean;
}

/**
 * Stores this replica's result and error records in the results stream by group commit: the
 * records of one request that finish while a batch of them is being stored (or in the same
 * turn of the event loop) go out together as the next batch, one message
 * (`<resultsOf(requestId)>.batch`, records.ts). Nothing waits when the rate is low; at high
 * rates one publish, one store and one delivery carry many records.
 */
export class ResultWriter {
  readonly #o: ResultWriterOptions;
  readonly #lanes = new Map<string, Lane>();

  constructor(options: ResultWriterOptions) {
    this.#o = options;
  }

  /** Resolves true once stored; false when it could not be stored in time (the task runs again). */
  store(requestId: string, record: RecordLine): Promise<boolean> {
    const line = batchLine(record);
    return new Promise<boolean>((stored) => {
      let lane = this.#lanes.get(requestId);
      if (!lane) {
        lane = { waiting: [], busy: false };
        this.#lanes.set(requestId, lane);
      }
      lane.waiting.push({ line, bytes: line.length, stored });
      if (!lane.busy) {
        lane.busy = true;
        setImmediate(() => void this.#drain(requestId, lane!));
      }
    });
  }

  /** Stores batches until nothing waits; records arriving meanwhile join the next batch. */
  async #drain(requestId: string, lane: Lane): Promise<void> {
    const subject = `${this.#o.names.resultsOf(requestId)}.batch`;
    while (lane.waiting.length > 0) {
      const batch = this.#take(lane);
      const ok = await this.#publish(subject, batch.map((w) => w.line).join('\n'), requestId);
      for (const waiting of batch) waiting.stored(ok);
    }
    lane.busy = false;
    this.#lanes.delete(requestId);
  }

  /** As many waiting records as one message carries (at least one; records.ts bounds each). */
  #take(lane: Lane): Waiting[] {
    const max = this.#o.maxBytes();
    let bytes = 0;
    let count = 0;
    for (const waiting of lane.waiting) {
      // UTF-16 length is a lower bound of the bytes; the record bound leaves room for the rest.
      if (count > 0 && bytes + waiting.bytes * 3 + 1 > max) break;
      bytes += waiting.bytes * 3 + 1;
      count++;
    }
    return lane.waiting.splice(0, count);
  }

  async #publish(subject: string, data: string, requestId: string): Promise<boolean> {
    const deadline = performance.now() + this.#o.giveUpMs;
    let waitMs = 100;
    for (;;) {
      try {
        await this.#o.publisher.publish(subject, data);
        return true;
      } catch (err) {
        if (this.#o.stopped() || performance.now() + waitMs > deadline) {
          this.#o.log.warn(
            { err: errorMessage(err), requestId },
            'could not store map results; their tasks will run again',
          );
          return false;
        }
        await sleep(waitMs);
        waitMs = Math.min(waitMs * 2, 2_000);
      }
    }
  }
}
