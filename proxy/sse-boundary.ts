const LF = 0x0a;
const CR = 0x0d;

/**
 * Follows an event stream's bytes and knows whether the stream, as written so far, ends
 * between two events: the place where a `: keepalive` comment may go without landing inside
 * an event. Lines end in CRLF, LF or CR (WHATWG SSE); a blank line ends an event. Chunks can
 * split anywhere, CRLF included. Work per chunk is one native scan for line ends.
 */
export class EventBoundaryTracker {
  /** True at the start of the stream and right after a blank line. */
  #atBoundary = true;
  /** The current line has no characters yet. */
  #lineEmpty = true;
  /** The last byte was CR: an LF right after it belongs to the same line end. */
  #pendingCr = false;
  /** Blank lines that closed a non-empty event block (what the proxy counts as events). */
  events = 0;

  get atBoundary(): boolean {
    return this.#atBoundary;
  }

  /** Feeds `chunk[start, end)`; returns how many events it completed. */
  push(chunk: Uint8Array, start = 0, end = chunk.length): number {
    const before = this.events;
    let pos = start;
    let nextCr = chunk.indexOf(CR, pos);
    let nextLf = chunk.indexOf(LF, pos);
    while (pos < end) {
      if (nextCr !== -1 && nextCr < pos) nextCr = chunk.indexOf(CR, pos);
      if (nextLf !== -1 && nextLf < pos) nextLf = chunk.indexOf(LF, pos);
      let lineEnd = nextCr === -1 ? nextLf : nextLf === -1 ? nextCr : Math.min(nextCr, nextLf);
      if (lineEnd >= end) lineEnd = -1;
      if (lineEnd === -1) {
        // The rest of the range is line content.
        this.#content();
        return this.events - before;
      }
      if (lineEnd > pos) this.#content();
      this.#lineEnding(chunk[lineEnd]!);
      pos = lineEnd + 1;
    }
    return this.events - before;
  }

  #content(): void {
    this.#pendingCr = false;
    this.#lineEmpty = false;
    this.#atBoundary = false;
  }

  #lineEnding(byte: number): void {
    if (byte === LF && this.#pendingCr) {
      this.#pendingCr = false; // second half of CRLF
      return;
    }
    this.#pendingCr = byte === CR;
    if (!this.#lineEmpty) {
      this.#lineEmpty = true;
      return;
    }
    // A blank line: the event (if any) is complete.
    if (!this.#atBoundary) this.events++;
    this.#atBoundary = true;
  }
}
