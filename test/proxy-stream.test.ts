import { EventSource } from 'eventsource';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { waitFor } from '../common/net.ts';
import { type FunctionServer, startFunctionServer } from './support/function-server.ts';
import { curl, metricValue, type ProxyUnderTest, startProxy, streamEnds } from './support/proxy-harness.ts';

let fn: FunctionServer;
let px: ProxyUnderTest | undefined;
const clients: { child: { kill: () => void } }[] = [];

beforeEach(async () => {
  fn = await startFunctionServer();
});
afterEach(async () => {
  for (const c of clients.splice(0)) c.child.kill();
  await px?.proxy.close();
  px = undefined;
  await fn.close();
});

async function proxy(flags: string[] = []): Promise<ProxyUnderTest> {
  px = await startProxy(fn.url, ['--drain', '0', ...flags]);
  return px;
}

function track<T extends { child: { kill: () => void } }>(client: T): T {
  clients.push(client);
  return client;
}

describe('streaming passthrough', () => {
  it('delivers each event to curl --no-buffer before the function writes the next one', async () => {
    const { url, adminUrl, logs } = await proxy();
    const client = track(curl(`${url}/stream`, ['-H', 'X-Request-Id: five']));
    const stream = await fn.nextStream();
    for (let n = 0; n < 5; n++) {
      await stream.write(`id: ${n}\ndata: token ${n}\n\n`);
      // The next event is only written once this one has reached the client.
      await waitFor(() => client.events().length === n + 1, { what: `event ${n} at the client` });
    }
    stream.res.end();
    expect(await client.exit).toBe(0);
    expect(client.events().map((e) => e.data)).toEqual([0, 1, 2, 3, 4].map((n) => `token ${n}`));
    const line = await waitFor(() => logs().find((l) => l.requestId === 'five'));
    expect(line).toMatchObject({ reason: 'complete', events: 5 });
    expect(await streamEnds(adminUrl)).toEqual({ complete: 1 });
    // Five events, one stream: four gaps between them, each one the function's own pause.
    const text = await (await fetch(`${adminUrl}/metrics`)).text();
    expect(metricValue(text, 'sluice_proxy_event_gap_seconds_count')).toBe(4);
  });

  it('sends the headers before the first event, adding no-cache and X-Accel-Buffering, keeping no-transform', async () => {
    const { url } = await proxy();
    const response = await fetch(`${url}/events?count=3`);
    expect(response.headers.get('content-type')).toBe('text/event-stream');
    expect(response.headers.get('cache-control')).toBe('no-cache, no-transform');
    expect(response.headers.get('x-accel-buffering')).toBe('no');
    expect(response.headers.get('content-encoding')).toBeNull();
    expect(await response.text()).toBe('id: 0\ndata: 0\n\nid: 1\ndata: 1\n\nid: 2\ndata: 2\n\n');

    // Headers alone, before any body byte: the client has them while the function is silent.
    const held = fetch(`${url}/silent`);
    const stream = await fn.nextStream();
    const early = await held;
    expect(early.status).toBe(200);
    expect(early.headers.get('x-accel-buffering')).toBe('no');
    stream.res.end();
    await early.text();
  });

  it('relays multi-line, 1 MB and byte-at-a-time events intact to the eventsource client', async () => {
    const { url } = await proxy();
    const received: { type: string; data: string; id: string }[] = [];
    const source = new EventSource(`${url}/mixed`);
    let ended: () => void = () => {};
    const done = new Promise<void>((resolve) => {
      ended = resolve;
    });
    source.onmessage = (e) => received.push({ type: e.type, data: e.data, id: e.lastEventId });
    source.addEventListener('big', (e) => {
      received.push({ type: e.type, data: e.data, id: e.lastEventId });
      if (received.length === 3) ended();
    });
    const stream = await fn.nextStream();
    await stream.write('id: 1\ndata: line one\r\ndata: line two\r\n\r\n');
    const slow = 'id: 2\ndata: {"byte":"at a time"}\n\n';
    for (const char of slow) await stream.write(char);
    const big = 'x'.repeat(1024 * 1024);
    await stream.write(`event: big\nid: 3\ndata: ${big}\n\n`);
    await done;
    source.close();
    expect(received).toEqual([
      { type: 'message', data: 'line one\nline two', id: '1' },
      { type: 'message', data: '{"byte":"at a time"}', id: '2' },
      { type: 'big', data: big, id: '3' },
    ]);
    await stream.closed;
  });

  it('keeps up with a reader slower than the function without losing or reordering bytes', async () => {
    const { url } = await proxy();
    const client = track(curl(`${url}/events?count=2000&size=2000`, ['--limit-rate', '2M']));
    expect(await client.exit).toBe(0);
    expect(client.events().map((e) => Number(e.id))).toEqual([...Array(2000).keys()]);
    expect(client.events().every((e) => e.data.length === 2000)).toBe(true);
  });
});

describe('heartbeat', () => {
  it('writes : keepalive only between events, never inside one', async () => {
    const { url } = await proxy(['--heartbeat', '0.1']);
    const mid = track(curl(`${url}/mid-event`));
    const midStream = await fn.nextStream();
    const between = track(curl(`${url}/between-events`));
    const betweenStream = await fn.nextStream();
    const keepalives = (text: string) => text.split(': keepalive\n\n').length - 1;

    await midStream.write('data: first\n\n');
    await betweenStream.write('data: first\n\n');
    await waitFor(() => keepalives(mid.stdout()) >= 1, { what: 'a keepalive after a complete event' });

    await midStream.write('data: half of an ev'); // the function stalls inside an event
    const before = keepalives(mid.stdout());
    const seenBetween = keepalives(between.stdout());
    // The stream at a boundary gets three more heartbeats meanwhile; the stalled one none.
    await waitFor(() => keepalives(between.stdout()) >= seenBetween + 3, {
      what: 'heartbeats on the idle stream',
    });
    expect(keepalives(mid.stdout())).toBe(before);
    expect(mid.stdout().endsWith('data: half of an ev')).toBe(true);

    await midStream.write('ent\n\n');
    await waitFor(() => keepalives(mid.stdout()) > before, { what: 'heartbeats to resume after the event' });
    midStream.res.end();
    betweenStream.res.end();
    await mid.exit;
    expect(mid.events().map((e) => e.data)).toEqual(['first', 'half of an event']);
  });
});

