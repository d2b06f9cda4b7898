import { execFileSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadManifest } from '../cli/serve-manifest.ts';
import { map, stream } from '../client/index.ts';
import { freePort, waitFor, waitForPort } from '../common/net.ts';
import { exited } from '../common/process.ts';
import { type Started, start, startSluice } from '../harness/process.ts';

// Every example runs the way its README says: through `sluice serve`, with its real
// dependencies (FastAPI, uvicorn, torch from scripts/python-deps.sh; torchrun; nats-server).

const EXAMPLES = [
  'echo',
  'stream-me',
  'fake-video-render',
  'hook',
  'mapped',
  'text-model',
  'text-model-grpc',
  'progress-preview',
  'multi-gpu',
  'token-stream',
];

function onPath(binary: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => {
    try {
      accessSync(join(dir, binary), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

const hasPython = onPath('python3');
const hasNats = onPath('nats-server');
if (!hasPython) console.warn('examples.test: python3 is not installed; the Python examples are skipped');
if (!hasNats)
  console.warn('examples.test: nats-server is not installed (npm run setup); map examples are skipped');

const running: Started[] = [];
afterEach(async () => {
  await Promise.all(running.splice(0).map((s) => s.stop('SIGTERM', 15_000)));
});

async function serve(example: string, env: NodeJS.ProcessEnv = {}, args: string[] = []) {
  const port = await freePort();
  const started = startSluice(['serve', `examples/${example}.yaml`, '--port', String(port), ...args], {
    env: { ...process.env, ...env },
  });
  running.push(started);
  await waitFor(() => started.output().includes(' ready with '), {
    timeoutMs: 90_000,
    what: `${example} to be ready:\n${started.output()}`,
  });
  return { url: `http://127.0.0.1:${port}`, serve: started };
}

async function events(url: string, body?: unknown) {
  const seen = [];
  for await (const event of stream(url, { body })) seen.push(event);
  return seen;
}

describe('example manifests', () => {
  it.each(EXAMPLES)('examples/%s.yaml is a valid StreamingFunction', async (name) => {
    const fn = await loadManifest(`examples/${name}.yaml`);
    expect(fn.metadata.name).toBe(name);
    expect(fn.spec.command?.length).toBeGreaterThan(0);
  });
});

describe('Node examples', () => {
  it.runIf(hasNats)(
    'mapped: GET / fans map_me out over three replicas and streams the results back as text',
    async () => {
      const { url } = await serve('mapped', { MAP_ME_MS: '100' });
      const response = await fetch(`${url}/?n=12&order=completion`);
      expect(response.headers.get('content-type')).toContain('text/plain');
      const text = await response.text();
      const segments = text
        .trim()
        .split('\n')
        .sort((a, b) => Number(a.split(' ')[1]) - Number(b.split(' ')[1]));
      expect(segments).toEqual(Array.from({ length: 12 }, (_, i) => `segment ${i}`));
    },
  );
});

describe.runIf(hasPython)('Python examples', () => {
  let python: string;
  let venvPath: string;

  beforeAll(() => {
    // Idempotent: installs once into ~/.cache/sluice/venv, then only checks it.
    python = execFileSync('bash', ['scripts/python-deps.sh'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    })
      .trim()
      .split('\n')
      .pop()!;
    venvPath = [join(python, '..'), process.env.PATH].join(delimiter);
  }, 900_000);

  const env = (extra: NodeJS.ProcessEnv = {}) => ({ PATH: venvPath, ...extra });

  it('stream-me: curl --no-buffer sees the first event while the generator is still pausing', async () => {
    const { url } = await serve('stream-me', env({ STREAM_ME_PAUSE: '0.6' }));
    const curl = start('curl', ['-sS', '--no-buffer', `${url}/?count=4`]);
    await waitFor(() => curl.output().includes('data: some data 0'), { what: 'the first event' });
    expect(curl.output()).not.toContain('some data 1');
    expect(curl.child.exitCode).toBeNull();
    await waitFor(() => curl.child.exitCode !== null, { what: 'curl to finish' });
    expect(curl.output().match(/data: some data \d/g)).toEqual(
      [0, 1, 2, 3].map((i) => `data: some data ${i}`),
    );
  });

  it('hook: the CPU endpoint (FastAPI + sluice.stream_async) streams the GPU function through its URL', async () => {
    const render = await serve('fake-video-render', env({ RENDER_PAUSE: '0.2' }));
    const { url } = await serve('hook', env({ RENDER_URL: `${render.url}/` }));
    const seen = await events(`${url}/?chunks=3`);
    expect(seen.map((e) => e.data)).toEqual(
      [0, 1, 2].map((i) => `finished processing some data from GPU ${i}`),
    );
    // A client that leaves the CPU endpoint ends the GPU function's stream too.
    const controller = new AbortController();
    await (async () => {
      for await (const _ of stream(`${url}/?chunks=50`, { signal: controller.signal })) controller.abort();
    })().catch(() => {});
    await waitFor(() => /\[fake-video-render-0 proxy\] .*outcome=client_closed/.test(render.serve.output()), {
      what: `the GPU function's stream to be closed:\n${render.serve.output()}`,
    });
  });

  /** Runs one of MLServer's documented clients; each printed line with the time it arrived. */
  async function mlserverClient(script: string, target: string) {
    const client = start(python, [`examples/text-model/${script}`, target]);
    running.push(client);
    const lines: { text: string; at: number }[] = [];
    let partial = '';
    client.child.stdout?.on('data', (chunk: Buffer) => {
      const parts = (partial + chunk.toString()).split('\n');
      partial = parts.pop()!;
      for (const text of parts) lines.push({ text, at: performance.now() });
    });
    await waitFor(() => client.child.exitCode !== null, {
      timeoutMs: 60_000,
      what: `${script}:\n${client.output()}`,
    });
    expect(client.child.exitCode, client.output()).toBe(0);
    return lines;
  }

  const WORDS = ['What', ' is', ' the', ' capital', ' of', ' France?'];

  /** The six words, each in its own read: MLServer yields one every 0.5 s, so a buffering hop would bunch them. */
  function expectWordByWord(lines: { text: string; at: number }[]) {
    const words = lines.filter((l) => !l.text.startsWith('status '));
    expect(words.map((l) => l.text)).toEqual(WORDS);
    for (let i = 1; i < words.length; i++) expect(words[i]!.at - words[i - 1]!.at).toBeGreaterThan(150);
  }

  it("text-model: real mlserver behind sluice proxy, MLServer's own REST (httpx-sse) and gRPC (ModelStreamInfer) clients", async () => {
    const [rest, grpc, restProxy, grpcProxy] = await Promise.all([
      freePort(),
      freePort(),
      freePort(),
      freePort(),
    ]);
    // One mlserver, both of its servers, each behind a proxy of its own protocol.
    const mlserver = start(python, ['examples/text-model/serve.py', 'rest'], {
      env: { ...process.env, ...env({ PORT: String(rest), MLSERVER_GRPC_PORT: String(grpc) }) },
    });
    running.push(mlserver);
    const proxy = (port: number, upstream: number, extra: string[]) => {
      const p = startSluice([
        'proxy',
        `--listen=127.0.0.1:${port}`,
        '--admin=127.0.0.1:0',
        `--upstream=http://127.0.0.1:${upstream}`,
        ...extra,
      ]);
      running.push(p);
      return p;
    };
    proxy(restProxy, rest, []);
    proxy(grpcProxy, grpc, ['--upstream-protocol=h2c']);
    await waitFor(() => mlserver.output().includes('gRPC server running'), {
      timeoutMs: 90_000,
      what: `mlserver to start:\n${mlserver.output()}`,
    });
    await Promise.all([waitForPort(rest), waitForPort(restProxy), waitForPort(grpcProxy)]);
    const [overRest, overGrpc] = await Promise.all([
      mlserverClient('client.py', `http://127.0.0.1:${restProxy}`),
      mlserverClient('grpc_client.py', `127.0.0.1:${grpcProxy}`),
    ]);
    expectWordByWord(overRest);
    expectWordByWord(overGrpc);
    expect(overGrpc.at(-1)?.text).toBe('status OK');
  });

  it("text-model: real mlserver through sluice serve, REST and gRPC, MLServer's own clients", async () => {
    const [restServe, grpcServe] = await Promise.all([
      serve('text-model', env()),
      serve('text-model-grpc', env()),
    ]);
    const [overRest, overGrpc] = await Promise.all([
      mlserverClient('client.py', restServe.url),
      mlserverClient('grpc_client.py', grpcServe.url.replace('http://', '')),
    ]);
    expectWordByWord(overRest);
    expectWordByWord(overGrpc);
    expect(overGrpc.at(-1)?.text).toBe('status OK');
  });

  it.runIf(hasNats)('text-model: map sends V2 requests to /infer across replicas', async () => {
    const { url } = await serve('text-model', env(), ['--replicas', '2']);
    const request = (text: string) => ({
      inputs: [{ name: 'prompt', shape: [1], datatype: 'BYTES', data: [text] }],
    });
    const outputs: string[] = [];
    for await (const result of map(url, [request('a b'), request('c d e')])) {
      expect(result.ok).toBe(true);
      if (result.ok) outputs.push((result.output as { outputs: { data: string[] }[] }).outputs[0]!.data[0]!);
    }
    expect(outputs).toEqual(['a b', 'c d e']);
  });

  it('progress-preview: progress events, throttled JPEG previews, then the final image', async () => {
    const { url } = await serve('progress-preview', env({ STEP_SECONDS: '0.05', PREVIEW_MIN_INTERVAL: '0' }));
    const seen = await events(`${url}/stream`, {
      prompt: 'a sunset',
      steps: 10,
      progress_every: 2,
      preview_every: 5,
    });
    const data = seen.map((e) => ({ event: e.event, ...JSON.parse(e.data) }));
    expect(data.filter((d) => 'progress' in d).map((d) => d.step)).toEqual([0, 2, 4, 6, 8]);
    const previews = data.filter((d) => 'preview' in d);
    expect(previews.map((d) => d.step)).toEqual([4]);
    const last = data.at(-1)!;
    expect(last.event).toBe('done');
    for (const image of [previews[0].preview, last.output]) {
      const bytes = Buffer.from(image.replace('data:image/jpeg;base64,', ''), 'base64');
      expect([bytes[0], bytes[1]]).toEqual([0xff, 0xd8]); // JPEG start-of-image
    }
    // Python, PIL and numpy start on a shared 2-core machine: 18.7 s in a full run, over 60 s once beside two CPU hogs and a benchmark.
  }, 120_000);

  it.runIf(onPath('ps'))(
    'multi-gpu: torchrun ranks stream through rank 0, survive a client leaving, and all stop on Ctrl-C',
    async () => {
      const { url, serve: served } = await serve('multi-gpu', env({ STEP_SECONDS: '0.05' }));
      // A client that leaves mid-job must not wedge the group's collectives.
      const controller = new AbortController();
      await (async () => {
        for await (const _ of stream(`${url}/stream`, { body: { steps: 40 }, signal: controller.signal })) {
          controller.abort();
        }
      })().catch(() => {});
      const seen = await events(`${url}/stream`, { prompt: 'two ranks', steps: 6 });
      const done = JSON.parse(seen.at(-1)!.data);
      expect(seen.at(-1)!.event).toBe('done');
      expect(done.num_gpus).toBe(2);

      const torchrun = Number(/multi-gpu-0 fn started \(pid (\d+)\)/.exec(served.output())![1]);
      // torchrun starts its ranks in sessions of their own: find them as its children.
      const group = execFileSync('ps', ['-e', '-o', 'pid=,ppid='], { encoding: 'utf8' })
        .split('\n')
        .map((l) => l.trim().split(/\s+/).map(Number))
        .filter(([pid, ppid]) => pid === torchrun || ppid === torchrun)
        .map(([pid]) => pid!);
      expect(group.length).toBeGreaterThanOrEqual(3); // torchrun and two ranks
      served.child.kill('SIGINT');
      await waitFor(() => served.child.exitCode !== null, { timeoutMs: 20_000, what: 'serve to exit' });
      const left = (await Promise.all(group.map(async (pid) => ((await exited(pid)) ? [] : [pid])))).flat();
      expect(left).toEqual([]);
    },
    // torchrun and two torch ranks start: 13.4 s in a full run, over 60 s once beside two CPU hogs and a benchmark.
    120_000,
  );

  it('token-stream: streams generated tokens, and a client that leaves frees the model', async () => {
    const { url } = await serve('token-stream', env({ TOKEN_STREAM_THREADS: '1' }));
    const controller = new AbortController();
    let taken = 0;
    await (async () => {
      for await (const _ of stream(`${url}/generate`, {
        body: { prompt: 'hi', max_tokens: 4000 },
        signal: controller.signal,
      })) {
        if (++taken === 2) controller.abort();
      }
    })().catch(() => {});
    // The generation lock is free again only if the abandoned 4000-token run stopped.
    const seen = await events(`${url}/generate`, { prompt: 'hello world', max_tokens: 16 });
    const tokens = seen.filter((e) => e.event === 'message').map((e) => JSON.parse(e.data));
    expect(tokens.map((t) => t.index)).toEqual(Array.from({ length: 16 }, (_, i) => i));
    expect(tokens.every((t) => typeof t.text === 'string' && t.text.startsWith(' '))).toBe(true);
    const done = JSON.parse(seen.at(-1)!.data);
    expect([seen.at(-1)!.event, done.tokens, done.device]).toEqual(['done', 16, 'cpu']);
  }, 120_000);
});
