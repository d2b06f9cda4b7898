import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { bearerToken, parseTokens } from '../proxy/auth.ts';
import { hasBody } from '../proxy/body.ts';
import {
  endToEndHeaders,
  endToEndRawHeaders,
  http1RequestHeaders,
  refusedTarget,
  stripPathPrefix,
} from '../proxy/headers.ts';
import { ConcurrencyLimiter, QueueAbortedError, QueueTimeoutError } from '../proxy/limiter.ts';
import { errorEvent, eventStreamCacheControl, isEventStream } from '../proxy/stream-relay.ts';
import { requestHead } from '../proxy/upstream/request-head.ts';

describe('stripPathPrefix', () => {
  it.each([
    ['/echo/stream', '/echo', '/stream'],
    ['/echo', '/echo', '/'],
    ['/echo?x=1', '/echo', '/?x=1'],
    ['/echo/_sluice/map', '/echo', '/_sluice/map'],
    ['/echoes', '/echo', '/echoes'],
    ['/other/echo', '/echo', '/other/echo'],
    ['/stream', '', '/stream'],
    ['/a/b/c', '/a/b', '/c'],
  ])('%s under %s -> %s', (url, prefix, expected) => {
    expect(stripPathPrefix(url, prefix)).toBe(expected);
  });
});

describe('hasBody: which requests the body silence watch follows', () => {
  const rows: Array<[string, IncomingHttpHeaders, boolean]> = [
    ['no length, not chunked (a GET)', {}, false],
    ['content-length: 0', { 'content-length': '0' }, false],
    ['content-length: 12', { 'content-length': '12' }, true],
    ['chunked', { 'transfer-encoding': 'chunked' }, true],
    ['a malformed length (refused by the parser before this)', { 'content-length': 'x' }, false],
  ];
  for (const [name, headers, expected] of rows) {
    it(name, () => expect(hasBody({ headers } as IncomingMessage)).toBe(expected));
  }
});

