/** One thing that should keep sending: a request body (HTTP/1.1) or a stream's (HTTP/2). */
export interface Sender {
  /** Grows while bytes arrive (a socket's bytesRead, a counter of DATA frames); compared, never read as a size. */
  progress(): number;
  /** True while silence is not the sender's fault (the reader is behind, the body is done). */
  excused(): boolean;
  /** Called once when it has been silent for the watch's idle time. */
  onSilent(): void;
}

interface Entry {
  sender: Sender;
  seen: number;
  since: number;
}

/**
 * Finds senders gone silent: a timeout on silence, not on length, so a long streaming body that
 * keeps sending lives as long as it sends while a stalled one is cut after `idleMs`. One timer
 * checks every sender (each check costs a comparison), as Node's own connectionsCheckingInterval
 * does for headers; a sender is cut within `idleMs` plus one check interval.
 */
export class SilenceWatch {
  readonly idleMs: number;
  readonly #entries = new Set<Entry>();
  readonly #intervalMs: number;
  #timer: NodeJS.Timeout | undefined;

  constructor(idleMs: number) {
    this.idleMs = idleMs;
    this.#intervalMs = Math.max(10, Math.min(1000, idleMs / 4));
  }

  /** Starts watching `sender`; the returned function stops (call it when the body is done). */
  add(sender: Sender): () => void {
    const entry: Entry = { sender, seen: sender.progress(), since: performance.now() };
    this.#entries.add(entry);
    this.#timer ??= setInterval(() => this.#check(), this.#intervalMs).unref();
    return () => this.#remove(entry);
  }

  get size(): number {
    return this.#entries.size;
  }

  close(): void {
    this.#entries.clear();
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #remove(entry: Entry): void {
    this.#entries.delete(entry);
    if (this.#entries.size === 0) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }

  #check(): void {
    const now = performance.now();
    for (const entry of this.#entries) {
      const progress = entry.sender.progress();
      if (progress !== entry.seen || entry.sender.excused()) {
        entry.seen = progress;
        entry.since = now;
      } else if (now - entry.since >= this.idleMs) {
        this.#remove(entry);
        entry.sender.onSilent();
      }
    }
  }
}
