import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort, waitFor } from '../common/net.ts';
import { type EchoServer, echoClient, startEchoServer } from './support/grpc-echo.ts';
import { grpcHeaders, h2Request, h2Session } from './support/h2-client.ts';
import { grpcFrame, type H2Function, startH2Function } from './support/h2-function.ts';
import { metricValue, type ProxyUnderTest, startProxy } from './support/proxy-harness.ts';

// gRPC through `sluice proxy --upstream-protocol h2c`, against a real grpc-js server and client
// (and a raw node:http2 function where the test must control the frames).

const cleanups: (() => unknown)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function echo(): Promise<EchoServer> {
  const server = await startEchoServer();
  cleanups.push(() => server.close());
  return server;
}

async function rawFunction(): Promise<H2Function> {
  const fn = await startH2Function({ maxSendHeaderBlockLength: 4 * 1024 * 1024 });
  cleanups.push(() => fn.close());
  return fn;
}

async function proxy(upstream: string, flags: string[] = []): Promise<ProxyUnderTest> {
  const px = await startProxy(upstream, ['--upstream-protocol', 'h2c', '--drain', '0', ...flags]);
  cleanups.push(() => px.proxy.close());
  return px;
}

function client(px: ProxyUnderTest, options: grpc.ChannelOptions = {}) {
  const c = echoClient(`127.0.0.1:${px.proxy.publicPort}`, options);
  cleanups.push(() => c.close());
  return c;
}

function metadata(entries: Record<string, string>): grpc.Metadata {
  const md = new grpc.Metadata();
  for (const [key, value] of Object.entries(entries)) md.set(key, value);
  return md;
}

interface Finished {
  messages: string[];
  status: grpc.StatusObject;
  initial?: grpc.Metadata;
}

function collect(
  call: grpc.ClientReadableStream<Buffer> | grpc.ClientDuplexStream<Buffer, Buffer>,
): Promise<Finished> {
  const messages: string[] = [];
  let initial: grpc.Metadata | undefined;
  call.on('metadata', (md) => {
    initial = md;
  });
  call.on('data', (message: Buffer) => messages.push(message.toString()));
  call.on('error', () => {});
  return new Promise((resolve) => call.on('status', (status) => resolve({ messages, status, initial })));
}

function unary(
  c: ReturnType<typeof echoClient>,
  request: string,
  md = new grpc.Metadata(),
  options: grpc.CallOptions = {},
): Promise<{
  err: grpc.ServiceError | null;
  value?: string;
  initial?: grpc.Metadata;
  status: grpc.StatusObject;
}> {
  return new Promise((resolve) => {
    let initial: grpc.Metadata | undefined;
    let result: { err: grpc.ServiceError | null; value?: string } | undefined;
    let status: grpc.StatusObject | undefined;
    const done = () => {
      if (result && status) resolve({ ...result, initial, status });
    };
    const call = c.Unary(Buffer.from(request), md, options, (err, value) => {
      result = { err, value: value?.toString() };
      done();
    });
    call.on('metadata', (m) => {
      initial = m;
    });
    call.on('status', (s) => {
      status = s;
      done();
    });
  });
}