describe('client leaves', () => {
  it('aborts the request to the function as soon as curl goes away (http-proxy #1520)', async () => {
    const { url, adminUrl } = await proxy();
    const client = track(curl(`${url}/long`));
    const stream = await fn.nextStream();
    await stream.write('data: one\n\n');
    await waitFor(() => client.events().length === 1, { what: 'the first event' });
    expect(stream.isClosed()).toBe(false);
    client.child.kill('SIGKILL');
    await stream.closed; // the function's side of the socket sees the close
    expect(stream.req.socket.destroyed).toBe(true);
    await waitFor(async () => {
      const text = await (await fetch(`${adminUrl}/metrics`)).text();
      return metricValue(text, 'sluice_proxy_streams_active') === 0;
    });
    expect(await streamEnds(adminUrl)).toEqual({ client_gone: 1 });
  });

  it('aborts the function request when a fetch client aborts before any byte', async () => {
    const { url } = await proxy();
    const controller = new AbortController();
    const request = fetch(`${url}/nothing-yet?headers=0`, { signal: controller.signal });
    const stream = await fn.nextStream();
    controller.abort();
    await expect(request).rejects.toThrow();
    await stream.closed;
  });
});

describe('failures', () => {
  it('answers 502 JSON when the function is not listening', async () => {
    const { url } = await proxy();
    await fn.close();
    const response = await fetch(`${url}/x`);
    expect(response.status).toBe(502);
    const body = (await response.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('upstream_unavailable');
    expect(body.error.message).toContain(fn.url.replace('http://', ''));
  });

  it('answers 502 JSON when the function drops the connection before headers', async () => {
    const { url } = await proxy();
    const request = fetch(`${url}/crash?headers=0`);
    const stream = await fn.nextStream();
    stream.req.socket.destroy();
    const response = await request;
    expect(response.status).toBe(502);
    expect(((await response.json()) as { error: { code: string } }).error.code).toBe('upstream_unavailable');
  });

  it('ends an event stream with event: error after the last whole event when the function crashes', async () => {
    const { url, adminUrl, logs } = await proxy();
    const client = track(curl(`${url}/crash`));
    const stream = await fn.nextStream();
    await stream.write('data: whole\n\n');
    await waitFor(() => client.events().length === 1);
    await stream.write('data: cut sho'); // crash inside an event
    stream.req.socket.destroy();
    expect(await client.exit).toBe(0); // a clean end, not a broken transfer
    const events = client.events();
    expect(events.at(-1)?.event).toBe('error');
    expect(JSON.parse(events.at(-1)!.data)).toEqual({
      error: { code: 'upstream_closed', message: expect.stringContaining('closed the connection') },
    });
    await waitFor(() => logs().find((l) => l.msg === 'request finished'));
    expect(logs().find((l) => l.msg === 'request finished')).toMatchObject({
      reason: 'function_error',
      outcome: 'upstream_closed',
    });
    expect(await streamEnds(adminUrl)).toEqual({ function_error: 1 });
  });

  it('cuts the connection on other content types so the client sees an incomplete body', async () => {
    const { url } = await proxy();
    const client = track(curl(`${url}/crash?type=text`));
    const stream = await fn.nextStream();
    await stream.write('partial body');
    await waitFor(() => client.stdout() === 'partial body');
    stream.req.socket.destroy();
    expect(await client.exit).toBe(18); // CURLE_PARTIAL_FILE
    expect(client.stdout()).toBe('partial body');
  });
});

describe('timeouts', () => {
  it('ends a silent stream with event: error naming --idle-timeout', async () => {
    const { url, adminUrl } = await proxy(['--idle-timeout', '1', '--heartbeat', '0']);
    const client = track(curl(`${url}/idle-then-quiet`));
    const stream = await fn.nextStream();
    await stream.write('data: hello\n\n');
    expect(await client.exit).toBe(0);
    const last = client.events().at(-1)!;
    expect(last.event).toBe('error');
    expect(JSON.parse(last.data).error.code).toBe('idle_timeout');
    await stream.closed; // the function is told to stop, too
    expect(await waitFor(() => streamEnds(adminUrl).then((e) => e.idle_timeout))).toBe(1);
  });

  it('--max-duration ends a stream that keeps producing, with event: error', async () => {
    const { url, adminUrl } = await proxy(['--max-duration', '1', '--idle-timeout', '30']);
    const client = track(curl(`${url}/events?count=100000&interval=20`));
    expect(await client.exit).toBe(0);
    const events = client.events();
    expect(events.length).toBeGreaterThan(1);
    expect(events.at(-1)!.event).toBe('error');
    expect(JSON.parse(events.at(-1)!.data).error.code).toBe('max_duration');
    // Every event before the error arrived whole and in order.
    expect(events.slice(0, -1).map((e) => Number(e.id))).toEqual([...Array(events.length - 1).keys()]);
    expect(await waitFor(() => streamEnds(adminUrl).then((e) => e.max_duration))).toBe(1);
  });
});
