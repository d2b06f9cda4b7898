import { once } from 'node:events';
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { waitFor } from '../common/net.ts';
import { type FunctionServer, startFunctionServer } from './support/function-server.ts';
import { curl, metricValue, type ProxyUnderTest, startProxy } from './support/proxy-harness.ts';

let fn: FunctionServer;
let px: ProxyUnderTest | undefined;
const kills: (() => void)[] = [];

beforeEach(async () => {
  fn = await startFunctionServer();
});
afterEach(async () => {
  for (const kill of kills.splice(0)) kill();
  await px?.proxy.close();
  px = undefined;
  await fn.close();
});

async function proxy(flags: string[] = []): Promise<ProxyUnderTest> {
  px = await startProxy(fn.url, ['--drain', '0', ...flags]);
  return px;
}

async function errorOf(response: Response): Promise<{ code: string; message: string }> {
  expect(response.headers.get('content-type')).toContain('application/json');
  return ((await response.json()) as { error: { code: string; message: string } }).error;
}

/** Sends raw bytes and returns the whole answer (for request lines fetch will not produce). */
async function raw(port: number, request: string): Promise<string> {
  const socket = connect({ port, host: '127.0.0.1' });
  await once(socket, 'connect');
  socket.write(request); // the request says `Connection: close`: the proxy ends the exchange
  let answer = '';
  socket.setEncoding('utf8').on('data', (d: string) => {
    answer += d;
  });
  await once(socket, 'close');
  return answer;
}

async function metrics(adminUrl: string): Promise<string> {
  return (await fetch(`${adminUrl}/metrics`)).text();
}

describe('concurrency', () => {
  it('holds over-limit requests in FIFO order until a stream ends', async () => {
    const { url, adminUrl } = await proxy(['--concurrency', '1', '--queue-timeout', '30']);
    const first = curl(`${url}/a`, ['-H', 'X-Request-Id: first']);
    kills.push(() => first.child.kill());
    const a = await fn.nextStream();
    const queued: ReturnType<typeof curl>[] = [];
    for (const id of ['second', 'third']) {
      const client = curl(`${url}/b`, ['-H', `X-Request-Id: ${id}`]);
      kills.push(() => client.child.kill());
      queued.push(client);
      // Two curl processes race to connect: queue them one after the other.
      await waitFor(
        async () => metricValue(await metrics(adminUrl), 'sluice_proxy_queue_waiting') === queued.length,
      );
    }
    expect(fn.requests).toHaveLength(1); // nothing else reached the function meanwhile
    a.res.end();
    const b = await fn.nextStream();
    expect(b.req.headers['x-request-id']).toBe('second');
    b.res.end();
    const c = await fn.nextStream();
    expect(c.req.headers['x-request-id']).toBe('third');
    c.res.end();
    expect(await Promise.all([first.exit, ...queued.map((q) => q.exit)])).toEqual([0, 0, 0]);
  });

  it('answers 503 with Retry-After after --queue-timeout', async () => {
    const { url } = await proxy(['--concurrency', '1', '--queue-timeout', '0.2']);
    const first = curl(`${url}/a`);
    kills.push(() => first.child.kill());
    await fn.nextStream();
    const response = await fetch(`${url}/b`);
    expect(response.status).toBe(503);
    expect(response.headers.get('retry-after')).toBe('1');
    expect((await errorOf(response)).code).toBe('queue_timeout');
    expect(fn.requests).toHaveLength(1);
  });

  it('frees the place of a client that leaves while queued', async () => {
    const { url, adminUrl } = await proxy(['--concurrency', '1', '--queue-timeout', '30']);
    const first = curl(`${url}/a`);
    kills.push(() => first.child.kill());
    const a = await fn.nextStream();
    const leaver = curl(`${url}/b`, ['-H', 'X-Request-Id: leaver']);
    await waitFor(async () => metricValue(await metrics(adminUrl), 'sluice_proxy_queue_waiting') === 1);
    const stayer = curl(`${url}/c`, ['-H', 'X-Request-Id: stayer']);
    kills.push(() => stayer.child.kill());
    await waitFor(async () => metricValue(await metrics(adminUrl), 'sluice_proxy_queue_waiting') === 2);
    leaver.child.kill('SIGKILL');
    await waitFor(async () => metricValue(await metrics(adminUrl), 'sluice_proxy_queue_waiting') === 1);
    a.res.end();
    const next = await fn.nextStream();
    expect(next.req.headers['x-request-id']).toBe('stayer');
    next.res.end();
    expect(await stayer.exit).toBe(0);
    expect(fn.requests.map((r) => r.headers['x-request-id'])).not.toContain('leaver');
  });
});

