import { createRequire } from 'node:module';
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { EventBoundaryTracker } from '../proxy/sse-boundary.ts';
import { ChunkScanner, chunk, LAST_CHUNK } from '../proxy/upstream/chunked.ts';

function parse(text: string): EventSourceMessage[] {
  const events: EventSourceMessage[] = [];
  const parser = createParser({ onEvent: (e) => events.push(e) });
  parser.feed(text);
  return events;
}

const lineEnding = fc.constantFrom('\n', '\r\n', '\r');
// Field values may hold anything but line ends, including ':' and multi-byte text.
const value = fc
  .oneof(
    fc.string({ unit: fc.constantFrom('a', ':', ' ', 'é', '{', '"', '\r', '\n') }),
    fc.string({ unit: 'grapheme' }),
  )
  .map((s) => s.replace(/[\r\n]/g, ''));
const line = fc.oneof(
  value.map((v) => `data: ${v}`),
  value.map((v) => `data:${v}`),
  value.map((v) => `event: ${v.replace(/\s/g, '') || 'x'}`),
  value.map((v) => `id: ${v.replace(/\0/g, '')}`),
  value.map((v) => `: ${v}`),
);
const event = fc.array(fc.tuple(line, lineEnding), { minLength: 1, maxLength: 6 });
const stream = fc.tuple(fc.array(event, { minLength: 1, maxLength: 8 }), lineEnding);

function serialize([events, blank]: [[string, string][][], string]): string {
  return events
    .map((lines) => {
      // A CR line end followed by an LF blank line would read as one CRLF: keep them apart.
      const lastEnd = lines.at(-1)![1];
      return lines.map(([l, end]) => l + end).join('') + (lastEnd === '\r' && blank === '\n' ? '\r' : blank);
    })
    .join('');
}

/** Splits `bytes` at the given cut points (sorted, deduplicated). */
function chunks(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of [...points, bytes.length]) {
    if (p > from) out.push(bytes.subarray(from, p));
    from = p;
  }
  return out;
}

describe('EventBoundaryTracker', () => {
  it('never reports a boundary inside an event: heartbeats inserted wherever it allows leave the events unchanged', () => {
    fc.assert(
      fc.property(stream, fc.array(fc.nat(), { maxLength: 40 }), (generated, cuts) => {
        const text = serialize(generated);
        const bytes = Buffer.from(text);
        const tracker = new EventBoundaryTracker();
        let withHeartbeats = '';
        const pieces: Buffer[] = [];
        for (const chunk of chunks(bytes, cuts)) {
          pieces.push(chunk);
          tracker.push(chunk);
          if (tracker.atBoundary) pieces.push(Buffer.from(': keepalive\n\n'));
        }
        withHeartbeats = Buffer.concat(pieces).toString();
        expect(parse(withHeartbeats)).toEqual(parse(text));
        expect(tracker.events).toBe(generated[0].length);
        expect(tracker.atBoundary).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  it('re-framed one chunk per read, heartbeat chunks added wherever the tracker allows leave the events unchanged', () => {
    // The function writes the stream in chunks of its own; the proxy reads the framed bytes in
    // reads that split anywhere, writes each read's data as one chunk, and adds a heartbeat
    // chunk after a read when the tracker allows (as StreamRelay does).
    const { HTTPParser } = createRequire(import.meta.url)('_http_common');
    fc.assert(
      fc.property(
        stream,
        fc.array(fc.nat(), { maxLength: 10 }),
        fc.array(fc.nat(), { maxLength: 40 }),
        (generated, writes, reads) => {
          const text = serialize(generated);
          const framed = Buffer.concat([
            ...chunks(Buffer.from(text), writes).map((w) => chunk(w)),
            LAST_CHUNK,
          ]);
          const scanner = new ChunkScanner();
          const tracker = new EventBoundaryTracker();
          let data: Buffer[] = [];
          const sink = {
            data: (buf: Buffer, start: number, end: number) => {
              tracker.push(buf, start, end);
              data.push(buf.subarray(start, end));
            },
          };
          const relayed: Buffer[] = [];
          for (const read of chunks(framed, reads)) {
            data = [];
            scanner.scan(read, 0, sink);
            if (data.length > 0) relayed.push(chunk(Buffer.concat(data)));
            if (tracker.atBoundary) relayed.push(chunk(': keepalive\n\n'));
          }
          relayed.push(LAST_CHUNK);
          // The client decodes the framing (Node's parser) and then the events.
          const parser = new HTTPParser();
          parser.initialize(HTTPParser.RESPONSE, {}, 0, 0);
          const body: Buffer[] = [];
          parser[HTTPParser.kOnHeadersComplete] = () => 0;
          parser[HTTPParser.kOnBody] = (b: Buffer) => body.push(Buffer.from(b));
          const result = parser.execute(
            Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'), ...relayed]),
          );
          expect(result).not.toBeInstanceOf(Error);
          expect(parse(Buffer.concat(body).toString())).toEqual(parse(text));
          expect(tracker.events).toBe(generated[0].length);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('a byte-at-a-time stream is at a boundary exactly after each blank line', () => {
    fc.assert(
      fc.property(stream, (generated) => {
        const bytes = Buffer.from(serialize(generated));
        const tracker = new EventBoundaryTracker();
        for (let i = 0; i < bytes.length; i++) {
          tracker.push(bytes.subarray(i, i + 1));
          // The prefix parses to complete events only, and a boundary means a parser that
          // got only the prefix plus end-of-line would dispatch nothing new.
          if (tracker.atBoundary) {
            const prefix = bytes.subarray(0, i + 1).toString();
            expect(parse(`${prefix}\n\n`)).toEqual(parse(prefix));
          }
        }
      }),
      { numRuns: 500 },
    );
  });

  it.each([
    { name: 'LF event', input: ['data: a\n\n'], boundary: true, events: 1 },
    { name: 'CRLF event', input: ['data: a\r\n\r\n'], boundary: true, events: 1 },
    { name: 'CR event', input: ['data: a\r\r'], boundary: true, events: 1 },
    {
      name: 'CRLF split between CR and LF',
      input: ['data: a\r', '\n', '\r', '\n'],
      boundary: true,
      events: 1,
    },
    { name: 'one line end only', input: ['data: a\r\n'], boundary: false, events: 0 },
    { name: 'mid-line', input: ['data: a\n\ndata: b'], boundary: false, events: 1 },
    {
      name: 'multi-line event over writes',
      input: ['data: a\n', 'data: b\n', '\n'],
      boundary: true,
      events: 1,
    },
    { name: 'blank lines alone are not events', input: ['\n\n\r\n'], boundary: true, events: 0 },
    { name: 'nothing yet', input: [], boundary: true, events: 0 },
  ])('$name', ({ input, boundary, events }) => {
    const tracker = new EventBoundaryTracker();
    for (const piece of input) tracker.push(Buffer.from(piece));
    expect(tracker.atBoundary).toBe(boundary);
    expect(tracker.events).toBe(events);
  });
});
