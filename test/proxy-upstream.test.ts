import { createRequire } from 'node:module';
import fc from 'fast-check';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { BatchHistogram } from '../proxy/batch-histogram.ts';
import { STREAM_END_REASONS, streamEndReason } from '../proxy/stream-end.ts';
import { ChunkFramingError, ChunkScanner } from '../proxy/upstream/chunked.ts';
import {
  bodyFraming,
  keepAliveTimeout,
  ResponseHeadError,
  ResponseHeadParser,
} from '../proxy/upstream/response-head.ts';

/** Decodes a whole chunked response body with Node's own parser (llhttp): the reference. */
function llhttpBody(framed: Buffer): { body: Buffer; complete: boolean } {
  const { HTTPParser } = createRequire(import.meta.url)('_http_common');
  const parser = new HTTPParser();
  parser.initialize(HTTPParser.RESPONSE, {}, 0, 0);
  const parts: Buffer[] = [];
  let complete = false;
  parser[HTTPParser.kOnHeadersComplete] = () => 0;
  parser[HTTPParser.kOnBody] = (b: Buffer) => parts.push(Buffer.from(b));
  parser[HTTPParser.kOnMessageComplete] = () => {
    complete = true;
  };
  const result = parser.execute(
    Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n'), framed]),
  );
  if (result instanceof Error) throw result;
  return { body: Buffer.concat(parts), complete };
}

/** Splits `bytes` at the given cut points. */
function pieces(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of [...points, bytes.length]) {
    if (p > from) out.push(bytes.subarray(from, p));
    from = p;
  }
  return out;
}

const data = fc.uint8Array({ minLength: 1, maxLength: 300 }).map((a) => Buffer.from(a));
const extension = fc.constantFrom('', ';a=1', ';name="v";b');
const trailers = fc.constantFrom('', 'x-trailer: 1\r\n', 'a: b\r\nc: d\r\n');
const body = fc.tuple(fc.array(fc.tuple(data, extension, fc.boolean()), { maxLength: 8 }), trailers);

/** Frames chunks the way servers may: any hex case, extensions, trailers. */
function frame([chunks, trailer]: [[Buffer, string, boolean][], string]): { framed: Buffer; data: Buffer } {
  const parts: Buffer[] = [];
  for (const [bytes, ext, upper] of chunks) {
    const size = bytes.length.toString(16);
    parts.push(Buffer.from(`${upper ? size.toUpperCase() : size}${ext}\r\n`), bytes, Buffer.from('\r\n'));
  }
  parts.push(Buffer.from(`0\r\n${trailer}\r\n`));
  return { framed: Buffer.concat(parts), data: Buffer.concat(chunks.map(([bytes]) => bytes)) };
}

function collector() {
  const parts: Buffer[] = [];
  return {
    parts,
    data: (buf: Buffer, start: number, end: number) => parts.push(Buffer.from(buf.subarray(start, end))),
  };
}