describe('request checks', () => {
  it('refuses bodies over --max-body with 413, declared or chunked', async () => {
    const { url } = await proxy(['--max-body', '100']);
    const declared = await fetch(`${url}/echo`, { method: 'POST', body: 'x'.repeat(101) });
    expect(declared.status).toBe(413);
    expect((await errorOf(declared)).code).toBe('body_too_large');
    expect(fn.requests).toHaveLength(0);

    const chunks = new ReadableStream({
      start(controller) {
        for (let i = 0; i < 5; i++) controller.enqueue(new TextEncoder().encode('y'.repeat(30)));
        controller.close();
      },
    });
    const chunked = await fetch(`${url}/echo`, {
      method: 'POST',
      body: chunks,
      duplex: 'half',
    } as RequestInit);
    expect(chunked.status).toBe(413);
    expect((await errorOf(chunked)).message).toContain('--max-body');

    const fits = await fetch(`${url}/echo`, { method: 'POST', body: 'z'.repeat(100) });
    expect(((await fits.json()) as { bodyLength: number }).bodyLength).toBe(100);
  });

  it('refuses absolute-form targets and CONNECT with 400: not an open proxy', async () => {
    const { proxy: running } = await proxy();
    const absolute = await raw(
      running.publicPort,
      'GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n',
    );
    expect(absolute).toMatch(/^HTTP\/1\.1 400 /);
    expect(absolute).toContain('"code":"bad_request_target"');
    const tunnel = await raw(
      running.publicPort,
      'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n',
    );
    expect(tunnel).toMatch(/^HTTP\/1\.1 400 /);
    expect(tunnel).toContain('"code":"bad_request_target"');
    expect(fn.requests).toHaveLength(0);
  });

  it('drops hop-by-hop headers, adds X-Forwarded-* and passes or makes a request id', async () => {
    const { url, proxy: running } = await proxy();
    // fetch will not send a custom Connection header, so this request goes out raw (HTTP/1.0: no chunking).
    const answer = await raw(
      running.publicPort,
      'GET /echo?q=1 HTTP/1.0\r\nHost: here\r\nConnection: close, x-hop\r\nX-Hop: secret\r\n' +
        'Keep-Alive: timeout=5\r\nProxy-Authorization: Basic cA==\r\nTE: trailers\r\nX-End: kept\r\n\r\n',
    );
    const hop = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as {
      headers: Record<string, string>;
    };
    expect(hop.headers['x-hop']).toBeUndefined();
    expect(hop.headers['keep-alive']).toBeUndefined();
    expect(hop.headers['proxy-authorization']).toBeUndefined();
    expect(hop.headers.te).toBe('trailers');
    expect(hop.headers['x-end']).toBe('kept');

    const response = await fetch(`${url}/echo?q=1`);
    const seen = (await response.json()) as { url: string; headers: Record<string, string> };
    expect(seen.url).toBe('/echo?q=1');
    expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(seen.headers['x-forwarded-proto']).toBe('http');
    expect(seen.headers['x-forwarded-host']).toBe(new URL(url).host);
    expect(seen.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    expect(response.headers.get('x-request-id')).toBe(seen.headers['x-request-id']);

    const given = await fetch(`${url}/echo`, { headers: { 'x-request-id': 'trace-42' } });
    expect(((await given.json()) as { headers: Record<string, string> }).headers['x-request-id']).toBe(
      'trace-42',
    );
    expect(given.headers.get('x-request-id')).toBe('trace-42');
  });

  it('keeps client connections alive longer than load balancers do (620 s > GCP 600 s, ALB 60 s)', async () => {
    const { url } = await proxy();
    const client = curl(`${url}/echo`, ['--include']);
    expect(await client.exit).toBe(0);
    expect(client.stdout()).toMatch(/^keep-alive: timeout=620\r$/im);
  });

  it('answers Expect: 100-continue itself and forwards the whole body', async () => {
    const { url } = await proxy();
    const client = curl(`${url}/echo`, ['-H', 'Expect: 100-continue', '--data-binary', 'x'.repeat(5000)]);
    expect(await client.exit).toBe(0);
    const seen = JSON.parse(client.stdout()) as { bodyLength: number; headers: Record<string, string> };
    expect(seen.bodyLength).toBe(5000);
    expect(seen.headers.expect).toBeUndefined();
  });

  it('strips --path-prefix so the function sees paths relative to its ingress path', async () => {
    const { url } = await proxy(['--path-prefix', '/fn']);
    const seenUrl = async (path: string) =>
      ((await (await fetch(`${url}${path}`)).json()) as { url: string }).url;
    expect(await seenUrl('/fn/echo?x=1')).toBe('/echo?x=1');
    expect(await seenUrl('/echo')).toBe('/echo'); // in-cluster callers skip the prefix
    const root = await fetch(`${url}/fn`);
    expect(fn.requests.at(-1)?.url).toBe('/');
    await root.body?.cancel();
    const map = await fetch(`${url}/fn/_sluice/map`, { method: 'POST', body: '{"inputs":[1]}' });
    expect(map.status).toBe(503);
    expect(await errorOf(map)).toEqual({ code: 'map_disabled', message: 'map needs --nats (SLUICE_NATS)' });
    const unknown = await fetch(`${url}/_sluice/nothing`);
    expect(unknown.status).toBe(404);
    expect((await errorOf(unknown)).code).toBe('not_found');
  });
});

describe('auth', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sluice-auth-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('needs a listed bearer token and follows the file when Kubernetes swaps it', async () => {
    const file = join(dir, 'tokens');
    await writeFile(file, '# accepted tokens\nold-token\n\nother-token\n');
    const { url, adminUrl } = await proxy(['--auth-tokens-file', file]);
    const status = async (token?: string) => {
      const response = await fetch(`${url}/echo`, {
        headers: token ? { authorization: `Bearer ${token}` } : {},
      });
      await response.body?.cancel();
      return response.status;
    };
    const missing = await fetch(`${url}/echo`, { headers: { 'x-request-id': 'no-token' } });
    expect(missing.status).toBe(401);
    expect(missing.headers.get('x-request-id')).toBe('no-token');
    expect(missing.headers.get('www-authenticate')).toBe('Bearer');
    expect((await errorOf(missing)).code).toBe('unauthorized');
    expect(await status('wrong')).toBe(401);
    expect(await status('old-token')).toBe(200);
    expect(await status('other-token')).toBe(200);
    expect((await fetch(`${adminUrl}/healthz`)).status).toBe(200); // probes stay open

    // Like a Secret update: a new file renamed over the old one.
    await writeFile(join(dir, 'tokens.new'), 'new-token\n');
    await rename(join(dir, 'tokens.new'), file);
    await waitFor(async () => (await status('new-token')) === 200, { what: 'the new token to be accepted' });
    expect(await status('old-token')).toBe(401);
  });
});