describe('refusedTarget', () => {
  it.each([
    ['GET', '/path?q', undefined],
    ['POST', '/', undefined],
    ['GET', 'http://example.com/', /origin-form/],
    ['OPTIONS', '*', /origin-form/],
    ['GET', '//evil.example/x', /must not start with \/\//],
    ['CONNECT', 'example.com:443', /CONNECT/],
  ])('%s %s', (method, url, expected) => {
    const refused = refusedTarget(method, url);
    if (expected === undefined) expect(refused).toBeUndefined();
    else expect(refused).toMatch(expected);
  });
});

describe('hop-by-hop headers', () => {
  const request = (): IncomingHttpHeaders => ({
    host: 'fn',
    connection: 'keep-alive, X-Trace-Hop',
    'keep-alive': 'timeout=5',
    'x-trace-hop': '1',
    'transfer-encoding': 'chunked',
    upgrade: 'h2c',
    'proxy-authorization': 'Basic x',
    te: 'trailers',
    'x-end-to-end': 'kept',
  });

  const head = (headers: IncomingHttpHeaders, chunked = false) =>
    requestHead(
      { method: 'POST', url: '/x?y=1', headers, remoteAddress: '10.0.0.7', encrypted: false },
      { requestId: 'id-1', defaultHost: '127.0.0.1:9000', chunked },
    );

  it('requestHead keeps end-to-end fields and TE: trailers, and leaves the request as it was', () => {
    const headers = request();
    const before = structuredClone(headers);
    expect(head(headers)).toBe(
      'POST /x?y=1 HTTP/1.1\r\nhost: fn\r\nte: trailers\r\nx-end-to-end: kept\r\nx-request-id: id-1\r\n' +
        'x-forwarded-for: 10.0.0.7\r\nx-forwarded-port: 80\r\nx-forwarded-proto: http\r\nx-forwarded-host: fn\r\n\r\n',
    );
    expect(headers).toEqual(before);
  });

  it.each([
    ['any other TE value is dropped', { te: 'gzip' }, 'te:', false],
    ['Expect is dropped (Node answered it)', { expect: '100-continue' }, 'expect:', false],
    [
      'a client id is replaced by the one the proxy chose',
      { 'x-request-id': 'theirs' },
      'x-request-id: theirs',
      false,
    ],
    [
      'X-Forwarded-For is appended to',
      { 'x-forwarded-for': '1.2.3.4' },
      'x-forwarded-for: 1.2.3.4,10.0.0.7\r\n',
      true,
    ],
    [
      'X-Forwarded-Host is kept',
      { host: 'a:8080', 'x-forwarded-host': 'b' },
      'x-forwarded-host: b\r\n',
      true,
    ],
    ['X-Forwarded-Port comes from Host', { host: 'a:8080' }, 'x-forwarded-port: 8080\r\n', true],
    ['other X-Forwarded-* pass', { 'x-forwarded-prefix': '/p' }, 'x-forwarded-prefix: /p\r\n', true],
    ['no Host: the function is named', {}, 'host: 127.0.0.1:9000\r\n', true],
    ['repeated fields stay repeated', { 'x-many': ['1', '2'] }, 'x-many: 1\r\nx-many: 2\r\n', true],
  ] as [string, IncomingHttpHeaders, string, boolean][])('%s', (_name, headers, text, present) => {
    expect(head(headers).includes(text)).toBe(present);
  });

  it('a body without a length goes on chunked', () => {
    expect(head({ 'content-length': '3' })).not.toContain('transfer-encoding');
    expect(head({}, true)).toMatch(/transfer-encoding: chunked\r\n\r\n$/);
  });

  it('endToEndRawHeaders reads a response as received, names lower-cased, repeats kept', () => {
    expect(
      endToEndRawHeaders([
        'Content-Type',
        'text/event-stream',
        'Connection',
        'keep-alive, X-Hop',
        'X-Hop',
        '1',
        'Transfer-Encoding',
        'chunked',
        'Set-Cookie',
        'a=1',
        'Set-Cookie',
        'b=2',
      ]),
    ).toEqual({ 'content-type': 'text/event-stream', 'set-cookie': ['a=1', 'b=2'] });
  });

  it('endToEndHeaders copies a response without its hop-by-hop fields', () => {
    expect(endToEndHeaders({ ...request(), 'content-type': 'text/event-stream' })).toEqual({
      host: 'fn',
      'x-end-to-end': 'kept',
      'content-type': 'text/event-stream',
    });
  });
});

describe('http1RequestHeaders: a request passed on over HTTP/1.1 (the activator to a pod)', () => {
  it.each([
    [
      'HTTP/2: pseudo-headers dropped, :authority becomes Host',
      { ':method': 'POST', ':path': '/x', ':scheme': 'http', ':authority': 'fn.ns.svc', accept: '*/*' },
      { host: 'fn.ns.svc', accept: '*/*' },
    ],
    [
      'HTTP/1.1: Host kept, hop-by-hop fields dropped',
      { host: 'fn', connection: 'keep-alive, x-hop', 'x-hop': '1', 'x-end': '2' },
      { host: 'fn', 'x-end': '2' },
    ],
    ['no host at all: none made up', { accept: '*/*' }, { accept: '*/*' }],
  ])('%s', (_name, given, passed) => {
    expect(http1RequestHeaders(given as IncomingHttpHeaders)).toEqual(passed);
  });
});

describe('event-stream responses', () => {
  it.each([
    [undefined, 'no-cache'],
    ['no-transform', 'no-cache, no-transform'],
    ['no-cache, no-transform', 'no-cache, no-transform'],
    ['no-store', 'no-store'],
    ['private, max-age=0', 'no-cache, private, max-age=0'],
  ])('Cache-Control %s -> %s', (upstream, expected) => {
    expect(eventStreamCacheControl(upstream)).toBe(expected);
  });

  it.each([
    ['text/event-stream', true],
    ['text/event-stream; charset=utf-8', true],
    ['Text/Event-Stream', true],
    ['application/json', false],
    [undefined, false],
  ])('isEventStream(%s) = %s', (type, expected) => {
    expect(isEventStream(type)).toBe(expected);
  });

  it('errorEvent is one event whose data is JSON', () => {
    expect(errorEvent('idle_timeout', 'quiet "too" long')).toBe(
      'event: error\ndata: {"error":{"code":"idle_timeout","message":"quiet \\"too\\" long"}}\n\n',
    );
  });
});

describe('tokens', () => {
  it('parseTokens reads one a line, skipping blanks and comments', () => {
    expect(parseTokens('# comment\n  alpha  \r\n\nbeta\n')).toEqual(['alpha', 'beta']);
  });

  it.each([
    ['Bearer abc', 'abc'],
    ['bearer  abc ', 'abc'],
    ['Basic abc', undefined],
    ['Bearer', undefined],
    ['Bearer a b', undefined],
    [undefined, undefined],
  ])('bearerToken(%s) = %s', (authorization, expected) => {
    expect(bearerToken({ headers: { authorization } } as IncomingMessage)).toBe(expected);
  });
});

describe('ConcurrencyLimiter', () => {
  it('grants slots in FIFO order and passes a released slot to the next waiter', async () => {
    const limiter = new ConcurrencyLimiter(1);
    const first = limiter.tryAcquire()!;
    const order: string[] = [];
    const b = limiter.acquire(10_000).then((release) => {
      order.push('b');
      return release;
    });
    const c = limiter.acquire(10_000).then((release) => {
      order.push('c');
      return release;
    });
    expect(limiter.waiting).toBe(2);
    first();
    (await b)();
    (await c)();
    expect(order).toEqual(['b', 'c']);
    expect(limiter.active).toBe(0);
  });

  it('times out and aborts waiters without consuming a slot', async () => {
    const limiter = new ConcurrencyLimiter(1);
    const held = limiter.tryAcquire()!;
    await expect(limiter.acquire(10)).rejects.toBeInstanceOf(QueueTimeoutError);
    const controller = new AbortController();
    const leaving = limiter.acquire(10_000, controller.signal);
    controller.abort();
    await expect(leaving).rejects.toBeInstanceOf(QueueAbortedError);
    expect(limiter.waiting).toBe(0);
    held();
    expect(limiter.active).toBe(0);
  });
});
