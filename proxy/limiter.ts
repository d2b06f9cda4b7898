import { SluiceError } from '../common/errors.ts';

export class QueueTimeoutError extends SluiceError {
  constructor(waitedMs: number) {
    super('ERR_QUEUE_TIMEOUT', `no free slot after waiting ${Math.round(waitedMs)} ms`);
  }
}

export class QueueAbortedError extends SluiceError {
  constructor(reason?: unknown) {
    super('ERR_QUEUE_ABORTED', 'left the queue before a slot was free', { cause: reason });
  }
}

export type Release = () => void;

interface Waiter {
  grant: (release: Release) => void;
  settled: boolean;
}

/**
 * A FIFO counting semaphore shared by plain streams and map tasks. A slot is held until the
 * release function is called (when the stream ends, not when headers arrive: BentoML#4624).
 * Waiters that time out or abort leave the queue without consuming a slot.
 */
export class ConcurrencyLimiter {
  readonly limit: number;
  #active = 0;
  #queue: Waiter[] = [];
  #onChange?: () => void;

  constructor(limit: number, onChange?: () => void) {
    this.limit = limit;
    this.#onChange = onChange;
  }

  get active(): number {
    return this.#active;
  }

  get waiting(): number {
    return this.#queue.length;
  }

  /** Takes a slot at once if one is free; never queues. */
  tryAcquire(): Release | undefined {
    if (this.#active >= this.limit || this.#queue.length > 0) return undefined;
    this.#active++;
    this.#onChange?.();
    return this.#releaser();
  }

  /** Waits (FIFO) up to `timeoutMs` for a slot. */
  acquire(timeoutMs: number, signal?: AbortSignal): Promise<Release> {
    const immediate = this.tryAcquire();
    if (immediate) return Promise.resolve(immediate);
    if (signal?.aborted) return Promise.reject(new QueueAbortedError(signal.reason));
    return new Promise<Release>((resolve, reject) => {
      const started = performance.now();
      const waiter: Waiter = {
        settled: false,
        grant: (release) => {
          finish();
          resolve(release);
        },
      };
      const leave = (err: Error) => {
        if (waiter.settled) return;
        finish();
        const at = this.#queue.indexOf(waiter);
        if (at >= 0) this.#queue.splice(at, 1);
        this.#onChange?.();
        reject(err);
      };
      const timer = setTimeout(() => leave(new QueueTimeoutError(performance.now() - started)), timeoutMs);
      const onAbort = () => leave(new QueueAbortedError(signal?.reason));
      signal?.addEventListener('abort', onAbort, { once: true });
      const finish = () => {
        waiter.settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
      };
      this.#queue.push(waiter);
      this.#onChange?.();
    });
  }

  #releaser(): Release {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.#queue.shift();
      if (next) {
        // The slot passes straight to the next waiter: active stays the same.
        next.grant(this.#releaser());
      } else {
        this.#active--;
      }
      this.#onChange?.();
    };
  }
}
