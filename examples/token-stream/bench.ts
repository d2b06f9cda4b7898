// Time to first token and tokens/s of examples/token-stream, measured by the client, direct to
// the function and through `sluice proxy`, alternating request by request in one run so both
// see the same machine. Prints medians and the proxy/direct ratios.
//
//   node examples/token-stream/bench.ts [--requests 20] [--tokens 128] [-- server flags...]
//   e.g. on a GPU: node examples/token-stream/bench.ts -- --device cuda --layers 12 --d-model 1024
//
// Python: $PYTHON, else ~/.cache/sluice/venv/bin/python (scripts/python-deps.sh), else python3.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { homedir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { stream } from '../../client/index.ts';

const { values, positionals } = parseArgs({
  options: { requests: { type: 'string', default: '20' }, tokens: { type: 'string', default: '128' } },
  allowPositionals: true,
});
const requests = Number(values.requests);
const tokens = Number(values.tokens);
const venvPython = `${homedir()}/.cache/sluice/venv/bin/python`;
const python = process.env.PYTHON ?? (existsSync(venvPython) ? venvPython : 'python3');
const root = fileURLToPath(new URL('../..', import.meta.url));

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject()));
    });
  });
}

async function until(url: string, child: ChildProcess, what: string): Promise<void> {
  for (const deadline = Date.now() + 180_000; Date.now() < deadline; ) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}`);
    try {
      if ((await fetch(url)).ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${what} not ready at ${url}`);
}

interface Sample {
  ttftMs: number;
  tokensPerS: number;
}

async function generate(base: string): Promise<Sample> {
  const started = performance.now();
  let first = 0;
  let last = 0;
  let count = 0;
  for await (const event of stream(`${base}/generate`, {
    body: { prompt: 'the quick brown fox', max_tokens: tokens },
  })) {
    if (event.event !== 'message') continue;
    last = performance.now();
    if (count === 0) first = last;
    count += 1;
  }
  if (count !== tokens) throw new Error(`expected ${tokens} tokens, got ${count}`);
  return { ttftMs: first - started, tokensPerS: (count - 1) / ((last - first) / 1000) };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
};

const [functionPort, proxyPort, adminPort] = [await freePort(), await freePort(), await freePort()];
const children: ChildProcess[] = [];
try {
  const fn = spawn(python, ['examples/token-stream/server.py', ...positionals], {
    cwd: root,
    env: { ...process.env, PORT: String(functionPort) },
    stdio: 'ignore',
  });
  children.push(fn);
  const proxy = spawn(
    process.execPath,
    [
      'bin/sluice.js',
      'proxy',
      `--listen=127.0.0.1:${proxyPort}`,
      `--admin=127.0.0.1:${adminPort}`,
      `--upstream=http://127.0.0.1:${functionPort}`,
    ],
    { cwd: root, stdio: 'ignore' },
  );
  children.push(proxy);
  const direct = `http://127.0.0.1:${functionPort}`;
  const proxied = `http://127.0.0.1:${proxyPort}`;
  await until(`${direct}/health`, fn, 'token-stream');
  await until(`http://127.0.0.1:${adminPort}/readyz`, proxy, 'sluice proxy');
  const health = (await (await fetch(`${direct}/health`)).json()) as { device: string; parameters: number };
  await generate(direct); // warm-up: first-call allocations and kernel selection
  await generate(proxied);
  const samples = { direct: [] as Sample[], proxy: [] as Sample[] };
  for (let i = 0; i < requests; i++) {
    samples.direct.push(await generate(direct));
    samples.proxy.push(await generate(proxied));
  }
  const row = (name: string, s: Sample[]) =>
    `${name.padEnd(8)} ttft ${median(s.map((x) => x.ttftMs))
      .toFixed(2)
      .padStart(8)} ms   ${median(s.map((x) => x.tokensPerS))
      .toFixed(1)
      .padStart(8)} tokens/s`;
  console.log(
    `token-stream on ${health.device}, ${(health.parameters / 1e6).toFixed(1)}M parameters, ${requests} requests x ${tokens} tokens each way (medians)`,
  );
  console.log(row('direct', samples.direct));
  console.log(row('proxy', samples.proxy));
  const ttftRatio = median(samples.proxy.map((x) => x.ttftMs)) / median(samples.direct.map((x) => x.ttftMs));
  const rateRatio =
    median(samples.proxy.map((x) => x.tokensPerS)) / median(samples.direct.map((x) => x.tokensPerS));
  console.log(`proxy/direct: ttft x${ttftRatio.toFixed(3)}, tokens/s x${rateRatio.toFixed(3)}`);
} finally {
  for (const child of children) child.kill('SIGTERM');
}
