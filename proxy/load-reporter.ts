import type { NatsConnection } from '@nats-io/transport-node';
import { encodeReport, type LoadReport, loadSubject } from '../common/autoscale/load-report.ts';
import { errorMessage } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import type { ConcurrencyLimiter } from './limiter.ts';

/** Reports go out this often, and at once on a change of readiness or a drain. */
export const REPORT_INTERVAL_MS = 1000;
/** While the function has not answered yet, how often to look (a cold start's last step). */
const STARTING_POLL_MS = 50;

export interface LoadReporterOptions {
  nc: NatsConnection;
  /** `namespace/name`. */
  fn: string;
  replica: string;
  /** Where an activator reaches this proxy's public port. */
  url: string;
  /** What /readyz says: the function answers (and map, when on, has NATS). */
  ready: () => Promise<boolean>;
  limiter: ConcurrencyLimiter;
  draining: () => boolean;
  /** Map requests this proxy answers now (their tasks may wait in JetStream). */
  maps: () => Promise<number>;
  log: Logger;
  intervalMs?: number;
}

/**
 * Publishes this replica's load on `sluice.<ns>.<name>.load` (common/autoscale/load-report.ts):
 * once a second, and at once when it first turns ready (the function answers; map has NATS) (so a held request is forwarded the
 * moment the replica can take it, not on the next tick or the kubelet's next probe) and when a
 * drain starts (so no activator sends it new work). `peak` is the highest active + queued since
 * the last report: a request that comes and goes between two reports still counts as load.
 */
export class LoadReporter {
  readonly #o: LoadReporterOptions;
  readonly #subject: string;
  #peak = 0;
  #ready = false;
  #timer: NodeJS.Timeout | undefined;
  #starting: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(options: LoadReporterOptions) {
    this.#o = options;
    this.#subject = loadSubject(options.fn);
    this.#peak = this.#level();
  }

  /** Called by the limiter on every change: keeps the interval's peak. */
  touch(): void {
    const level = this.#level();
    if (level > this.#peak) this.#peak = level;
  }

  start(): void {
    const interval = this.#o.intervalMs ?? REPORT_INTERVAL_MS;
    this.#timer = setInterval(() => void this.#tick(), interval);
    this.#timer.unref();
    const poll = async () => {
      if (this.#closed || this.#o.draining()) return;
      if (await this.#o.ready()) {
        this.#ready = true;
        await this.report();
        return;
      }
      this.#starting = setTimeout(() => void poll(), STARTING_POLL_MS);
      this.#starting.unref();
    };
    void poll();
  }

  /** Publishes one report now. */
  async report(): Promise<void> {
    if (this.#closed && !this.#o.draining()) return;
    const report: LoadReport = {
      from: this.#o.replica,
      kind: 'replica',
      active: this.#o.limiter.active,
      queued: this.#o.limiter.waiting,
      peak: Math.max(this.#peak, this.#level()),
      ready: this.#ready && !this.#o.draining(),
      draining: this.#o.draining(),
      url: this.#o.url,
      maps: await this.#o.maps().catch(() => 0),
    };
    this.#peak = this.#level();
    try {
      this.#o.nc.publish(this.#subject, encodeReport(report));
    } catch (err) {
      // Closed or reconnecting: the next report replaces this one.
      this.#o.log.debug({ err: errorMessage(err) }, 'load report not sent');
    }
  }

  /** Stops the reports; the last one says so when the proxy drains (the operator forgets it after a few seconds). */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    clearTimeout(this.#starting);
    if (this.#o.draining()) await this.report();
    this.#closed = true;
  }

  async #tick(): Promise<void> {
    if (!this.#o.draining()) {
      const ready = await this.#o.ready();
      if (ready !== this.#ready) this.#o.log.info({ ready }, 'function readiness changed');
      this.#ready = ready;
    }
    await this.report();
  }

  #level(): number {
    return this.#o.limiter.active + this.#o.limiter.waiting;
  }
}
