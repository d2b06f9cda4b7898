export type MapOrder = 'input' | 'completion';

export interface SequencerOptions {
  count: number;
  order: MapOrder;
  /**
   * Resume point (the `Last-Event-ID` the client saw). In input order every index up to it was
   * delivered; in completion order everything up to its first record in the results stream
   * (the order the client was sent them in) was.
   */
  lastEventId?: number;
}

/**
 * Turns a map's result records (in results-stream order, possibly with duplicates when a task
 * ran twice) into the events to send: each index exactly once, either as they complete or in
 * input order, holding later ones until the earlier ones arrive. Pure: no I/O.
 */
export class ResultSequencer<T> {
  readonly count: number;
  readonly order: MapOrder;
  #seen: Uint8Array;
  #seenCount = 0;
  #failed = 0;
  /** Input order: the next index to send, and the records held until it arrives. */
  #next = 0;
  #held = new Map<number, T>();
  /** Completion order, while resuming: still skipping what the client already has. */
  #skipUntil: number | undefined;

  constructor({ count, order, lastEventId }: SequencerOptions) {
    this.count = count;
    this.order = order;
    this.#seen = new Uint8Array(count);
    if (lastEventId !== undefined) {
      if (order === 'input') this.#next = lastEventId + 1;
      else this.#skipUntil = lastEventId;
    }
  }

  /** Records the first record of `index`; returns the events that may be sent now, in order. */
  accept(index: number, failed: boolean, event: T): T[] {
    if (!Number.isInteger(index) || index < 0 || index >= this.count || this.#seen[index]) return [];
    this.#seen[index] = 1;
    this.#seenCount++;
    if (failed) this.#failed++;
    if (this.order === 'completion') {
      if (this.#skipUntil === undefined) return [event];
      if (this.#skipUntil === index) this.#skipUntil = undefined;
      return [];
    }
    if (index < this.#next) return [];
    if (index !== this.#next) {
      this.#held.set(index, event);
      return [];
    }
    const ready = [event];
    this.#next++;
    for (let held = this.#held.get(this.#next); held !== undefined; held = this.#held.get(this.#next)) {
      this.#held.delete(this.#next);
      ready.push(held);
      this.#next++;
    }
    return ready;
  }

  /**
   * The map ends early (cancelled): the records held for input order, in index order, so
   * what was computed still reaches the caller (with gaps where inputs were cancelled).
   */
  flush(): T[] {
    const held = [...this.#held.entries()].sort(([a], [b]) => a - b).map(([, event]) => event);
    this.#held.clear();
    return held;
  }

  /** Every index has a record (and so every event was handed out). */
  get complete(): boolean {
    return this.#seenCount === this.count;
  }

  get failed(): number {
    return this.#failed;
  }

  /** Indices still without a record. */
  get outstanding(): number {
    return this.count - this.#seenCount;
  }
}
