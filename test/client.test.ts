import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { parseHeaders, parseInputs } from '../cli/client-run.ts';
import {
  ConnectionError,
  functionBase,
  HttpStatusError,
  MapFailedError,
  type MapResult,
  map,
  NotEventStreamError,
  type StreamEvent,
  stream,
} from '../client/index.ts';

// Each test runs a real HTTP server on loopback that speaks the wire format under test
// (SSE with ids, the SPEC §2 map events) and breaks connections the way networks do.
const servers: Server[] = [];

async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const server = createServer(handler);
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

afterEach(async () => {
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});

function sse(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.flushHeaders();
}

async function collect<T>(iterator: AsyncIterable<T>): Promise<T[]> {
  const items: T[] = [];
  for await (const item of iterator) items.push(item);
  return items;
}

describe('stream()', () => {
  it('yields each event before the server has written the next one', async () => {
    let release!: () => void;
    const secondMayGo = new Promise<void>((r) => {
      release = r;
    });
    const url = await serve(async (_req, res) => {
      sse(res);
      res.write('event: step\ndata: {"n":1}\n\n');
      await secondMayGo; // the client must have seen event 1 already, or this never resolves
      res.end(': comment\ndata: line one\ndata: line two\n\n');
    });
    const seen: StreamEvent[] = [];
    for await (const event of stream(url)) {
      seen.push(event);
      if (seen.length === 1) release();
    }
    expect(seen).toEqual([
      { event: 'step', data: '{"n":1}', id: undefined },
      { event: 'message', data: 'line one\nline two', id: undefined },
    ]);
  });

  it('sends a JSON body with POST and the given headers', async () => {
    const url = await serve(async (req, res) => {
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      sse(res);
      res.end(
        `data: ${JSON.stringify({ method: req.method, type: req.headers['content-type'], auth: req.headers.authorization, body: Buffer.concat(chunks).toString() })}\n\n`,
      );
    });
    const [event] = await collect(
      stream(url, { body: { prompt: 'hi' }, headers: { authorization: 'Bearer t' } }),
    );
    expect(JSON.parse(event!.data)).toEqual({
      method: 'POST',
      type: 'application/json',
      auth: 'Bearer t',
      body: '{"prompt":"hi"}',
    });
  });

  it('reconnects with Last-Event-ID after the connection drops and resumes after it', async () => {
    const lastEventIds: (string | undefined)[] = [];
    const url = await serve((req, res) => {
      const last = req.headers['last-event-id'] as string | undefined;
      lastEventIds.push(last);
      sse(res);
      const from = last === undefined ? 0 : Number(last) + 1;
      if (from === 0) {
        res.write('retry: 10\n\nid: 0\ndata: zero\n\nid: 1\ndata: one\n\n');
        setImmediate(() => res.socket?.destroy()); // mid-stream drop, no clean end
        return;
      }
      res.end(`id: 2\ndata: two\n\nid: 3\ndata: three\n\n`);
    });
    const events = await collect(stream(url));
    expect(events.map((e) => e.data)).toEqual(['zero', 'one', 'two', 'three']);
    expect(lastEventIds).toEqual([undefined, '1']);
  });

  it('fails with ERR_CONNECTION when a stream without ids drops', async () => {
    const url = await serve((_req, res) => {
      sse(res);
      res.write('data: only\n\n');
      setImmediate(() => res.socket?.destroy());
    });
    const seen: string[] = [];
    const error = await (async () => {
      for await (const event of stream(url, { retryMs: 10 })) seen.push(event.data);
    })().catch((err: unknown) => err);
    expect(seen).toEqual(['only']);
    expect(error).toBeInstanceOf(ConnectionError);
    expect((error as ConnectionError).code).toBe('ERR_CONNECTION');
  });

  it('gives up after maxReconnects when every reconnection drops before an event', async () => {
    let requests = 0;
    const url = await serve((req, res) => {
      requests += 1;
      if (req.headers['last-event-id']) return res.socket?.destroy();
      sse(res);
      res.write('id: 7\ndata: x\n\n');
      setImmediate(() => res.socket?.destroy());
    });
    const error = await collect(stream(url, { retryMs: 5, maxReconnects: 2 })).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(ConnectionError);
    expect((error as Error).message).toContain('gave up after 2 reconnections');
    expect(requests).toBe(3);
  });

  it('turns an error status into HttpStatusError with the JSON error code', async () => {
    const url = await serve((_req, res) => {
      res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1' });
      res.end('{"error":{"code":"queue_timeout","message":"no free slot"}}');
    });
    const error = (await collect(stream(url)).catch((err: unknown) => err)) as HttpStatusError;
    expect(error).toBeInstanceOf(HttpStatusError);
    expect([error.code, error.status, error.errorCode]).toEqual(['ERR_HTTP_STATUS', 503, 'queue_timeout']);
    expect(error.message).toContain('no free slot');
  });

  it('refuses a non-event-stream body unless asked for chunks', async () => {
    const url = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('segment 0\n');
    });
    const error = await collect(stream(url)).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(NotEventStreamError);
    const chunks = await collect(stream(url, { otherContent: 'chunks' }));
    expect(chunks.map((c) => c.data).join('')).toBe('segment 0\n');
  });

  it('stops with the abort reason when the signal fires, and the server sees the close', async () => {
    let serverSawClose!: () => void;
    const closed = new Promise<void>((r) => {
      serverSawClose = r;
    });
    const url = await serve((_req, res) => {
      sse(res);
      res.write('data: first\n\n');
      res.on('close', serverSawClose);
    });
    const controller = new AbortController();
    const reason = new Error('user left');
    const error = await (async () => {
      for await (const _event of stream(url, { signal: controller.signal })) controller.abort(reason);
    })().catch((err: unknown) => err);
    expect(error).toBe(reason);
    await closed;
  });
});

