import { jetstreamManager } from '@nats-io/jetstream';
import { connect, credsAuthenticator, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { LoadBook } from '../common/autoscale/load-book.ts';
import { ALL_LOAD_SUBJECTS, decodeReport, functionOfSubject } from '../common/autoscale/load-report.ts';
import { errorMessage } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import { mapNames } from '../common/map-streams.ts';
import { splitNatsServers } from '../common/nats-servers.ts';

const decoder = new TextDecoder();

export interface LoadSignalOptions {
  /** A `.creds` text to connect with (locked-down NATS: the sluice account). */
  credentials?: () => Promise<string>;
  /** How to read a function's waiting map tasks, when its streams are not in this connection's account. */
  pendingTasks?: (fn: string) => Promise<number>;
}

/** Map tasks not yet delivered to a replica (the worker consumer's num_pending) as `nc` sees them. */
export async function pendingTasksIn(nc: NatsConnection, fn: string): Promise<number> {
  const names = mapNames(fn);
  const jsm = await jetstreamManager(nc);
  const info = await jsm.consumers.info(names.tasksStream, names.workerConsumer);
  return info.num_pending;
}

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
  #sub: Subscription | undefined;
  #connecting: Promise<void> | undefined;
  #stopped = false;
  received = 0;
  rejected = 0;

  readonly #options: LoadSignalOptions;

  constructor(url: string, log: Logger, onUrgent: (fn: string) => void, options: LoadSignalOptions = {}) {
    this.#url = url;
    this.#log = log;
    this.#onUrgent = onUrgent;
    this.#options = options;
  }

  get connected(): boolean {
    return this.#sub !== undefined && !this.#nc?.isClosed();
  }

  /** Connects and subscribes in the background, retrying; the autoscaler holds counts until then. */
  start(): void {
    this.#connecting ??= (async () => {
      for (let wait = 250; !this.#stopped; wait = Math.min(wait * 2, 5000)) {
        try {
          const creds = await this.#options.credentials?.();
          const nc = await connect({
            servers: splitNatsServers(this.#url),
            name: 'sluice-operator autoscaler',
            ...(creds ? { authenticator: credsAuthenticator(new TextEncoder().encode(creds)) } : {}),
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
    try {
      if (this.#options.pendingTasks) return await this.#options.pendingTasks(fn);
      if (!this.#nc || this.#nc.isClosed()) return 0;
      return await pendingTasksIn(this.#nc, fn);
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
