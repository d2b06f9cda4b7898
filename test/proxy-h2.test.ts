import { readFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { afterEach, describe, expect, it, onTestFinished } from 'vitest';
import { freePort, waitFor, waitForPort } from '../common/net.ts';
import { startSluice } from '../harness/process.ts';
import { type FunctionServer, startFunctionServer } from './support/function-server.ts';
import { grpcHeaders, h2Request, h2Session } from './support/h2-client.ts';
import { grpcFrame, type H2Function, startH2Function } from './support/h2-function.ts';
import { curl, metricValue, type ProxyUnderTest, startProxy } from './support/proxy-harness.ts';

// The public port speaks HTTP/1.1 and h2c on one port, to HTTP/1.1 and HTTP/2 functions alike.

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function http1Function(): Promise<FunctionServer> {
  const fn = await startFunctionServer();
  cleanups.push(() => fn.close());
  return fn;
}

async function h2Function(options = {}): Promise<H2Function> {
  const fn = await startH2Function(options);
  cleanups.push(() => fn.close());
  return fn;
}

async function proxy(upstream: string, flags: string[] = []): Promise<ProxyUnderTest> {
  const px = await startProxy(upstream, ['--drain', '0', ...flags]);
  cleanups.push(() => px.proxy.close());
  return px;
}

function tracked(client: ReturnType<typeof curl>) {
  cleanups.push(() => client.child.kill('SIGKILL'));
  return client;
}

const keepalives = (text: string) => text.split(': keepalive\n\n').length - 1;

/** Sends raw bytes on a fresh connection and resolves with everything read until it closes. */
function rawExchange(port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(port, '127.0.0.1', () => socket.write(bytes));
    let text = '';
    socket.setEncoding('utf8').on('data', (d: string) => {
      text += d;
    });
    socket.on('end', () => resolve(text));
    socket.on('error', reject);
  });
}

describe('one public port, two protocols', () => {
  it('serves HTTP/1.1 and h2c with prior knowledge on the same port', async () => {
    // HTTP/2 has no reason phrase: an answer that passes one on makes Node warn in every pod's log.
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
    process.on('warning', onWarning);
    onTestFinished(() => {
      process.off('warning', onWarning);
    });
    const fn = await http1Function();
    const px = await proxy(fn.url);
    const h1 = tracked(curl(`${px.url}/events?count=3`, ['--http1.1', '-w', '%{http_version}']));
    const h2 = tracked(
      curl(`${px.url}/events?count=3`, ['--http2-prior-knowledge', '-w', '%{http_version}']),
    );
    expect(await h1.exit).toBe(0);
    expect(await h2.exit).toBe(0);
    expect(h1.stdout().endsWith('1.1')).toBe(true);
    expect(h2.stdout().endsWith('2')).toBe(true);
    expect(h2.events().map((e) => e.data)).toEqual(['0', '1', '2']);
    expect(h1.events().map((e) => e.data)).toEqual(['0', '1', '2']);
    expect(warnings).toEqual([]);
  });

  it('answers an HTTP/1.0 request shorter than the 24-byte preface without waiting for more', async () => {
    const fn = await http1Function();
    const px = await proxy(fn.url);
    const reply = await rawExchange(px.proxy.publicPort, 'GET /echo HTTP/1.0\r\n\r\n');
    expect(reply).toMatch(/^HTTP\/1\.1 200 OK/);
    // A request line that starts like the preface ("P") is still HTTP/1.1.
    const post = await rawExchange(
      px.proxy.publicPort,
      'POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi',
    );
    expect(post).toContain('"bodyLength":2');
  });

  it('refuses CONNECT and paths that are not origin-form over HTTP/2 too', async () => {
    const fn = await http1Function();
    const px = await proxy(fn.url);
    const session = h2Session(px.url);
    cleanups.push(() => session.close());
    const connect = session.request({ ':method': 'CONNECT', ':authority': 'example.com:443' });
    const status = await new Promise((resolve) => connect.on('response', (h) => resolve(h[':status'])));
    connect.close();
    expect(status).toBe(405); // node:http2 answers CONNECT itself: no tunnel is ever opened
    const doubleSlash = await h2Request(session, { ':path': '//evil.example/x' });
    expect(doubleSlash.headers[':status']).toBe(400);
    expect(JSON.parse(doubleSlash.body.toString()).error.code).toBe('bad_request_target');
    expect(fn.requests).toHaveLength(0);
  });
});

