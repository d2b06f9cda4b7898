import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { accessSync, constants, mkdtempSync, writeFileSync } from 'node:fs';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { map, stream } from '../client/index.ts';
import { freePort, waitFor } from '../common/net.ts';
import { exited } from '../common/process.ts';
import { type Started, start, startSluice } from '../harness/process.ts';

// `sluice serve` end to end: real function processes (examples/echo), real `sluice proxy`
// children, a real nats-server, curl and the CLI as clients.

function hasOnPath(binary: string, path = process.env.PATH ?? ''): boolean {
  return path.split(delimiter).some((dir) => {
    try {
      accessSync(join(dir, binary), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** The pid each supervised process got most recently, from serve's `started (pid N)` lines. */
function latestPids(output: string): Map<string, number> {
  const pids = new Map<string, number>();
  for (const m of output.matchAll(/\[serve\] (.+?) started \(pid (\d+)\)/g)) pids.set(m[1]!, Number(m[2]));
  return pids;
}

/** A TCP relay in front of `port` whose connections the test cuts, as a network would. */
async function cuttableRelay(port: number) {
  const sockets = new Set<Socket>();
  const requestLines: string[] = [];
  const relay = createServer((client) => {
    const upstream = connect(port, '127.0.0.1');
    client.once('data', (d: Buffer) => requestLines.push(d.toString('latin1').split('\r\n')[0]!));
    client.pipe(upstream).pipe(client);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => {});
      s.once('close', () => sockets.delete(s));
    }
  });
  relay.listen(0, '127.0.0.1');
  await once(relay, 'listening');
  const cut = () => {
    for (const s of sockets) s.destroy();
  };
  return {
    url: `http://127.0.0.1:${(relay.address() as AddressInfo).port}/`,
    requestLines,
    cut,
    close: () => {
      cut();
      relay.close();
    },
  };
}

async function serveEcho(
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ serve: Started; url: string }> {
  const port = await freePort();
  const serve = startSluice(['serve', 'examples/echo.yaml', '--port', String(port), ...args], { env });
  await waitFor(() => /\[serve\] echo ready/.test(serve.output()), {
    timeoutMs: 30_000,
    what: `sluice serve to be ready:\n${serve.output()}`,
  });
  return { serve, url: `http://127.0.0.1:${port}` };
}

describe('sluice serve examples/echo.yaml (2 replicas, local NATS)', () => {
  let serve: Started;
  let url: string;

  beforeAll(async () => {
    ({ serve, url } = await serveEcho(['--replicas', '2']));
  });
  afterAll(async () => {
    await serve?.stop('SIGTERM', 15_000); // serve stops its children; a SIGKILL would orphan them
  });

  it('prefixes every process', () => {
    for (const prefix of ['[echo-0 fn]', '[echo-1 fn]', '[echo-0 proxy]', '[echo-1 proxy]']) {
      expect(serve.output()).toContain(prefix);
    }
  });

  it('streams events one by one to curl --no-buffer through the front port', async () => {
    const curl = start('curl', ['-sS', '--no-buffer', `${url}/?n=3&pause=1500`]);
    await waitFor(() => curl.output().includes('id: 0'), { what: 'the first event' });
    // The first event is on the terminal while the function is still pausing before the next.
    expect(curl.child.exitCode).toBeNull();
    expect(curl.output()).not.toContain('id: 1');
    await waitFor(() => curl.child.exitCode !== null, { what: 'curl to finish' });
    expect(curl.child.exitCode).toBe(0);
    expect(curl.output()).toMatch(/id: 2\nevent: message\ndata: \{"i":2,"of":3/);
    expect(curl.output()).toContain('event: done');
  });

  it('serves the ingress path too, as the cluster does (/echo/...)', async () => {
    const events = [];
    for await (const event of stream(`${url}/echo/?n=2&pause=0`)) events.push(event);
    expect(events.map((e) => e.event)).toEqual(['message', 'message', 'done']);
  });

  it('sends two concurrent streams to different replicas (least in flight)', async () => {
    // A tag of this test's own in the query: each proxy logs the path of every request it
    // finishes, so earlier tests' log lines (which may still be arriving) cannot be miscounted.
    const tag = randomUUID();
    const drain = async () => {
      for await (const _ of stream(`${url}/?n=2&pause=800&tag=${tag}`));
    };
    await Promise.all([drain(), drain()]);
    const replicas = await waitFor(
      () => {
        const seen = [...serve.output().matchAll(new RegExp(`\\[(echo-\\d) proxy\\][^\\n]*tag=${tag}`, 'g'))];
        return seen.length === 2 ? seen.map((m) => m[1]).sort() : undefined;
      },
      { what: "both streams in the proxies' logs" },
    );
    expect(replicas).toEqual(['echo-0', 'echo-1']);
  });

  it('stream() reconnects through the proxy with Last-Event-ID and the function resumes after it', async () => {
    const relay = await cuttableRelay(Number(new URL(url).port));
    try {
      const seen: string[] = [];
      for await (const event of stream(`${relay.url}?n=6&pause=150`, { retryMs: 50 })) {
        seen.push(event.id ?? event.event);
        if (seen.length === 2) relay.cut();
      }
      expect(seen).toEqual(['0', '1', '2', '3', '4', '5', 'done']);
      expect(relay.requestLines).toEqual(['GET /?n=6&pause=150 HTTP/1.1', 'GET /?n=6&pause=150 HTTP/1.1']);
      await waitFor(() => serve.output().includes('streamed events 2..5'), { what: 'the resumed stream' });
    } finally {
      relay.close();
    }
  });

  it('sluice invoke prints each event as it arrives', async () => {
    const invoke = startSluice(['invoke', `${url}/`, '--data', '{"n":2,"pause":0,"text":"hi"}']);
    await waitFor(() => invoke.child.exitCode !== null, { what: 'invoke to finish' });
    expect(invoke.child.exitCode).toBe(0);
    const lines = invoke.output().trim().split('\n');
    expect(lines.slice(0, 2).map((l) => JSON.parse(l).text)).toEqual(['hi', 'hi']);
    expect(lines[2]).toBe('done: {}');
  });

  it.runIf(hasOnPath('nats-server'))(
    'sluice map fans inputs out and prints one JSON line per input; a failed input exits 1',
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'sluice-map-'));
      const inputs = join(dir, 'inputs.jsonl');
      writeFileSync(
        inputs,
        `${[...Array.from({ length: 12 }, (_, i) => i), { fail: 'no' }].map((v) => JSON.stringify(v)).join('\n')}\n`,
      );
      const cli = startSluice(['map', `${url}/`, '--inputs', inputs]);
      await waitFor(() => cli.child.exitCode !== null, {
        timeoutMs: 30_000,
        what: `map to finish: ${cli.output()}`,
      });
      const lines = cli
        .output()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l));
      expect(lines.map((l) => l.index)).toEqual(Array.from({ length: 13 }, (_, i) => i));
      expect(lines.slice(0, 12).map((l) => l.output.echo)).toEqual(Array.from({ length: 12 }, (_, i) => i));
      expect(lines[12].error.status).toBe(500);
      expect(cli.output()).toContain('12/13 succeeded, 1 failed');
      expect(cli.child.exitCode).toBe(1);
    },
  );

  it.runIf(hasOnPath('nats-server'))(
    'map() resumes a broken map stream from /_sluice/map/<requestId> and yields each index once',
    async () => {
      const relay = await cuttableRelay(Number(new URL(url).port));
      const relayUrl = relay.url;
      const firstBytes = relay.requestLines;
      try {
        const inputs = Array.from({ length: 16 }, (_, i) => ({ sleepMs: 150 * i }));
        const indices: number[] = [];
        for await (const result of map(relayUrl, inputs, { retryMs: 50 })) {
          indices.push(result.index);
          if (indices.length === 2) relay.cut();
        }
        expect(indices).toEqual(Array.from({ length: 16 }, (_, i) => i));
        expect(firstBytes[0]).toBe('POST /_sluice/map HTTP/1.1');
        expect(firstBytes[1]).toMatch(/^GET \/_sluice\/map\/[\w-]+ HTTP\/1.1$/);
      } finally {
        relay.close();
      }
    },
  );

  it('restarts a function that crashes, with backoff, and reports it', async () => {
    const oldPid = latestPids(serve.output()).get('echo-0 fn')!;
    process.kill(oldPid, 'SIGKILL');
    await waitFor(() => serve.output().includes('[serve] echo-0 fn killed by SIGKILL; restarting in 0.5 s'), {
      what: 'the crash report',
    });
    const newPid = await waitFor(() => {
      const pid = latestPids(serve.output()).get('echo-0 fn');
      return pid !== oldPid ? pid : undefined;
    });
    expect(await exited(newPid)).toBe(false);
    await waitFor(() => serve.output().includes(`[echo-0 fn] echo listening`), { what: 'the new function' });
  });

  it('Ctrl-C stops every process it started, nothing left running', async () => {
    const pids = [...latestPids(serve.output()).values()];
    expect(pids.length).toBe(5); // nats, 2 functions, 2 proxies
    const running = async () =>
      (await Promise.all(pids.map(async (pid) => ((await exited(pid)) ? [] : [pid])))).flat();
    expect(await running()).toEqual(pids);
    serve.child.kill('SIGINT');
    await waitFor(() => serve.child.exitCode !== null, { timeoutMs: 20_000, what: 'serve to exit' });
    expect(serve.output()).toContain('[serve] stopped');
    expect(await running()).toEqual([]);
  });
});