describe('map()', () => {
  function mapEvent(name: string, data: unknown, id?: number): string {
    return `event: ${name}\n${id === undefined ? '' : `id: ${id}\n`}data: ${JSON.stringify(data)}\n\n`;
  }

  it('posts inputs under the function path, yields each index once across a resume, returns the summary', async () => {
    const requests: { method?: string; url?: string; lastEventId?: string; body: string }[] = [];
    const url = await serve(async (req, res) => {
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      requests.push({
        method: req.method,
        url: req.url,
        lastEventId: req.headers['last-event-id'] as string | undefined,
        body: Buffer.concat(chunks).toString(),
      });
      sse(res);
      if (req.method === 'POST') {
        res.write('retry: 10\n\n');
        res.write(mapEvent('accepted', { requestId: 'r1', count: 4 }));
        res.write(mapEvent('result', { index: 0, output: 'a', replica: 'fn-0', ms: 3 }, 0));
        res.write(mapEvent('result', { index: 1, output: 'b', replica: 'fn-1', ms: 4 }, 1));
        setImmediate(() => res.socket?.destroy());
        return;
      }
      // The resume replays from its own cursor, so index 1 comes again: the client drops it.
      res.write(mapEvent('result', { index: 1, output: 'b', replica: 'fn-1', ms: 4 }, 1));
      res.write(mapEvent('error', { index: 3, error: { status: 500, message: 'boom' }, attempts: 3 }, 3));
      res.write(mapEvent('result', { index: 2, output: { c: true }, replica: 'fn-0', ms: 5 }, 2));
      res.end(mapEvent('done', { requestId: 'r1', count: 4, failed: 1 }));
    });
    const accepted: unknown[] = [];
    const iterator = map(`${url}/fn`, ['w', 'x', 'y', 'z'], {
      order: 'completion',
      onAccepted: (a) => accepted.push(a),
    });
    const results: MapResult[] = [];
    let next = await iterator.next();
    while (!next.done) {
      results.push(next.value);
      next = await iterator.next();
    }
    expect(next.value).toEqual({ requestId: 'r1', count: 4, failed: 1 });
    expect(accepted).toEqual([{ requestId: 'r1', count: 4, cancelAfterDisconnectSeconds: null }]);
    expect(results).toEqual([
      { index: 0, ok: true, output: 'a', replica: 'fn-0', ms: 3 },
      { index: 1, ok: true, output: 'b', replica: 'fn-1', ms: 4 },
      { index: 3, ok: false, error: { status: 500, message: 'boom' }, attempts: 3 },
      { index: 2, ok: true, output: { c: true }, replica: 'fn-0', ms: 5 },
    ]);
    expect(requests.map((r) => [r.method, r.url, r.lastEventId])).toEqual([
      ['POST', '/fn/_sluice/map', undefined],
      ['GET', '/fn/_sluice/map/r1', '1'],
    ]);
    expect(JSON.parse(requests[0]!.body)).toEqual({
      inputs: ['w', 'x', 'y', 'z'],
      order: 'completion',
      keep: false,
    });
  });

  it("resumes only within the proxy's grace, then gives up naming it", async () => {
    let gets = 0;
    const url = await serve((req, res) => {
      if (req.method === 'POST') {
        sse(res);
        res.write(mapEvent('accepted', { requestId: 'g', count: 3, cancelAfterDisconnectSeconds: 1 }));
        res.write(mapEvent('result', { index: 0, output: 1 }, 0));
        setImmediate(() => res.socket?.destroy());
        return;
      }
      if (req.method === 'GET') gets += 1;
      res.socket?.destroy();
    });
    const error = await collect(map(url, [1, 2, 3], { maxReconnects: 100 })).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(ConnectionError);
    expect((error as Error).message).toContain('could not resume within its 1 s grace');
    expect(gets).toBeGreaterThanOrEqual(1);
    expect(gets).toBeLessThan(100);
  });

  it('cancels the map (DELETE) when the caller stops early, unless it is kept', async () => {
    const requests: string[] = [];
    const url = await serve((req, res) => {
      requests.push(`${req.method} ${req.url}`);
      if (req.method === 'DELETE') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('{"requestId":"c","cancelled":true}');
        return;
      }
      sse(res);
      res.write(mapEvent('accepted', { requestId: 'c', count: 3, cancelAfterDisconnectSeconds: 30 }));
      res.write(mapEvent('result', { index: 0, output: 1 }, 0));
    });
    for await (const result of map(`${url}/fn`, [1, 2, 3])) if (result.index === 0) break;
    expect(requests).toEqual(['POST /fn/_sluice/map', 'DELETE /fn/_sluice/map/c']);
    requests.length = 0;
    for await (const result of map(`${url}/fn`, [1, 2, 3], { keep: true })) if (result.index === 0) break;
    expect(requests).toEqual(['POST /fn/_sluice/map']);
  });

  it("passes a function's JSON error body through, and reports a cancelled summary", async () => {
    const url = await serve((_req, res) => {
      sse(res);
      res.write(mapEvent('accepted', { requestId: 'j', count: 3, cancelAfterDisconnectSeconds: 30 }));
      res.write(
        mapEvent(
          'error',
          { index: 1, error: { status: 500, body: { error: { code: 'X' } } }, attempts: 3 },
          1,
        ),
      );
      res.end(mapEvent('done', { requestId: 'j', count: 3, failed: 1, cancelled: 2 }));
    });
    const iterator = map(url, [1, 2, 3], { order: 'completion' });
    const first = await iterator.next();
    expect(first.value).toEqual({
      index: 1,
      ok: false,
      error: { status: 500, body: { error: { code: 'X' } } },
      attempts: 3,
    });
    expect((await iterator.next()).value).toEqual({ requestId: 'j', count: 3, failed: 1, cancelled: 2 });
  });

  it('does not re-post inputs when the stream breaks before accepted', async () => {
    let posts = 0;
    const url = await serve((_req, res) => {
      posts += 1;
      res.socket?.destroy();
    });
    const error = await collect(map(url, [1, 2])).catch((err: unknown) => err);
    expect(error).toBeInstanceOf(ConnectionError);
    expect((error as Error).message).toContain('before the proxy accepted');
    expect(posts).toBe(1);
  });

  it('reports a 400 from the proxy as HttpStatusError naming the field', async () => {
    const url = await serve((_req, res) => {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end('{"error":{"code":"bad_request","message":"inputs: expected an array"}}');
    });
    const error = (await collect(map(url, [1])).catch((err: unknown) => err)) as HttpStatusError;
    expect([error.status, error.errorCode]).toEqual([400, 'bad_request']);
    expect(error.message).toContain('inputs: expected an array');
  });

  it('ends with MapFailedError when the proxy fails the whole map (an error naming no index)', async () => {
    const url = await serve((_req, res) => {
      sse(res);
      res.write(mapEvent('accepted', { requestId: 'r', count: 2 }));
      res.write(mapEvent('result', { index: 0, output: 1 }, 0));
      res.end(mapEvent('error', { error: { code: 'map_failed', message: 'the map was cancelled' } }));
    });
    const seen: number[] = [];
    const error = await (async () => {
      for await (const result of map(url, [1, 2])) seen.push(result.index);
    })().catch((err: unknown) => err);
    expect(seen).toEqual([0]);
    expect(error).toBeInstanceOf(MapFailedError);
    expect([(error as MapFailedError).code, (error as MapFailedError).errorCode]).toEqual([
      'ERR_MAP_FAILED',
      'map_failed',
    ]);
  });

  it('rejects a result whose index is outside the accepted count', async () => {
    const url = await serve((_req, res) => {
      sse(res);
      res.write(mapEvent('accepted', { requestId: 'r', count: 1 }));
      res.end(mapEvent('result', { index: 5, output: 1 }, 5));
    });
    const error = await collect(map(url, [1])).catch((err: unknown) => err);
    expect((error as { code?: string }).code).toBe('ERR_MAP_PROTOCOL');
  });
});