describe('SSE over h2c behaves as over HTTP/1.1', () => {
  it('HTTP/1.1 function: heartbeats only between events, and a client that leaves aborts the function', async () => {
    const fn = await http1Function();
    const px = await proxy(fn.url, ['--heartbeat', '0.1']);
    const client = tracked(curl(`${px.url}/sse`, ['--http2-prior-knowledge']));
    const stream = await fn.nextStream();
    await stream.write('data: first\n\n');
    await waitFor(() => keepalives(client.stdout()) >= 2, { what: 'heartbeats between events' });
    await stream.write('data: half of an ev');
    const before = keepalives(client.stdout());
    await waitFor(() => client.stdout().endsWith('data: half of an ev'), { what: 'the partial event' });
    await stream.write('ent\n\n');
    await waitFor(() => client.events().length === 2, { what: 'the second event' });
    expect(client.events().map((e) => e.data)).toEqual(['first', 'half of an event']);
    // Nothing was written inside the event.
    expect(client.stdout()).toContain('data: half of an event\n\n');
    expect(keepalives(client.stdout())).toBeGreaterThanOrEqual(before);
    client.child.kill('SIGKILL');
    await stream.closed;
  });

  it('HTTP/2 function (--upstream-protocol h2c): events, heartbeats, and disconnect cancels its stream', async () => {
    const fn = await h2Function();
    const px = await proxy(fn.url, ['--upstream-protocol', 'h2c', '--heartbeat', '0.1']);
    for (const protocol of ['--http2-prior-knowledge', '--http1.1']) {
      const client = tracked(curl(`${px.url}/sse`, [protocol]));
      const held = await fn.nextStream();
      held.stream.respond({ ':status': 200, 'content-type': 'text/event-stream' });
      await held.write('data: one\n\n');
      await waitFor(() => client.events().length === 1, { what: `the first event (${protocol})` });
      await waitFor(() => keepalives(client.stdout()) >= 2, { what: `heartbeats (${protocol})` });
      await held.write('data: t');
      await waitFor(() => client.stdout().endsWith('data: t'), { what: 'half an event' });
      const during = keepalives(client.stdout());
      await held.write('wo\n\n');
      await waitFor(() => client.events().length === 2, { what: 'the second event' });
      expect(client.stdout()).toContain('data: two\n\n');
      expect(keepalives(client.stdout())).toBe(during);
      client.child.kill('SIGKILL');
      expect(await held.closed).toBe(8); // RST_STREAM CANCEL to the function
    }
    await waitFor(async () => {
      const text = await (await fetch(`${px.adminUrl}/metrics`)).text();
      return metricValue(text, 'sluice_proxy_streams_active') === 0 ? text : undefined;
    });
  });

  it('HTTP/1.1 client to an HTTP/2 function: body and trailers come back as chunked HTTP/1.1', async () => {
    const fn = await h2Function();
    const px = await proxy(fn.url, ['--upstream-protocol', 'h2c']);
    const answered = fetch(`${px.url}/upload?x=1`, { method: 'POST', body: 'payload' });
    const held = await fn.nextStream();
    expect(held.headers[':path']).toBe('/upload?x=1');
    expect(held.headers['x-forwarded-for']).toBe('127.0.0.1');
    const body: Buffer[] = [];
    held.stream.on('data', (c: Buffer) => body.push(c));
    await new Promise((resolve) => held.stream.on('end', resolve));
    expect(Buffer.concat(body).toString()).toBe('payload');
    held.stream.respond({ ':status': 201, 'content-type': 'text/plain' });
    held.stream.end('made');
    const response = await answered;
    expect(response.status).toBe(201);
    expect(await response.text()).toBe('made');
  });
});