describe('sluice serve without nats-server', () => {
  let serve: Started;
  let url: string;

  beforeAll(async () => {
    const path = (process.env.PATH ?? '')
      .split(delimiter)
      .filter((dir) => !hasOnPath('nats-server', dir))
      .join(delimiter);
    // The command after -- replaces spec.command; it runs in the manifest's directory.
    ({ serve, url } = await serveEcho(['--replicas', '1', '--', process.execPath, 'echo/server.js'], {
      ...process.env,
      PATH: path,
    }));
  });
  afterAll(async () => {
    await serve?.stop('SIGTERM', 15_000);
  });

  it('answers map with 503 saying how to get nats-server, and still streams', async () => {
    const response = await fetch(`${url}/_sluice/map`, { method: 'POST', body: '{"inputs":[1]}' });
    expect(response.status).toBe(503);
    const body = (await response.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('map_unavailable');
    expect(body.error.message).toContain('npm run setup');
    const events = [];
    for await (const event of stream(`${url}/?n=1`)) events.push(event.event);
    expect(events).toEqual(['message', 'done']);
    expect(serve.output()).toContain(`echo-0 fn started`);
  });
});

describe('sluice serve refuses bad input', () => {
  it.each([
    [
      'a field out of bounds, by its path',
      'apiVersion: sluice.dev/v1alpha1\nkind: StreamingFunction\nmetadata: {name: bad}\nspec:\n  image: x\n  command: [node]\n  scaling: {concurrency: 0}\n',
      'spec.scaling.concurrency:',
    ],
    [
      'a missing image',
      'apiVersion: sluice.dev/v1alpha1\nkind: StreamingFunction\nmetadata: {name: bad}\nspec: {command: [node]}\n',
      'spec.image:',
    ],
    [
      'a name that is not a DNS label',
      'apiVersion: sluice.dev/v1alpha1\nkind: StreamingFunction\nmetadata: {name: Bad_Name}\nspec: {image: x, command: [node]}\n',
      'metadata.name:',
    ],
    ['YAML that does not parse', 'spec: [unclosed\n', 'sluice serve:'],
    [
      'no command anywhere',
      'apiVersion: sluice.dev/v1alpha1\nkind: StreamingFunction\nmetadata: {name: nocmd}\nspec: {image: x}\n',
      'spec.command: empty, and no command after --',
    ],
  ])('%s: exit 2 with one clear message', async (_what, manifest, expected) => {
    const dir = mkdtempSync(join(tmpdir(), 'sluice-serve-bad-'));
    writeFileSync(join(dir, 'fn.yaml'), manifest);
    const serve = startSluice(['serve', join(dir, 'fn.yaml')]);
    await waitFor(() => serve.child.exitCode !== null, { what: 'serve to exit' });
    expect(serve.child.exitCode).toBe(2);
    expect(serve.output()).toContain(expected);
  });

  it('refuses a bad --replicas naming the flag', async () => {
    const serve = startSluice(['serve', 'examples/echo.yaml', '--replicas', 'two']);
    await waitFor(() => serve.child.exitCode !== null, { what: 'serve to exit' });
    expect(serve.child.exitCode).toBe(2);
    expect(serve.output()).toContain('--replicas must be an integer from 1 to 64 (got "two")');
  });
});
