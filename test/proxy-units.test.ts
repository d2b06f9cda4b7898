import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { bearerToken, parseTokens } from '../proxy/auth.ts';
import { endToEndHeaders, refusedTarget, stripHopByHop, stripPathPrefix } from '../proxy/headers.ts';
import { ConcurrencyLimiter, QueueAbortedError, QueueTimeoutError } from '../proxy/limiter.ts';
import { errorEvent, eventStreamCacheControl, isEventStream } from '../proxy/stream-relay.ts';

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

  it('stripHopByHop keeps end-to-end fields and TE: trailers', () => {
    const headers = request();
    stripHopByHop(headers);
    expect(headers).toEqual({ host: 'fn', te: 'trailers', 'x-end-to-end': 'kept' });
  });

  it('drops any other TE value', () => {
    const headers: IncomingHttpHeaders = { te: 'gzip' };
    stripHopByHop(headers);
    expect(headers).toEqual({});
  });

  it('endToEndHeaders copies a response without its hop-by-hop fields', () => {
    expect(endToEndHeaders({ ...request(), 'content-type': 'text/event-stream' })).toEqual({
      host: 'fn',
      'x-end-to-end': 'kept',
      'content-type': 'text/event-stream',
    });
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
