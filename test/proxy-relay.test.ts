// The HTTP/1.1 forwarding path byte by byte: functions and clients that speak raw HTTP over
// real sockets, for what node:http would never send (cut chunks, extensions, trailers, bad
// framing, pipelining, HTTP/1.0).
import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { waitFor } from '../common/net.ts';
import { type FunctionServer, startFunctionServer } from './support/function-server.ts';
import { curl, type ProxyUnderTest, startProxy, streamEnds } from './support/proxy-harness.ts';

let px: ProxyUnderTest | undefined;
let fn: FunctionServer | undefined;
let raw: Server | undefined;
const kills: (() => void)[] = [];

afterEach(async () => {
  for (const kill of kills.splice(0)) kill();
  await px?.proxy.close();
  px = undefined;
  await fn?.close();
  fn = undefined;
  raw?.close();
  raw = undefined;
});

const SSE_HEAD = 'HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n';

/** A function that answers each read (each request here) with `answer(socket)`, written raw. */
async function rawFunction(answer: (socket: Socket) => void): Promise<string> {
  raw = createServer((socket) => {
    socket.on('data', () => answer(socket));
  });
  raw.listen(0, '127.0.0.1');
  await once(raw, 'listening');
  return `http://127.0.0.1:${(raw.address() as { port: number }).port}`;
}

/** Sends `request` raw to the proxy and returns everything it answers until it closes. */
async function rawExchange(port: number, request: string): Promise<string> {
  const socket = connect({ port, host: '127.0.0.1' });
  await once(socket, 'connect');
  let answer = '';
  socket.setEncoding('latin1').on('data', (d: string) => {
    answer += d;
  });
  socket.write(request);
  await once(socket, 'close');
  return answer;
}

async function proxyTo(upstream: string, flags: string[] = []): Promise<ProxyUnderTest> {
  px = await startProxy(upstream, ['--drain', '0', ...flags]);
  return px;
}

