// `npm run bench:cold-start`: what Sluice adds to a cold start beyond the function's own start-up.
//  1. The function alone: spawn examples/echo (node) with STARTUP_DELAY_MS, time until its port
//     accepts a connection, then until its first event byte: its own cold start, no Sluice.
//  2. Through `sluice serve` at zero (minReplicas 0): one request, time to its first event byte;
//     serve holds it, decides, starts the function and its proxy, sees it ready, forwards.
//  3. Sluice's share = 2 - 1 (medians of RUNS each), for a fast function and for one that takes
//     STARTUP_DELAY_MS to load (a model), where the proxy's own start is hidden behind it.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { freePort, waitFor, waitForPort } from '../common/net.ts';
import { exited } from '../common/process.ts';
import { start, startSluice } from '../harness/process.ts';

const ECHO = resolve(import.meta.dirname, '..', 'examples', 'echo', 'server.js');
const RUNS = Number(process.env.BENCH_RUNS ?? 7);
const DELAYS = (process.env.BENCH_STARTUP_DELAYS ?? '0,2000').split(',').map(Number);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

/** Milliseconds from sending a request to the first byte of its body. */
function firstByte(url: string): Promise<number> {
  const t0 = performance.now();
  return new Promise((done, fail) => {
    const req = request(url, (res) => {
      res.once('data', () => {
        done(performance.now() - t0);
        res.destroy();
      });
    });
    req.on('error', fail);
    req.end();
  });
}

async function functionAlone(delayMs: number): Promise<number> {
  const port = await freePort();
  const t0 = performance.now();
  const fn = start(process.execPath, [ECHO], {
    env: { ...process.env, PORT: String(port), STARTUP_DELAY_MS: String(delayMs) },
  });
  await waitForPort(port, '127.0.0.1', 30_000);
  await firstByte(`http://127.0.0.1:${port}/?n=1&pause=0`);
  const total = performance.now() - t0; // spawn -> first byte of a request sent once it listens
  await fn.stop();
  return total;
}

async function throughServe(delayMs: number): Promise<number[]> {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-cold-'));
  const file = join(dir, 'fn.yaml');
  writeFileSync(
    file,
    `apiVersion: sluice.dev/v1alpha1
kind: StreamingFunction
metadata:
  name: cold
spec:
  image: sluice-examples:dev
  command: [node, ${ECHO}]
  scaling: {minReplicas: 0, maxReplicas: 1, scaleDownDelaySeconds: 0}
  map: {enabled: false}
`,
  );
  const port = await freePort();
  const serve = startSluice(['serve', file, '--port', String(port)], {
    env: { ...process.env, STARTUP_DELAY_MS: String(delayMs) },
  });
  await waitFor(() => serve.output().includes('scaled to zero'), {
    timeoutMs: 30_000,
    what: 'serve at zero',
  });
  const coldMs: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    coldMs.push(await firstByte(`http://127.0.0.1:${port}/?n=1&pause=0`));
    // Back to zero (delay 0): wait until the replica's processes are gone before the next run.
    const stops = () => serve.output().match(/\[serve\] cold-\d+ stopped/g)?.length ?? 0;
    await waitFor(() => stops() === i + 1, { timeoutMs: 30_000, what: 'back to zero' });
    const pids = [...serve.output().matchAll(/cold-\d+ (?:fn|proxy) started \(pid (\d+)\)/g)].map((m) =>
      Number(m[1]),
    );
    for (const pid of pids) await waitFor(() => exited(pid), { timeoutMs: 10_000 });
  }
  await serve.stop('SIGTERM', 15_000);
  return coldMs;
}

const loadAtStart = loadavg()[0]!;
const rows: { delayMs: number; aloneMs: number; serveMs: number; addedMs: number }[] = [];
for (const delayMs of DELAYS) {
  const alone: number[] = [];
  for (let i = 0; i < RUNS; i++) alone.push(await functionAlone(delayMs));
  const coldMs = await throughServe(delayMs);
  const aloneMs = median(alone);
  const serveMs = median(coldMs);
  rows.push({ delayMs, aloneMs, serveMs, addedMs: serveMs - aloneMs });
}
const results = {
  date: new Date().toISOString(),
  runs: RUNS,
  rows,
  loadAverage: { start: loadAtStart, end: loadavg()[0]! },
};
console.log(JSON.stringify(results, null, 2));

const f = (x: number) => x.toFixed(0);
const section = `## Cold start

\`npm run bench:cold-start\` (bench/cold-start.ts), ${results.date.slice(0, 10)}, this 2-core machine (1-minute load
average ${loadAtStart.toFixed(1)} at the start, ${results.loadAverage.end.toFixed(1)} at the end, shared with other work); medians of
${RUNS} runs. "Alone": examples/echo spawned by itself, until the first byte of a request sent the
moment its port opens. "sluice serve": the same function at zero (minReplicas 0), one request to
the front port until its first byte: held, decided, function and proxy started, readiness seen,
forwarded. Sluice adds the difference.

| function start-up (STARTUP_DELAY_MS) | alone | through sluice serve | added by Sluice | target |
| --- | --- | --- | --- | --- |
${rows.map((r) => `| node + ${r.delayMs} ms | ${f(r.aloneMs)} ms | ${f(r.serveMs)} ms | ${f(r.addedMs)} ms | ≤ 300 ms |`).join('\n')}

The proxy (a Node process) starts beside the function: a function that starts faster than the
proxy waits for it; one that loads a model for seconds hides it. On a cluster the pod's start
(scheduling, image pull, a GPU node joining) comes on top and is the cluster's, not Sluice's.
`;
const path = 'bench/RESULTS.md';
let doc = await readFile(path, 'utf8').catch(() => '# Benchmark results\n');
const at = doc.indexOf('## Cold start');
if (at >= 0) {
  const next = doc.indexOf('\n## ', at + 1);
  doc = doc.slice(0, at) + section + (next >= 0 ? `\n${doc.slice(next + 1)}` : '');
} else {
  doc = `${doc.trimEnd()}\n\n${section}`;
}
await writeFile(path, doc);
