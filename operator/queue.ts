export interface WorkQueueOptions {
  /** First retry delay after a failure; doubles per consecutive failure of the same key. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  /** Told about every finished reconcile, for metrics. */
  onDone?: (key: string, ms: number, error: unknown) => void;
}

/**
 * The controller work queue of client-go, in small: a key waits at most once (adding a key
 * that is already waiting does nothing), a key is never reconciled by two workers at once
 * (added while in flight, it runs again right after), failures retry with per-key
 * exponential backoff, and a bounded number of workers drain it.
 */
export class WorkQueue {
  private readonly waiting: string[] = [];
  private readonly queued = new Set<string>();
  private readonly active = new Set<string>();
  private readonly dirty = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly wakers: (() => void)[] = [];
  private readonly options: Required<Omit<WorkQueueOptions, 'onDone'>> & WorkQueueOptions;
  private stopped = false;

  constructor(options: WorkQueueOptions = {}) {
    this.options = { baseDelayMs: 100, maxDelayMs: 60_000, ...options };
  }

  /** Keys waiting for a worker (not counting the ones in flight). */
  get depth(): number {
    return this.waiting.length;
  }

  get inFlight(): number {
    return this.active.size;
  }

  add(key: string): void {
    if (this.stopped) return;
    if (this.active.has(key)) {
      this.dirty.add(key);
      return;
    }
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.waiting.push(key);
    this.wakers.shift()?.();
  }

  /**
   * Adds `key` ahead of every waiting key (or moves it there): a scale-up must not wait behind a
   * backlog of routine reconciles.
   */
  addFirst(key: string): void {
    if (this.stopped) return;
    if (this.active.has(key)) {
      this.dirty.add(key);
      return;
    }
    if (this.queued.has(key)) this.waiting.splice(this.waiting.indexOf(key), 1);
    this.queued.add(key);
    this.waiting.unshift(key);
    this.wakers.shift()?.();
  }

  /** Adds `key` after `ms`; while one delay for the key is pending, further ones are dropped. */
  addAfter(key: string, ms: number): void {
    if (this.stopped || this.timers.has(key)) return;
    const timer = setTimeout(() => {
      this.timers.delete(key);
      this.add(key);
    }, ms);
    timer.unref();
    this.timers.set(key, timer);
  }

  /** The backoff the next failure of `key` gets: base·2^failures, capped. */
  backoff(key: string): number {
    const n = this.failures.get(key) ?? 0;
    return Math.min(this.options.baseDelayMs * 2 ** n, this.options.maxDelayMs);
  }

  private async next(): Promise<string | undefined> {
    while (!this.stopped && this.waiting.length === 0) {
      await new Promise<void>((resolve) => this.wakers.push(resolve));
    }
    if (this.stopped) return undefined;
    const key = this.waiting.shift()!;
    this.queued.delete(key);
    this.active.add(key);
    return key;
  }

  private finish(key: string): void {
    this.active.delete(key);
    if (this.dirty.delete(key)) this.add(key);
  }

  /**
   * Runs `workers` loops until stop(). A thrown error whose `retryable` is not false retries
   * the key with backoff; a terminal one is left to the reconciler (it records a condition).
   */
  async run(workers: number, reconcile: (key: string) => Promise<void>): Promise<void> {
    const worker = async () => {
      for (;;) {
        const key = await this.next();
        if (key === undefined) return;
        const started = performance.now();
        let error: unknown;
        try {
          await reconcile(key);
          this.failures.delete(key);
        } catch (err) {
          error = err;
          if ((err as { retryable?: boolean }).retryable !== false) {
            const delay = this.backoff(key);
            this.failures.set(key, (this.failures.get(key) ?? 0) + 1);
            this.addAfter(key, delay);
          } else {
            this.failures.delete(key);
          }
        } finally {
          this.finish(key);
        }
        this.options.onDone?.(key, performance.now() - started, error);
      }
    };
    await Promise.all(Array.from({ length: workers }, worker));
  }

  /** Stops handing out keys; workers finish the reconcile they are in, then run() resolves. */
  stop(): void {
    this.stopped = true;
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
    for (const wake of this.wakers.splice(0)) wake();
  }
}
