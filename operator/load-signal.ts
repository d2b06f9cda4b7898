import { type JetStreamManager, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { LoadBook } from '../common/autoscale/load-book.ts';
import { ALL_LOAD_SUBJECTS, decodeReport, functionOfSubject } from '../common/autoscale/load-report.ts';
import { errorMessage } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import { mapNames } from '../common/map-streams.ts';

const decoder = new TextDecoder();

/**
 * What the autoscaler hears: every function's load reports (one core NATS subscription to
 * `sluice.*.*.load`, into a LoadBook) and, on demand, how many map tasks wait in a function's
 * JetStream consumer. Reports are decoded in the subscription's callback, without an async
 * iterator per message: at 1,000 functions x 10 replicas that is 10,000 messages a second.
 */
export class LoadSignal {
  readonly book = new LoadBook();
  readonly #url: string;
  readonly #log: Logger;
  /** Called for a report that should be acted on before the next tick (LoadBook.record). */
  readonly #onUrgent: (fn: string) => void;
  #nc: NatsConnection | undefined;
  #jsm: JetStreamManager | undefined;
  #sub: Subscription | undefined;
  #connecting: Promise<void> | undefined;
  #stopped = false;
  received = 0;
  rejected = 0;

  constructor(url: string, log: Logger, onUrgent: (fn: string) => void) {
    this.#url = url;
    this.#log = log;
    this.#onUrgent = onUrgent;
  }

  get connected(): boolean {
    return this.#sub !== undefined && !this.#nc?.isClosed();
  }

  /** Connects and subscribes in the background, retrying; the autoscaler holds counts until then. */
  start(): void {
    this.#connecting ??= (async () => {
      for (let wait = 250; !this.#stopped; wait = Math.min(wait * 2, 5000)) {
        try {
          const nc = await connect({
            servers: this.#url,
            name: 'sluice-operator autoscaler',
            maxReconnectAttempts: -1,
            noAsyncTraces: true,
          });
          this.#nc = nc;
          this.#sub = nc.subscribe(ALL_LOAD_SUBJECTS, {
            callback: (err, msg) => {
              if (err) return;
              this.#receive(msg.subject, msg.data);
            },
          });
          this.#log.info(
            { nats: this.#url, subject: ALL_LOAD_SUBJECTS },
            'autoscaler listening to load reports',
          );
          return;
        } catch (err) {
          this.#log.warn({ err: errorMessage(err), retryMs: wait }, 'autoscaler: cannot connect to NATS');
          await new Promise((r) => setTimeout(r, wait).unref());
        }
      }
    })();
  }

  #receive(subject: string, data: Uint8Array): void {
    const fn = functionOfSubject(subject);
    const report = fn ? decodeReport(decoder.decode(data)) : undefined;
    if (!fn || !report) {
      this.rejected++;
      return;
    }
    this.received++;
    if (this.book.record(fn, report, Date.now())) this.#onUrgent(fn);
  }

  /** Map tasks not yet delivered to a replica (the worker consumer's num_pending); 0 without one. */
  async pendingTasks(fn: string): Promise<number> {
    if (!this.#nc || this.#nc.isClosed()) return 0;
    this.#jsm ??= await jetstreamManager(this.#nc);
    const names = mapNames(fn);
    try {
      const info = await this.#jsm.consumers.info(names.tasksStream, names.workerConsumer);
      return info.num_pending;
    } catch (err) {
      this.#log.debug(
        { function: fn, err: errorMessage(err) },
        'no worker consumer to read pending tasks from',
      );
      return 0;
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#connecting;
    this.#sub?.unsubscribe();
    await this.#nc?.drain().catch(() => this.#nc?.close());
  }
}