describe('admin port', () => {
  it('reports health, readiness that follows the function, and the metrics of SPEC §2', async () => {
    const { url, adminUrl } = await proxy();
    expect(await (await fetch(`${adminUrl}/healthz`)).json()).toEqual({ status: 'ok' });
    expect((await fetch(`${adminUrl}/readyz`)).status).toBe(200);

    const client = curl(`${url}/events?count=3`);
    expect(await client.exit).toBe(0);
    const text = await metrics(adminUrl);
    expect(metricValue(text, 'sluice_proxy_requests_total{code="200"}')).toBe(1);
    expect(metricValue(text, 'sluice_proxy_events_total')).toBe(3);
    expect(metricValue(text, 'sluice_proxy_bytes_total')).toBe(Buffer.byteLength(client.stdout()));
    expect(metricValue(text, 'sluice_proxy_time_to_first_byte_seconds_count')).toBe(1);
    expect(metricValue(text, 'sluice_proxy_stream_duration_seconds_count')).toBe(1);
    expect(metricValue(text, 'sluice_proxy_streams_active')).toBe(0);
    expect(metricValue(text, 'sluice_proxy_queue_waiting')).toBe(0);
    expect(metricValue(text, 'sluice_proxy_stream_end_total{reason="complete"}')).toBe(1);
    // Every reason is there from the start, so a dashboard's rate() has a series to read.
    expect(metricValue(text, 'sluice_proxy_stream_end_total{reason="drain"}')).toBe(0);
    // Three events of one stream: two gaps (0 s apart when one read brought them together).
    expect(metricValue(text, 'sluice_proxy_event_gap_seconds_count')).toBe(2);
    expect(text).toContain('process_resident_memory_bytes');

    expect(metricValue(text, 'sluice_proxy_ready')).toBe(1);

    await fn.close();
    const down = await fetch(`${adminUrl}/readyz`);
    expect(down.status).toBe(503);
    expect(((await down.json()) as { reason: string }).reason).toContain('refuses connections');
    expect(metricValue(await metrics(adminUrl), 'sluice_proxy_ready')).toBe(0);
  });

  it('logs one JSON line per finished request with id, status, ttfb, duration, bytes and events', async () => {
    const { url, logs } = await proxy();
    const client = curl(`${url}/events?count=4`, ['-H', 'X-Request-Id: log-me']);
    expect(await client.exit).toBe(0);
    const line = await waitFor(() => logs().find((l) => l.requestId === 'log-me'));
    expect(line).toMatchObject({
      msg: 'request finished',
      status: 200,
      events: 4,
      bytes: Buffer.byteLength(client.stdout()),
      outcome: 'complete',
    });
    expect(line.ttfbMs).toBeTypeOf('number');
    expect(line.durationMs).toBeGreaterThanOrEqual(line.ttfbMs as number);
  });
});