describe('gRPC calls pass through untouched', () => {
  it('unary: the message, initial metadata, trailing metadata and status arrive intact', async () => {
    const fn = await echo();
    const px = await proxy(`http://${fn.target}`);
    const c = client(px);
    const ok = await unary(c, 'ping', metadata({ 'x-echo-a': 'one', 'x-echo-b': 'two' }));
    expect(ok.err).toBeNull();
    expect(ok.value).toBe('ping');
    expect(ok.initial?.get('x-echo-a')).toEqual(['one']);
    expect(ok.initial?.get('x-request-id')).toHaveLength(1);
    expect(ok.status.metadata.get('x-echo-b-trailer')).toEqual(['two']);

    const failed = await unary(c, 'ping', metadata({ 'x-status': '9', 'x-message': 'not now: 100% sure' }));
    expect(failed.err?.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(failed.err?.details).toBe('not now: 100% sure');
    // The function saw what the client sent, and the deadline-free call got --max-duration's cap.
    expect(fn.calls[0]!.metadata.get('x-echo-a')).toEqual(['one']);
    expect(fn.calls[0]!.deadline).toBeLessThanOrEqual(Date.now() + 3600_000);
  });

  it('server streaming: every message and the trailers, in order, with large messages and trailers', async () => {
    const fn = await echo();
    const px = await proxy(`http://${fn.target}`);
    const call = client(px).ServerStream(
      Buffer.from('200,0,16384'),
      metadata({ 'x-echo-t': 'kept', 'x-trailer-bytes': '40000' }),
    );
    const { messages, status, initial } = await collect(call);
    expect(messages).toHaveLength(200);
    expect(messages.map((m) => Number.parseInt(m, 10))).toEqual([...Array(200).keys()]);
    expect(messages.every((m) => m.length === 16384)).toBe(true);
    expect(status.code).toBe(grpc.status.OK);
    expect(initial?.get('x-echo-t')).toEqual(['kept']);
    expect(status.metadata.get('x-echo-t-trailer')).toEqual(['kept']);
    // 40 kB of trailing metadata spans several HTTP/2 frames (CONTINUATION) and still arrives whole.
    expect(String(status.metadata.get('x-big')[0])).toBe('b'.repeat(40000));
  });

  it('client streaming: each message reaches the function as the client sends it', async () => {
    const fn = await echo();
    const px = await proxy(`http://${fn.target}`);
    let reply: string | undefined;
    const done = new Promise<grpc.ServiceError | null>((resolve) => {
      const call = client(px).ClientStream(new grpc.Metadata(), {}, (err, value) => {
        reply = value?.toString();
        resolve(err);
      });
      void (async () => {
        for (const word of ['a', 'b', 'c']) {
          call.write(Buffer.from(word));
          // The next message goes only once the function holds this one.
          await waitFor(() => fn.calls[0]?.received.map(String).includes(word), {
            what: `${word} at the function`,
          });
        }
        call.end();
      })();
    });
    expect(await done).toBeNull();
    expect(reply).toBe('a+b+c');
  });

  it('bidirectional: messages interleave, one echo per message before the next is sent', async () => {
    const fn = await echo();
    const px = await proxy(`http://${fn.target}`);
    const call = client(px).Bidi(metadata({ 'x-echo-id': 'bidi-1' }));
    const finished = collect(call);
    const echoes: string[] = [];
    call.on('data', (m: Buffer) => echoes.push(m.toString()));
    for (let n = 0; n < 20; n++) {
      call.write(Buffer.from(`m${n}`));
      await waitFor(() => echoes.length === n + 1, { what: `echo of m${n}` });
    }
    call.end();
    const { status, initial } = await finished;
    expect(echoes).toEqual([...Array(20).keys()].map((n) => `m${n}`));
    expect(status.code).toBe(grpc.status.OK);
    expect(initial?.get('x-echo-id')).toEqual(['bidi-1']);
    expect(status.metadata.get('x-echo-id-trailer')).toEqual(['bidi-1']);
    expect(fn.calls[0]!.received.map(String)).toEqual(echoes);
  });

  it('a trailers-only answer from the function stays one HEADERS frame (grpc-status in it)', async () => {
    const fn = await rawFunction();
    const px = await proxy(fn.url);
    const session = h2Session(px.url);
    cleanups.push(() => session.close());
    const answered = h2Request(session, grpcHeaders('/svc/Method'), grpcFrame('x'));
    const held = await fn.nextStream();
    held.stream.respond(
      {
        ':status': 200,
        'content-type': 'application/grpc',
        'grpc-status': '5',
        'grpc-message': 'no%20such',
        'x-why': 'gone',
      },
      { endStream: true },
    );
    const response = await answered;
    expect(response.headersEndedStream).toBe(true);
    expect(response.headers['grpc-status']).toBe('5');
    expect(response.headers['grpc-message']).toBe('no%20such');
    expect(response.headers['x-why']).toBe('gone');
    expect(response.body.length).toBe(0);
  });

  it('trailers go out after the last DATA frame when flow control holds data back', async () => {
    const fn = await rawFunction();
    const px = await proxy(fn.url);
    const session = h2Session(px.url);
    cleanups.push(() => session.close());
    const stream = session.request(grpcHeaders('/svc/Stream'), { endStream: true });
    const fnStream = await fn.nextStream();
    fnStream.stream.respond(
      { ':status': 200, 'content-type': 'application/grpc' },
      { waitForTrailers: true },
    );
    const payload = Buffer.alloc(1024 * 1024, 7);
    fnStream.stream.on('wantTrailers', () =>
      fnStream.stream.sendTrailers({ 'grpc-status': '0', 'x-after': 'all data' }),
    );
    // 1 MiB through 64 KiB windows: the function's trailers reach the proxy while most of the
    // data still waits for the client's window; they must still leave after it.
    fnStream.stream.end(grpcFrame(payload));
    let received = 0;
    let receivedAtTrailers = -1;
    stream.on('data', (chunk: Buffer) => {
      received += chunk.length;
    });
    stream.on('trailers', () => {
      receivedAtTrailers = received;
    });
    await new Promise((resolve) => stream.on('close', resolve));
    expect(received).toBe(payload.length + 5);
    // A flowing node:http2 stream emits 'data' and 'trailers' as it parses the frames, so this
    // is the order on the wire.
    expect(receivedAtTrailers).toBe(payload.length + 5);
  });

  it('trailers over the header limit end the call with an error instead of hanging it', async () => {
    const fn = await rawFunction();
    const px = await proxy(fn.url);
    const session = h2Session(px.url);
    cleanups.push(() => session.close());
    const answered = h2Request(session, grpcHeaders('/svc/Big'), grpcFrame('x'));
    const held = await fn.nextStream();
    held.stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    held.stream.on('wantTrailers', () =>
      held.stream.sendTrailers({ 'grpc-status': '0', 'x-huge': 'h'.repeat(2 * 1024 * 1024) }),
    );
    held.stream.end(grpcFrame('one'));
    const response = await answered;
    // Either the proxy's trailers say UNAVAILABLE, or the stream is reset: the client is not left waiting.
    const ended = response.trailers?.['grpc-status'] === '14' || response.rstCode !== 0;
    expect(ended).toBe(true);
  });
});

describe('deadlines and caps', () => {
  it('forwards what is left of grpc-timeout and answers DEADLINE_EXCEEDED when the function ignores it', async () => {
    const fn = await rawFunction();
    const px = await proxy(fn.url);
    const session = h2Session(px.url);
    cleanups.push(() => session.close());
    const answered = h2Request(session, grpcHeaders('/svc/Slow', { 'grpc-timeout': '300m' }), grpcFrame('x'));
    const held = await fn.nextStream();
    const forwarded = /^(\d+)m$/.exec(String(held.headers['grpc-timeout']));
    expect(Number(forwarded?.[1])).toBeGreaterThan(0);
    expect(Number(forwarded?.[1])).toBeLessThanOrEqual(300);
    const response = await answered; // the function never answers
    expect(response.headersEndedStream).toBe(true);
    expect(response.headers['grpc-status']).toBe('4');
    expect(response.headers['sluice-error-code']).toBe('deadline_exceeded');
    expect(await held.closed).toBe(8); // the function's stream was cancelled (RST_STREAM CANCEL)
  });

  it('--max-duration caps a call without a deadline: DEADLINE_EXCEEDED in the trailers', async () => {
    const fn = await rawFunction();
    const px = await proxy(fn.url, ['--max-duration', '1']);
    const session = h2Session(px.url);
    cleanups.push(() => session.close());
    const answered = h2Request(session, grpcHeaders('/svc/Forever'), grpcFrame('x'));
    const held = await fn.nextStream();
    expect(String(held.headers['grpc-timeout'])).toMatch(/^(\d{1,4})m$/);
    held.stream.respond({ ':status': 200, 'content-type': 'application/grpc' });
    held.stream.write(grpcFrame('first'));
    const response = await answered;
    expect(response.body.equals(grpcFrame('first'))).toBe(true);
    expect(response.trailers?.['grpc-status']).toBe('4');
    expect(response.trailers?.['sluice-error-code']).toBe('max_duration');
    expect(await held.closed).toBe(8);
  });
});

describe('cancellation', () => {
  it("a client's cancel (RST_STREAM) cancels the function's call within 100 ms", async () => {
    const fn = await echo();
    const px = await proxy(`http://${fn.target}`);
    const call = client(px).Bidi();
    const finished = collect(call);
    const echoes: string[] = [];
    call.on('data', (m: Buffer) => echoes.push(m.toString()));
    call.write(Buffer.from('hello'));
    await waitFor(() => echoes.length === 1, { what: 'the first echo' });
    const seen = fn.calls[0]!;
    const cancelledAt = performance.now();
    call.cancel();
    const functionSawIt = await seen.cancelled;
    expect((await finished).status.code).toBe(grpc.status.CANCELLED);
    expect(functionSawIt - cancelledAt).toBeLessThan(100);
    await waitFor(async () => {
      const text = await (await fetch(`${px.adminUrl}/metrics`)).text();
      return metricValue(text, 'sluice_proxy_grpc_calls_total{grpc_code="CANCELLED"}') === 1;
    });
  });
});

describe('errors a gRPC client understands', () => {
  it('function unreachable: UNAVAILABLE as a trailers-only response, never a 502 page', async () => {
    const port = await freePort();
    const px = await proxy(`http://127.0.0.1:${port}`);
    const session = h2Session(px.url);
    cleanups.push(() => session.close());
    const response = await h2Request(session, grpcHeaders('/svc/M'), grpcFrame('x'));
    expect(response.headers[':status']).toBe(200);
    expect(response.headersEndedStream).toBe(true);
    expect(response.headers['grpc-status']).toBe('14');
    expect(response.headers['sluice-error-code']).toBe('upstream_unavailable');
    expect(response.body.length).toBe(0);

    const failed = await unary(client(px), 'x');
    expect(failed.err?.code).toBe(grpc.status.UNAVAILABLE);
    expect(failed.err?.details).toContain('did not answer');
  });

  it('queue timeout: RESOURCE_EXHAUSTED while one call holds the only slot for its whole life', async () => {
    const fn = await echo();
    const px = await proxy(`http://${fn.target}`, ['--concurrency', '1', '--queue-timeout', '0.2']);
    const c = client(px);
    const holder = c.Bidi();
    const held = collect(holder);
    holder.write(Buffer.from('hold'));
    await waitFor(() => fn.calls.length === 1, { what: 'the first call at the function' });
    const refused = await unary(c, 'x');
    expect(refused.err?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(refused.status.metadata.get('retry-after')).toEqual(['1']);
    // The slot frees only when the call ends, not when its headers arrived.
    holder.end();
    expect((await held).status.code).toBe(grpc.status.OK);
    expect((await unary(c, 'now')).value).toBe('now');
  });

  it('a request message over --max-body: RESOURCE_EXHAUSTED; the limit is per message, not per call', async () => {
    const fn = await echo();
    const px = await proxy(`http://${fn.target}`, ['--max-body', '1000']);
    const c = client(px);
    const big = await unary(c, 'x'.repeat(2000));
    expect(big.err?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(big.err?.details).toContain('--max-body');
    // Many messages under the limit add up to more than it, and pass.
    const call = c.Bidi();
    const finished = collect(call);
    for (let n = 0; n < 5; n++) call.write(Buffer.from(String(n).repeat(900)));
    call.end();
    const { messages, status } = await finished;
    expect(status.code).toBe(grpc.status.OK);
    expect(messages).toHaveLength(5);
  });

  it('missing or wrong bearer token in the authorization metadata: UNAUTHENTICATED', async () => {
    const fn = await echo();
    const file = join(tmpdir(), `sluice-grpc-tokens-${process.pid}`);
    writeFileSync(file, 'good-token\n');
    const px = await proxy(`http://${fn.target}`, ['--auth-tokens-file', file]);
    const c = client(px);
    expect((await unary(c, 'x')).err?.code).toBe(grpc.status.UNAUTHENTICATED);
    expect((await unary(c, 'x', metadata({ authorization: 'Bearer bad' }))).err?.code).toBe(
      grpc.status.UNAUTHENTICATED,
    );
    const ok = await unary(c, 'x', metadata({ authorization: 'Bearer good-token' }));
    expect(ok.err).toBeNull();
    expect(fn.calls).toHaveLength(1);
  });
});

describe('metrics', () => {
  it('count calls by grpc code, with time to first message, duration and messages each way', async () => {
    const fn = await echo();
    const px = await proxy(`http://${fn.target}`);
    const c = client(px);
    await unary(c, 'a');
    await unary(c, 'b', metadata({ 'x-status': '7' }));
    await collect(c.ServerStream(Buffer.from('5')));
    const text = await (await fetch(`${px.adminUrl}/metrics`)).text();
    expect(metricValue(text, 'sluice_proxy_grpc_calls_total{grpc_code="OK"}')).toBe(2);
    expect(metricValue(text, 'sluice_proxy_grpc_calls_total{grpc_code="PERMISSION_DENIED"}')).toBe(1);
    expect(metricValue(text, 'sluice_proxy_grpc_messages_total{direction="from_function"}')).toBe(6);
    expect(metricValue(text, 'sluice_proxy_grpc_messages_total{direction="to_function"}')).toBe(3);
    expect(metricValue(text, 'sluice_proxy_time_to_first_byte_seconds_count')).toBe(3);
    expect(metricValue(text, 'sluice_proxy_stream_duration_seconds_count')).toBe(3);
    expect(metricValue(text, 'sluice_proxy_streams_active')).toBe(0);
    const logged = px.logs().filter((l) => l.msg === 'request finished');
    expect(logged.map((l) => l.grpcStatus)).toEqual(['OK', 'PERMISSION_DENIED', 'OK']);
  });
});