describe('ChunkScanner', () => {
  it('finds the same data and the same end as llhttp, however the reads split the framing', () => {
    fc.assert(
      fc.property(
        body,
        fc.array(fc.nat(), { maxLength: 30 }),
        fc.uint8Array({ maxLength: 5 }),
        (generated, cuts, after) => {
          const { framed, data } = frame(generated);
          expect(llhttpBody(framed).body).toEqual(data);
          const scanner = new ChunkScanner();
          const sink = collector();
          const stream = Buffer.concat([framed, Buffer.from(after)]);
          let consumed = 0;
          let endAt = -1;
          for (const piece of pieces(stream, cuts)) {
            if (endAt !== -1) break;
            const end = scanner.scan(piece, 0, sink);
            if (end !== -1) endAt = consumed + end;
            consumed += piece.length;
          }
          expect(Buffer.concat(sink.parts)).toEqual(data);
          expect(endAt).toBe(framed.length); // nothing after the last chunk is taken for the body
          expect(scanner.done).toBe(true);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it.each([
    ['not hex', 'zz\r\n'],
    ['bare LF after the size', '5\nhello\r\n'],
    ['no CRLF after the data', '5\r\nhelloXX'],
    ['junk after the size', '5x\r\n'],
    ['whitespace after the size (as llhttp, strict)', '5 \r\n'],
    ['a size too large', 'fffffffffffffff\r\n'],
  ])('refuses %s', (_name, text) => {
    expect(() => new ChunkScanner().scan(Buffer.from(text), 0, collector())).toThrow(ChunkFramingError);
  });
});

describe('ResponseHeadParser (Node parses, the body is left alone)', () => {
  it('stops at the end of the head, whatever follows, across reads', () => {
    const parser = new ResponseHeadParser();
    const first = Buffer.from('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Enc');
    expect(parser.push(first)).toBeUndefined();
    const second = Buffer.from('oding: chunked\r\n\r\n5\r\nhello\r\n');
    const parsed = parser.push(second)!;
    expect(parsed.head).toEqual({
      statusCode: 200,
      statusMessage: 'OK',
      rawHeaders: ['Content-Type', 'text/event-stream', 'Transfer-Encoding', 'chunked'],
      keepAlive: true,
    });
    expect(second.subarray(parsed.bodyStart).toString()).toBe('5\r\nhello\r\n');
  });

  it('skips 1xx interim heads and keeps all of more than 32 headers', () => {
    const many = Array.from({ length: 40 }, (_, i) => `X-H${i}: ${i}\r\n`).join('');
    const parser = new ResponseHeadParser();
    const text = `HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\n${many}Content-Length: 2\r\n\r\nok`;
    const parsed = parser.push(Buffer.from(text))!;
    expect(parsed.head.statusCode).toBe(201);
    expect(parsed.head.rawHeaders).toHaveLength(82);
    expect(parsed.head.rawHeaders.slice(0, 2)).toEqual(['X-H0', '0']);
    expect(text.slice(parsed.bodyStart)).toBe('ok');
  });

  it('reports a connection that ends with the body as not reusable', () => {
    const parser = new ResponseHeadParser();
    expect(parser.push(Buffer.from('HTTP/1.1 200 OK\r\n\r\nrest'))!.head.keepAlive).toBe(false);
    parser.reset();
    expect(
      parser.push(Buffer.from('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n'))!.head
        .keepAlive,
    ).toBe(false);
  });

  it('refuses what is not an HTTP response', () => {
    expect(() => new ResponseHeadParser().push(Buffer.from('SSH-2.0-OpenSSH\r\n\r\n'))).toThrow(
      ResponseHeadError,
    );
  });
});

describe('bodyFraming (RFC 9112 §6.3)', () => {
  const head = (statusCode: number, rawHeaders: string[]) => ({
    statusCode,
    statusMessage: '',
    rawHeaders,
    keepAlive: true,
  });
  it.each([
    ['GET', 200, ['Transfer-Encoding', 'chunked'], { kind: 'chunked' }],
    ['GET', 200, ['transfer-encoding', 'gzip, chunked'], { kind: 'chunked' }],
    ['GET', 200, ['Transfer-Encoding', 'gzip'], { kind: 'close' }],
    ['GET', 200, ['Content-Length', '12'], { kind: 'length', length: 12 }],
    ['GET', 200, ['Content-Length', '0'], { kind: 'none' }],
    ['GET', 200, [], { kind: 'close' }],
    ['HEAD', 200, ['Content-Length', '12'], { kind: 'none' }],
    ['GET', 204, [], { kind: 'none' }],
    ['GET', 304, ['Transfer-Encoding', 'chunked'], { kind: 'none' }],
  ])('%s → %i %j', (method, status, raw, expected) => {
    expect(bodyFraming(method, head(status, raw))).toEqual(expected);
  });
});

describe('keepAliveTimeout', () => {
  it.each([
    [['Keep-Alive', 'timeout=5'], 5],
    [['keep-alive', 'max=100, timeout=30'], 30],
    [['Keep-Alive', 'max=100'], undefined],
    [['Connection', 'keep-alive'], undefined],
  ])('%j → %s', (rawHeaders, seconds) => {
    expect(keepAliveTimeout({ statusCode: 200, statusMessage: '', rawHeaders, keepAlive: true })).toBe(
      seconds,
    );
  });
});

describe('stream end reasons', () => {
  it.each([
    [undefined, false, 'complete'],
    [undefined, true, 'client_gone'],
    ['upstream_unavailable', false, 'function_error'],
    ['upstream_failed', false, 'function_error'],
    ['upstream_closed', true, 'function_error'],
    ['idle_timeout', false, 'idle_timeout'],
    ['max_duration', true, 'max_duration'],
    ['shutdown', false, 'drain'],
    ['body_too_large', false, undefined],
    ['internal', false, undefined],
  ] as const)('%s (client gone: %s) → %s', (code, clientGone, reason) => {
    expect(streamEndReason(code, clientGone)).toBe(reason);
  });

  it('names the six reasons of SPEC §2', () => {
    expect([...STREAM_END_REASONS].sort()).toEqual(
      ['client_gone', 'complete', 'drain', 'function_error', 'idle_timeout', 'max_duration'].sort(),
    );
  });
});

describe('BatchHistogram', () => {
  it('exposes what prom-client would for the same observations, many at once', async () => {
    const registry = new Registry();
    const histogram = new BatchHistogram({
      name: 'gaps',
      help: 'h',
      buckets: [0.1, 1],
      registers: [registry],
    });
    histogram.observe(0, 3);
    histogram.observe(0.5);
    histogram.observe(7);
    expect(await registry.metrics()).toBe(
      [
        '# HELP gaps h',
        '# TYPE gaps histogram',
        'gaps_bucket{le="0.1"} 3',
        'gaps_bucket{le="1"} 4',
        'gaps_bucket{le="+Inf"} 5',
        'gaps_sum 7.5',
        'gaps_count 5',
        '',
      ].join('\n'),
    );
  });
});
