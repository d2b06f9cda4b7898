/**
 * Requests held while a function has no ready replica, in arrival order (the activator's and
 * `sluice serve`'s front). Each waiter gets its target when one is offered; a waiter whose
 * client leaves (or whose cold-start timeout passes) leaves the room and stops counting as load.
 */
export class WaitingRoom<T> {
  readonly #waiters: { resolve: (target: T) => void; reject: (reason: unknown) => void }[] = [];

  /** Requests held now. */
  get size(): number {
    return this.#waiters.length;
  }

  /** Waits for a target; rejects with the signal's reason when it aborts first. */
  wait(signal: AbortSignal): Promise<T> {
    if (signal.aborted) return Promise.reject(signal.reason);
    return new Promise<T>((resolve, reject) => {
      const waiter = {
        resolve: (target: T) => {
          signal.removeEventListener('abort', onAbort);
          resolve(target);
        },
        reject: (reason: unknown) => {
          signal.removeEventListener('abort', onAbort);
          reject(reason);
        },
      };
      const onAbort = () => {
        const at = this.#waiters.indexOf(waiter);
        if (at >= 0) this.#waiters.splice(at, 1);
        reject(signal.reason);
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  /** Hands targets to waiters, first come first served, while `pick` finds one. */
  offer(pick: () => T | undefined): void {
    while (this.#waiters.length > 0) {
      const target = pick();
      if (target === undefined) return;
      this.#waiters.shift()!.resolve(target);
    }
  }

  /** Every waiter leaves with `reason` (no target is coming: the function keeps crashing). */
  fail(reason: unknown): void {
    for (const waiter of this.#waiters.splice(0)) waiter.reject(reason);
  }
}