describe('the connection pool to an HTTP/2 function', () => {
  it("honours the function's SETTINGS_MAX_CONCURRENT_STREAMS, opening another connection when one is full", async () => {
    const fn = await h2Function({ settings: { maxConcurrentStreams: 2 } });
    const px = await proxy(fn.url, ['--upstream-protocol', 'h2c', '--concurrency', '16']);
    const session = h2Session(px.url);
    cleanups.push(() => session.close());
    const streams = [...Array(5).keys()].map(() =>
      session.request(grpcHeaders('/svc/Hold'), { endStream: false }).on('error', () => {}),
    );
    for (const s of streams) s.end(grpcFrame('x'));
    const held = await Promise.all(streams.map(() => fn.nextStream()));
    const perConnection = new Map<unknown, number>();
    for (const h of held) perConnection.set(h.stream.session, (perConnection.get(h.stream.session) ?? 0) + 1);
    expect([...perConnection.values()].sort()).toEqual([1, 2, 2]);
    for (const h of held) {
      h.stream.respond(
        { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '0' },
        { endStream: true },
      );
    }
  });
});

describe('flow control end to end', () => {
  it('a client that stops reading pauses the function; the proxy process holds a bounded amount', async () => {
    const fn = await h2Function();
    const listen = await freePort();
    const admin = await freePort();
    // A proxy of its own, so its memory is its own.
    const px = startSluice([
      'proxy',
      `--listen=127.0.0.1:${listen}`,
      `--admin=127.0.0.1:${admin}`,
      `--upstream=${fn.url}`,
      '--upstream-protocol=h2c',
      '--drain=0',
    ]);
    cleanups.push(() => px.stop());
    await waitForPort(listen);
    const rssKb = () =>
      Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${px.child.pid}/status`, 'utf8'))![1]);

    const session = h2Session(`http://127.0.0.1:${listen}`);
    cleanups.push(() => session.close());
    const stream = session.request(grpcHeaders('/svc/Flood'), { endStream: true });
    let read = 0;
    stream.on('data', (chunk: Buffer) => {
      read += chunk.length;
      stream.pause(); // one chunk, then the client reads nothing more
    });
    const held = await fn.nextStream();
    const rssBefore = rssKb();
    held.stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    held.stream.on('wantTrailers', () => held.stream.sendTrailers({ 'grpc-status': '0' }));
    const message = grpcFrame(Buffer.alloc(64 * 1024, 1));
    const total = 4096; // 256 MiB if nothing held the function back
    let written = 0;
    let finished = false;
    void (async () => {
      for (let n = 0; n < total && !held.stream.destroyed; n++) {
        if (!held.stream.write(message)) await new Promise((resolve) => held.stream.once('drain', resolve));
        written += message.length;
      }
      held.stream.end();
      finished = true;
    })();
    // The function stops when the windows and buffers between it and the client are full: its
    // count stays put across ten looks 50 ms apart.
    let last = -1;
    let steady = 0;
    await waitFor(
      () => {
        steady = written === last ? steady + 1 : 0;
        last = written;
        return steady >= 10;
      },
      { intervalMs: 50, timeoutMs: 30_000, what: 'the function to be held back' },
    );
    expect(finished).toBe(false);
    expect(written).toBeLessThan(8 * 1024 * 1024);
    expect(rssKb() - rssBefore).toBeLessThan(32 * 1024);

    // The client reads again: everything arrives, then the trailers.
    let trailers: Record<string, unknown> | undefined;
    stream.on('trailers', (t) => {
      trailers = t;
    });
    stream.removeAllListeners('data');
    stream.on('data', (chunk: Buffer) => {
      read += chunk.length;
    });
    stream.resume();
    await new Promise((resolve) => stream.on('close', resolve));
    expect(read).toBe(total * message.length);
    expect(trailers?.['grpc-status']).toBe('0');
  });
});
