import { once } from 'node:events';
import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort, waitFor } from '../common/net.ts';
import { FunctionCaller } from '../proxy/map/call-function.ts';

// The map worker's HTTP/1.1 client against a real TCP server that answers each request
// with the bytes a test scripts (what an HTTP server library might send, or a crash).

const servers: Server[] = [];
const sockets = new Set<Socket>();
afterEach(() => {
  for (const server of servers.splice(0)) server.close();
  for (const socket of sockets) socket.destroy();
  sockets.clear();
});

interface Scripted {
  url: URL;
  /** Connections accepted so far. */
  connections: () => number;
  /** Resolves when a connection closes (the client aborted or finished with it). */
  closed: Promise<void>;
}

/** `answer(n, socket)` runs for the n-th request (0-based) once its bytes arrived. */
async function scripted(answer: (n: number, socket: Socket, request: string) => void): Promise<Scripted> {
  let requests = 0;
  let connections = 0;
  let closedOnce!: () => void;
  const closed = new Promise<void>((resolve) => {
    closedOnce = resolve;
  });
  const server = createServer((socket) => {
    connections++;
    sockets.add(socket);
    let buffered = '';
    socket.on('close', () => closedOnce());
    socket.on('data', (chunk) => {
      buffered += chunk.toString('latin1');
      const end = buffered.indexOf('\r\n\r\n');
      const length = Number(/content-length: (\d+)/i.exec(buffered)?.[1] ?? 0);
      if (end === -1 || buffered.length < end + 4 + length) return;
      const request = buffered;
      buffered = '';
      answer(requests++, socket, request);
    });
  });
  servers.push(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/run?x=1`),
    connections: () => connections,
    closed,
  };
}

const caller = (url: URL, maxBytes = 1_000) =>
  new FunctionCaller({ url, maxSockets: 2, maxBytes: () => maxBytes, timeoutMs: 60_000 });
const input = Buffer.from('{"n":1}');
const ok = (body: string, extra = '') =>
  `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n${extra}\r\n${body}`;

describe('FunctionCaller (the map worker HTTP client)', () => {
  it('POSTs the input as JSON to the map path and reuses the connection', async () => {
    const seen: string[] = [];
    const server = await scripted((_n, socket, request) => {
      seen.push(request);
      socket.write(ok('{"a":1}'));
    });
    const client = caller(server.url);
    expect(await client.call(input).done).toEqual({ kind: 'ok', outputJson: '{"a":1}' });
    expect(await client.call(input).done).toEqual({ kind: 'ok', outputJson: '{"a":1}' });
    expect(server.connections()).toBe(1);
    expect(seen[0]).toMatch(/^POST \/run\?x=1 HTTP\/1\.1\r\n/);
    expect(seen[0]).toMatch(/\r\nContent-Type: application\/json\r\n/);
    expect(seen[0]).toMatch(/\r\nContent-Length: 7\r\n\r\n\{"n":1\}$/);
    client.destroy();
  });

  it('opens a new connection after one the function closed', async () => {
    const server = await scripted((_n, socket) => socket.end(ok('1', 'Connection: close\r\n')));
    const client = caller(server.url);
    for (let i = 0; i < 3; i++)
      expect(await client.call(input).done).toEqual({ kind: 'ok', outputJson: '1' });
    expect(server.connections()).toBe(3);
    client.destroy();
  });

  it('retries once on a fresh connection when a kept-alive one closes before any answer', async () => {
    // The second request meets a connection the function is closing (its idle timeout).
    const server = await scripted((n, socket) => (n === 1 ? socket.destroy() : socket.write(ok('"x"'))));
    const client = caller(server.url);
    await client.call(input).done;
    expect(await client.call(input).done).toEqual({ kind: 'ok', outputJson: '"x"' });
    expect(server.connections()).toBe(2);
    client.destroy();
  });

  it.each<[string, string, object]>([
    [
      'a 4xx is the input refused, its JSON body kept',
      'HTTP/1.1 422 Unprocessable\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"why":"bad"}',
      { kind: 'rejected', error: { status: 422, body: { why: 'bad' } } },
    ],
    [
      'a 5xx may be retried, its text kept',
      'HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy',
      { kind: 'failed', error: { status: 503, message: 'busy' } },
    ],
    [
      'an answer that breaks off',
      'HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npartial',
      { kind: 'failed', error: { status: 502, message: expect.stringMatching(/connection broke/) } },
    ],
    [
      'an answer larger than a record',
      `HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n${'x'.repeat(2000)}`,
      { kind: 'too_large' },
    ],
    ['not HTTP at all', 'garbage\r\n\r\n', { kind: 'failed', error: { status: 502 } }],
  ])('%s', async (_what, answer, expected) => {
    const server = await scripted((_n, socket) => socket.end(answer));
    const client = caller(server.url);
    expect(await client.call(input).done).toMatchObject(expected);
    client.destroy();
  });

  it('reports a function that refuses connections as unreachable (not a failed attempt)', async () => {
    const client = caller(new URL(`http://127.0.0.1:${await freePort()}/`));
    expect(await client.call(input).done).toMatchObject({ kind: 'unreachable', message: /ECONNREFUSED/ });
    client.destroy();
  });

  it('closes the connection at once on abort, so the function sees its caller go', async () => {
    let received = false;
    const server = await scripted(() => {
      received = true; // and never answers
    });
    const client = caller(server.url);
    const call = client.call(input);
    await waitFor(() => received, { what: 'the function to get the call' });
    call.abort('cancelled');
    expect(await call.done).toEqual({ kind: 'aborted' });
    await server.closed;
    const timedOut = client.call(input);
    await waitFor(() => server.connections() === 2, { what: 'a second connection' });
    timedOut.abort('timeout');
    expect(await timedOut.done).toMatchObject({ kind: 'failed', error: { status: 504 } });
    client.destroy();
  });
});