describe('graceful shutdown', () => {
  it('stops waiting as soon as the last stream ends, long before --drain runs out', {
    timeout: 10_000,
  }, async () => {
    px = await startProxy(fn.url, ['--drain', '30']);
    const client = curl(`${px.url}/last`);
    kills.push(() => client.child.kill());
    const stream = await fn.nextStream();
    const closing = px.proxy.close();
    await stream.write('data: last words\n\n');
    stream.res.end();
    await closing; // within the 10 s test timeout, not after 30 s
    expect(await client.exit).toBe(0);
    expect(client.events().map((e) => e.data)).toEqual(['last words']);
    px = undefined;
  });

  it('fails readiness, refuses new requests, lets streams drain, then ends them with a shutdown error', async () => {
    px = await startProxy(fn.url, ['--drain', '1']);
    const { url, adminUrl, proxy: running } = px;
    const client = curl(`${url}/long`);
    kills.push(() => client.child.kill());
    const stream = await fn.nextStream();
    await stream.write('data: before\n\n');
    await waitFor(() => client.events().length === 1);
    const closing = running.close();
    expect(running.draining).toBe(true);
    expect((await fetch(`${adminUrl}/readyz`)).status).toBe(503);
    const refused = await fetch(`${url}/new`);
    expect(refused.status).toBe(503);
    expect((await errorOf(refused)).code).toBe('shutting_down');
    await stream.write('data: during the drain\n\n');
    await waitFor(() => client.events().length === 2, { what: 'an event during the drain' });
    await closing;
    expect(await client.exit).toBe(0);
    expect(client.events().map((e) => e.event)).toEqual([undefined, undefined, 'error']);
    expect(JSON.parse(client.events()[2]!.data).error.code).toBe('shutdown');
    await stream.closed;
    // The admin port has closed by now: the request's log line tells why its stream ended.
    expect(px.logs().find((l) => l.msg === 'request finished' && l.status === 200)).toMatchObject({
      reason: 'drain',
      outcome: 'shutdown',
    });
    px = undefined;
  });
});