describe('chunked bodies relayed as read', () => {
  it('writes the data of each read as one chunk, however the function framed it', async () => {
    // Three chunks (one with an extension) and a trailer, all in one read: one chunk goes out,
    // then the last one (extensions and trailers describe the function's hop, as for nginx).
    const { proxy } = await proxyTo(
      await rawFunction((socket) =>
        socket.write(
          'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n' +
            '5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n',
        ),
      ),
    );
    const answer = await rawExchange(
      proxy.publicPort,
      'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    expect(answer).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(answer).toMatch(/\r\ntransfer-encoding: chunked\r\n/i);
    expect(answer.slice(answer.indexOf('\r\n\r\n') + 4)).toBe('b\r\nhello world\r\n0\r\n\r\n');
  });

  it('ends with event: error, a clean end for curl, when the function dies inside a chunk', async () => {
    const { url, adminUrl } = await proxyTo(
      await rawFunction((socket) => {
        // 0x20 bytes announced, 16 sent, then the function dies.
        socket.write(`${SSE_HEAD}d\r\ndata: whole\n\n\r\n20\r\ndata: cut in th`);
        setImmediate(() => socket.destroy());
      }),
    );
    const client = curl(`${url}/`);
    kills.push(() => client.child.kill());
    expect(await client.exit).toBe(0);
    const events = client.events();
    expect(events[0]!.data).toBe('whole');
    expect(events.at(-1)!.event).toBe('error');
    expect(JSON.parse(events.at(-1)!.data).error.code).toBe('upstream_closed');
    expect(await waitFor(() => streamEnds(adminUrl).then((e) => e.function_error))).toBe(1);
  });

  it('ends the stream with event: error upstream_failed when the framing is broken', async () => {
    const { url } = await proxyTo(
      await rawFunction((socket) => socket.write(`${SSE_HEAD}d\r\ndata: whole\n\n\r\nzz\r\n`)),
    );
    const client = curl(`${url}/`);
    kills.push(() => client.child.kill());
    expect(await client.exit).toBe(0);
    expect(client.events().map((e) => e.data)[0]).toBe('whole');
    expect(JSON.parse(client.events().at(-1)!.data).error).toEqual({
      code: 'upstream_failed',
      message: expect.stringContaining('chunked body is malformed'),
    });
  });

  it('answers 502 when what comes back is not an HTTP response', async () => {
    const { url } = await proxyTo(await rawFunction((socket) => socket.end('SSH-2.0-OpenSSH_9\r\n\r\n')));
    const response = await fetch(`${url}/`);
    expect(response.status).toBe(502);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe('upstream_unavailable');
  });
});

describe('an event stream with a Content-Length', () => {
  // 0x40 bytes announced; one whole event (13 bytes) and part of the next arrive.
  const LENGTH_HEAD = 'HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 64\r\n\r\n';
  const cutShort = (socket: Socket) => {
    socket.write(`${LENGTH_HEAD}data: whole\n\ndata: cut in th`);
    setImmediate(() => socket.destroy());
  };

  it('goes out chunked, and ends with event: error and a clean end when the function stops short', async () => {
    const { url, adminUrl } = await proxyTo(await rawFunction(cutShort));
    // No --max-time: a response that never ends would fail this test by its own timeout.
    const client = curl(`${url}/`, ['--include']);
    kills.push(() => client.child.kill());
    expect(await client.exit).toBe(0);
    const head = client.stdout().slice(0, client.stdout().indexOf('\r\n\r\n'));
    expect(head).not.toMatch(/content-length/i);
    expect(head).toMatch(/transfer-encoding: chunked/i);
    const events = client.events();
    expect(events[0]!.data).toBe('whole');
    expect(events.at(-1)!.event).toBe('error');
    expect(JSON.parse(events.at(-1)!.data).error.code).toBe('upstream_closed');
    expect(await waitFor(() => streamEnds(adminUrl).then((e) => e.function_error))).toBe(1);
  });

  it('gives an HTTP/1.0 client the events and the event: error, then closes', async () => {
    const { proxy } = await proxyTo(await rawFunction(cutShort));
    const answer = await rawExchange(proxy.publicPort, 'GET / HTTP/1.0\r\nHost: x\r\n\r\n');
    const head = answer.slice(0, answer.indexOf('\r\n\r\n'));
    expect(head).not.toMatch(/content-length|transfer-encoding/i);
    const body = answer.slice(head.length + 4);
    expect(body).toMatch(/^data: whole\n\ndata: cut in th\n\nevent: error\ndata: .*"upstream_closed".*\n\n$/);
  });

  it('relays a complete one to its end, events as they come', async () => {
    const events = 'data: one\n\ndata: two\n\n';
    const { url } = await proxyTo(
      await rawFunction((socket) =>
        socket.write(
          `HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: ${events.length}\r\n\r\n${events}`,
        ),
      ),
    );
    const client = curl(`${url}/`);
    kills.push(() => client.child.kill());
    expect(await client.exit).toBe(0);
    expect(client.stdout()).toBe(events);
  });
});

describe('clients and connections', () => {
  it('gives an HTTP/1.0 client the body without chunk framing', async () => {
    fn = await startFunctionServer();
    const { proxy } = await proxyTo(fn.url);
    const answer = await rawExchange(proxy.publicPort, 'GET /events?count=3 HTTP/1.0\r\nHost: x\r\n\r\n');
    expect(answer).not.toMatch(/transfer-encoding/i);
    expect(answer.slice(answer.indexOf('\r\n\r\n') + 4)).toBe(
      'id: 0\ndata: 0\n\nid: 1\ndata: 1\n\nid: 2\ndata: 2\n\n',
    );
  });

  it('answers pipelined requests in order', async () => {
    fn = await startFunctionServer();
    const { proxy } = await proxyTo(fn.url);
    const answer = await rawExchange(
      proxy.publicPort,
      'GET /events?count=2 HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    );
    const second = answer.indexOf('HTTP/1.1 200', 1);
    expect(second).toBeGreaterThan(0);
    expect(answer.slice(0, second)).toContain('id: 0\ndata: 0\n\n');
    expect(answer.slice(0, second)).toMatch(/\r\n0\r\n\r\n$/); // the first body ended before the second head
    expect(answer.slice(second)).toContain('"url":"/echo"');
  });

  it('reuses its connection to the function from one request to the next', async () => {
    fn = await startFunctionServer();
    const { url } = await proxyTo(fn.url);
    for (let i = 0; i < 3; i++) await (await fetch(`${url}/events?count=2`)).text();
    const ports = new Set(fn.requests.map((r) => r.socket.remotePort));
    expect(fn.requests).toHaveLength(3);
    expect(ports.size).toBe(1);
  });

  it("keeps an idle connection no longer than the function's Keep-Alive timeout allows", async () => {
    let connections = 0;
    const upstream = await rawFunction((socket) =>
      socket.write('HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 2\r\n\r\nok'),
    );
    raw!.on('connection', () => connections++);
    const { url } = await proxyTo(upstream);
    expect(await (await fetch(`${url}/`)).text()).toBe('ok');
    expect(await (await fetch(`${url}/`)).text()).toBe('ok');
    // timeout=1 leaves no second to spare: each request gets a fresh connection.
    expect(connections).toBe(2);
  });

  it('streams a chunked upload on to the function, re-framed', async () => {
    fn = await startFunctionServer();
    const { url } = await proxyTo(fn.url);
    const client = curl(`${url}/echo`, [
      '-H',
      'Transfer-Encoding: chunked',
      '--data-binary',
      'x'.repeat(70_000),
    ]);
    kills.push(() => client.child.kill());
    expect(await client.exit).toBe(0);
    const seen = JSON.parse(client.stdout()) as { bodyLength: number; headers: Record<string, string> };
    expect(seen.bodyLength).toBe(70_000);
    expect(seen.headers['transfer-encoding']).toBe('chunked');
  });
});
