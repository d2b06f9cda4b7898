import { once } from 'node:events';
import { createServer, type IncomingMessage, request, type Server } from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MAX_JSON_DEPTH } from '../common/limits.ts';
import { waitFor } from '../common/net.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { type ProxyUnderTest, startProxy } from './support/proxy-harness.ts';

// Careless and hostile input at the proxy's public port, over real sockets: paths that try to
// slip past routing, JSON nested to blow a stack, headers and bodies that trickle.

/** A function that answers every request with the path it received, once the whole body is in. */
async function pathEcho(): Promise<{ server: Server; url: string; seen: IncomingMessage[] }> {
  const seen: IncomingMessage[] = [];
  const server = createServer((req, res) => {
    seen.push(req);
    let bytes = 0;
    req.on('data', (c: Buffer) => {
      bytes += c.length;
    });
    req.on('end', () => res.end(JSON.stringify({ url: req.url, bytes })));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

/** A raw request target (no client-side normalisation, unlike fetch or curl). */
function get(base: string, target: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const { hostname, port } = new URL(base);
    const req = request({ host: hostname, port, path: target, agent: false }, async (res) => {
      let body = '';
      for await (const chunk of res) body += chunk;
      resolve({ status: res.statusCode ?? 0, body });
    });
    req.on('error', reject);
    req.end();
  });
}

/** A raw socket to the proxy, for clients that send slowly or not at all. */
async function rawSocket(
  base: string,
): Promise<{ socket: Socket; received: () => string; closed: Promise<unknown> }> {
  const { hostname, port } = new URL(base);
  const socket = connect({ host: hostname, port: Number(port) });
  await once(socket, 'connect');
  let received = '';
  socket.on('data', (d: Buffer) => {
    received += d.toString();
  });
  // A client still sending when the server closes gets a reset: that is not the test's failure.
  socket.on('error', () => {});
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  return { socket, received: () => received, closed };
}

const bodyOf = (response: string) => response.slice(response.indexOf('\r\n\r\n') + 4);

describe('paths are normalised once, before routing and prefix stripping', () => {
  let fn: Awaited<ReturnType<typeof pathEcho>>;
  let proxy: ProxyUnderTest;

  beforeAll(async () => {
    fn = await pathEcho();
    proxy = await startProxy(fn.url, ['--path-prefix', '/echo']);
  });

  afterAll(async () => {
    await proxy?.proxy.close();
    fn?.server.close();
  });

  it.each([
    ['/echo/%2e%2e/_sluice/map', 'proxy'],
    ['/other/../echo/_sluice/map', 'proxy'],
    ['/echo//_sluice/map', 'proxy'],
    ['/echo/%2F_sluice/map', 'proxy'],
    ['/echo/%5fsluice/map', 'proxy'],
    ['/echo/x/.%2E/%2e/_sluice/map', 'proxy'],
    ['/echo/%252e%252e/_sluice/map', '/%252e%252e/_sluice/map'],
    ['/echo/a//b/./c/../d?q=%2e%2e/..', '/a/b/d?q=%2e%2e/..'],
    ['/echo/%61%2Fb%20c', '/a/b%20c'],
    ['/other/../echo', '/'],
    ['/..', '/'],
  ])('%s reaches %s', async (target, where) => {
    const before = fn.seen.length;
    const { status, body } = await get(proxy.url, target);
    if (where === 'proxy') {
      // /_sluice/map without NATS: answered by the proxy itself, never forwarded.
      expect(status).toBe(503);
      expect(JSON.parse(body).error.code).toBe('map_disabled');
      expect(fn.seen.length).toBe(before);
    } else {
      expect(status).toBe(200);
      expect(JSON.parse(body).url).toBe(where);
    }
  });

  it('never forwards a /_sluice/ path, whatever the mix of dots, escapes and slashes', async () => {
    const segment = fc.constantFrom(
      '_sluice',
      'map',
      'echo',
      '.',
      '..',
      '%2e',
      '%2E%2e',
      '.%2e',
      '%2f',
      '%5fsluice',
      '',
      'x',
    );
    await fc.assert(
      fc.asyncProperty(fc.array(segment, { minLength: 1, maxLength: 7 }), async (segments) => {
        const before = fn.seen.length;
        const { status, body } = await get(proxy.url, `/${segments.join('/')}`);
        if (fn.seen.length === before) {
          expect([400, 404, 503]).toContain(status); // answered by the proxy: //..., /_sluice/...
          return;
        }
        const path = String(JSON.parse(body).url);
        expect(path.startsWith('/_sluice/')).toBe(false);
        // Decoded and resolved the way a lenient function might, it is still the same path.
        expect(new URL(decodeURIComponent(path), 'http://function').pathname).toBe(path);
      }),
      { numRuns: 150 },
    );
  });
});

describe('slow clients', () => {
  let fn: Awaited<ReturnType<typeof pathEcho>>;
  let proxy: ProxyUnderTest;

  beforeAll(async () => {
    fn = await pathEcho();
    proxy = await startProxy(fn.url, [
      '--headers-timeout',
      '1',
      '--body-timeout',
      '2',
      '--concurrency',
      '1',
      '--queue-timeout',
      '60',
    ]);
  });

  afterAll(async () => {
    await proxy?.proxy.close();
    fn?.server.close();
  });

  it('headers that trickle get 408 headers_timeout (JSON) and the connection closes', async () => {
    const client = await rawSocket(proxy.url);
    client.socket.write('GET / HTTP/1.1\r\nHost: x\r\n');
    // A header line every 200 ms: each byte resets no timer; the headers never complete.
    const trickle = setInterval(() => {
      if (!client.received()) client.socket.write('X-Slow: 1\r\n');
    }, 200);
    await client.closed;
    clearInterval(trickle);
    expect(client.received()).toMatch(/^HTTP\/1\.1 408 /);
    expect(JSON.parse(bodyOf(client.received())).error.code).toBe('headers_timeout');
  });

  it('an idle kept-alive connection is not cut by the headers timeout', async () => {
    const client = await rawSocket(proxy.url);
    client.socket.write('GET /first HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitFor(() => client.received().includes('/first'));
    // Idle for longer than --headers-timeout: that idleness is what is under test.
    await sleep(2_500);
    client.socket.write('GET /second HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitFor(() => client.received().includes('/second'), { what: 'the second answer' });
    client.socket.destroy();
  });

  it('a stalled body gets 408 body_timeout and frees its slot for the request queued behind it', async () => {
    const stalled = await rawSocket(proxy.url);
    stalled.socket.write('POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789');
    await waitFor(() => fn.seen.some((r) => r.url === '/upload'), {
      what: 'the upload to reach the function',
    });
    const upload = fn.seen.find((r) => r.url === '/upload')!;
    // --concurrency 1: this one waits for the stalled upload's slot.
    const queued = get(proxy.url, '/queued');
    await stalled.closed;
    expect(stalled.received()).toMatch(/^HTTP\/1\.1 408 /);
    expect(JSON.parse(bodyOf(stalled.received())).error).toMatchObject({
      code: 'body_timeout',
      message: expect.stringContaining('--body-timeout'),
    });
    await waitFor(() => upload.destroyed, { what: "the function's side of the upload to close" });
    expect(await queued).toMatchObject({ status: 200, body: expect.stringContaining('/queued') });
  });

  it('a streaming body that keeps sending lives longer than the body timeout', async () => {
    const client = await rawSocket(proxy.url);
    client.socket.write('POST /stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n');
    // 25 chunks 200 ms apart: 5 s in all, two and a half times --body-timeout, never 2 s silent.
    let sent = 0;
    const sender = setInterval(() => {
      client.socket.write(sent < 25 ? '5\r\nhello\r\n' : '0\r\n\r\n');
      if (++sent > 25) clearInterval(sender);
    }, 200);
    await waitFor(() => client.received().includes('"bytes"'), { timeoutMs: 10_000, what: 'the answer' });
    expect(client.received()).toMatch(/^HTTP\/1\.1 200 /);
    expect(JSON.parse(bodyOf(client.received()).replace(/^[0-9a-f]+\r\n|\r\n0\r\n\r\n$/g, ''))).toEqual({
      url: '/stream',
      bytes: 125,
    });
    client.socket.destroy();
  });
});

describe('map bodies', () => {
  let nats: NatsServer;
  let fn: Awaited<ReturnType<typeof pathEcho>>;
  let proxy: ProxyUnderTest;

  beforeAll(async () => {
    nats = await startNats();
    fn = await pathEcho();
    proxy = await startProxy(fn.url, [
      '--nats',
      nats.url,
      '--function',
      'default/edges',
      '--body-timeout',
      '1',
    ]);
    await waitFor(async () => (await fetch(`${proxy.adminUrl}/readyz`)).ok, { what: 'map ready' });
  });

  afterAll(async () => {
    await proxy?.proxy.close();
    fn?.server.close();
    await nats?.stop();
  });

  const post = (body: string) =>
    fetch(`${proxy.url}/_sluice/map`, {
      method: 'POST',
      body,
      headers: { 'content-type': 'application/json' },
    });

  it('a body nested 5,000 deep gets 400 json_too_deep naming the limit, not a stack overflow', async () => {
    const deep = `${'['.repeat(5000)}${']'.repeat(5000)}`;
    const response = await post(`{"inputs":[${deep}]}`);
    expect(response.status).toBe(400);
    const { error } = (await response.json()) as { error: { code: string; message: string } };
    expect(error.code).toBe('json_too_deep');
    expect(error.message).toContain(String(MAX_JSON_DEPTH));
    // Just inside the limit (the body object and inputs array count) is a normal map.
    const inside = `${'['.repeat(MAX_JSON_DEPTH - 2)}1${']'.repeat(MAX_JSON_DEPTH - 2)}`;
    const ok = await post(`{"inputs":[${inside}]}`);
    expect(ok.status).toBe(200);
    await ok.body?.cancel();
  });

  it('a map body that stalls gets 408 body_timeout', async () => {
    const client = await rawSocket(proxy.url);
    client.socket.write('POST /_sluice/map HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{"inputs":');
    await client.closed;
    expect(client.received()).toMatch(/^HTTP\/1\.1 408 /);
    expect(JSON.parse(bodyOf(client.received())).error.code).toBe('body_timeout');
    expect(proxy.logs().filter((l) => l.msg === 'request failed inside the proxy')).toEqual([]);
  });
});
