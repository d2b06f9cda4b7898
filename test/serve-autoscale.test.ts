import { mkdtempSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type StreamEvent, stream } from '../client/index.ts';
import { freePort, waitFor } from '../common/net.ts';
import { exited } from '../common/process.ts';
import { type Started, startSluice } from '../harness/process.ts';

// `sluice serve` without --replicas follows spec.scaling (common/autoscale, as the operator):
// real function processes (examples/echo), real proxies, real sockets.

const ECHO = resolve(import.meta.dirname, '..', 'examples', 'echo', 'server.js');

function manifest(scaling: string, extra = ''): string {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-autoscale-'));
  const file = join(dir, 'fn.yaml');
  writeFileSync(
    file,
    `apiVersion: sluice.dev/v1alpha1
kind: StreamingFunction
metadata:
  name: echo
spec:
  image: sluice-examples:dev
  command: [node, ${ECHO}]
  scaling:
${scaling}
  map:
    enabled: false
${extra}`,
  );
  return file;
}

let serve: Started | undefined;
afterEach(async () => {
  await serve?.stop('SIGTERM', 15_000);
  serve = undefined;
});

async function startServe(file: string, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const port = await freePort();
  serve = startSluice(['serve', file, '--port', String(port)], { env });
  await waitFor(() => /\[serve\] echo ready/.test(serve!.output()), {
    timeoutMs: 30_000,
    what: `sluice serve to be ready:\n${serve.output()}`,
  });
  return `http://127.0.0.1:${port}`;
}

/** pid of every function process serve started, by replica. */
function functionPids(output: string): Map<string, number> {
  const pids = new Map<string, number>();
  for (const m of output.matchAll(/\[serve\] (echo-\d+) fn started \(pid (\d+)\)/g))
    pids.set(m[1]!, Number(m[2]));
  return pids;
}

async function collect(url: string): Promise<StreamEvent[]> {
  const events: StreamEvent[] = [];
  for await (const event of stream(url, { retryMs: 0 })) events.push(event);
  return events;
}

describe('sluice serve follows the load (minReplicas 0, concurrency 2)', () => {
  it('0 -> 1 on the first request (held, every event), 6 long streams -> 3 processes, back to 0 after the delay', async () => {
    const url = await startServe(
      manifest('    minReplicas: 0\n    maxReplicas: 4\n    concurrency: 2\n    scaleDownDelaySeconds: 2'),
    );
    const output = () => serve!.output();
    expect(output()).toContain('scaled to zero');
    expect(functionPids(output()).size).toBe(0); // no function process until the first request

    // 1. The first request is held while echo-0 starts, then gets every event.
    const first = await collect(`${url}/?n=3&pause=50`);
    expect(first.map((e) => e.id ?? e.event)).toEqual(['0', '1', '2', 'done']);
    expect(output()).toMatch(
      /scale 0 -> 1: the load needs 1; load 1 \(streams 0, map tasks waiting 0, held 1\)/,
    );
    expect(output()).toMatch(/cold start: a held request got its first byte after \d+ ms/);

    // 2. Six streams of 4 s each at once: target ceil(0.7 x 2) = 2 per replica -> 3 replicas.
    const six = Array.from({ length: 6 }, (_, i) => collect(`${url}/?n=8&pause=500&text=s${i}`));
    await waitFor(() => /scale \d -> 3: the load needs 3/.test(output()), {
      what: `scale to 3:\n${output()}`,
    });
    const streams = await Promise.all(six);
    for (const events of streams) {
      // Whole: every event in order, then done (a cut stream would end early or with an error).
      expect(events.map((e) => e.id ?? e.event)).toEqual(['0', '1', '2', '3', '4', '5', '6', '7', 'done']);
    }
    const pids = functionPids(output());
    expect(pids.size).toBe(3);
    // Each process served streams: the six were spread, not queued on one replica.
    for (const name of pids.keys())
      expect(output()).toMatch(new RegExp(`\\[${name} fn\\] GET / streamed events 0..7`));

    // 3. Idle for scaleDownDelaySeconds: every process stops, none while it served a stream.
    await waitFor(() => /scale \d -> 0: the load needed fewer for 2 s/.test(output()), {
      timeoutMs: 20_000,
      what: `scale to 0:\n${output()}`,
    });
    for (const [name, pid] of pids) {
      await waitFor(() => exited(pid), { timeoutMs: 20_000, what: `${name} (pid ${pid}) to exit` });
    }
    expect(output()).not.toMatch(/event: error|"code":"shutdown"/);
  });

  it('a held event-stream request gets its 200 and waiting comments while a slow replica starts', async () => {
    const url = await startServe(
      manifest(
        '    minReplicas: 0\n    maxReplicas: 1\n    coldStartTimeoutSeconds: 60',
        '  streaming:\n    heartbeatSeconds: 1',
      ),
      { ...process.env, STARTUP_DELAY_MS: '3500' },
    );
    const arrived = Date.now();
    const text = await new Promise<{ status: number; body: string; firstAt: number }>((done, fail) => {
      const req = request(`${url}/?n=2&pause=10`, { headers: { accept: 'text/event-stream' } }, (res) => {
        let body = '';
        let firstAt = 0;
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          firstAt ||= Date.now();
          body += chunk;
        });
        res.on('end', () => done({ status: res.statusCode ?? 0, body, firstAt }));
      });
      req.on('error', fail);
      req.end();
    });
    expect(text.status).toBe(200);
    // The headers and the first comment came after about heartbeatSeconds, long before the function was up.
    expect(text.firstAt - arrived).toBeLessThan(3000);
    const waiting = text.body.split('\n\n').filter((part) => part === ': waiting for a replica');
    expect(waiting.length).toBeGreaterThanOrEqual(2);
    // Then the function's own events, whole, on the same stream.
    expect(text.body).toMatch(
      /: waiting for a replica\n\n(: waiting for a replica\n\n)*id: 0\nevent: message/,
    );
    expect(text.body).toContain('event: done');
  });

  it('a held request that waits out coldStartTimeoutSeconds gets 503, Retry-After and JSON naming the function', async () => {
    const url = await startServe(
      manifest('    minReplicas: 0\n    maxReplicas: 1\n    coldStartTimeoutSeconds: 1'),
      { ...process.env, STARTUP_DELAY_MS: '30000' },
    );
    const answer = await fetch(`${url}/`);
    expect(answer.status).toBe(503);
    expect(Number(answer.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    const { error } = (await answer.json()) as { error: Record<string, unknown> };
    expect(error).toMatchObject({ code: 'cold_start_timeout', function: 'default/echo' });
    expect(error.waitedSeconds).toBeGreaterThanOrEqual(1);
  });

  it('--replicas N keeps a fixed count whatever the load', async () => {
    const port = await freePort();
    serve = startSluice([
      'serve',
      manifest('    minReplicas: 0\n    maxReplicas: 4\n    concurrency: 1\n    scaleDownDelaySeconds: 1'),
      '--port',
      String(port),
      '--replicas',
      '1',
    ]);
    await waitFor(() => /\[serve\] echo ready with 1 replica/.test(serve!.output()), { timeoutMs: 30_000 });
    const url = `http://127.0.0.1:${port}`;
    await Promise.all(Array.from({ length: 3 }, () => collect(`${url}/?n=3&pause=200`)));
    expect(serve.output()).not.toMatch(/scale \d -> \d/);
    expect(functionPids(serve.output()).size).toBe(1);
  });
});