describe('client helpers', () => {
  it.each([
    ['http://h/', 'http://h/'],
    ['http://h/echo', 'http://h/echo/'],
    ['http://h/echo/', 'http://h/echo/'],
    ['http://h/echo/_sluice/map', 'http://h/echo/'],
    ['http://h/echo?x=1', 'http://h/echo/'],
  ])('functionBase(%s) = %s', (input, expected) => {
    expect(functionBase(input).href).toBe(expected);
  });

  it('functionBase refuses what is not a URL', () => {
    expect(() => functionBase('localhost:8080')).toThrow(/not an http\(s\) URL/);
    expect(() => functionBase('::')).toThrow(/not a URL/);
  });

  it.each([
    ['[1, 2, 3]', [1, 2, 3]],
    ['{"a":1}\n\n{"a":2}\n', [{ a: 1 }, { a: 2 }]],
    [
      '[1,2]\n[3,4]\n',
      [
        [1, 2],
        [3, 4],
      ],
    ],
    ['"x"', ['x']],
  ])('parseInputs(%j)', (source, expected) => {
    expect(parseInputs(source, 'in')).toEqual(expected);
  });

  it.each([
    ['{"a":1}\n{oops', 'in:2: not JSON'],
    ['\n\n', 'in: no inputs'],
  ])('parseInputs(%j) fails with %s', (source, message) => {
    expect(() => parseInputs(source, 'in')).toThrow(message);
  });

  it('parseHeaders splits at the first colon and refuses pairs without a name', () => {
    expect(parseHeaders(['Authorization: Bearer a:b', 'X-A:1'])).toEqual({
      authorization: 'Bearer a:b',
      'x-a': '1',
    });
    expect(() => parseHeaders(['novalue'])).toThrow(/expected Name:value/);
  });
});
