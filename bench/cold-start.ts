// `npm run bench:cold-start`: what Sluice adds to a cold start beyond the function's own start-up.
//  1. The function alone: spawn examples/echo (node) with STARTUP_DELAY_MS, time until its port
//     accepts a connection, then until its first event byte: its own cold start, no Sluice.
//  2. Through `sluice serve` at zero (minReplicas 0): one request, time to its first event byte;
//     serve holds it, decides, starts the function (its proxy is started ahead), sees it ready,
//     forwards.
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

interface ColdRun {
  /** Request sent -> its first byte. */
  ttfbMs: number;
  /** The function's own start in that run: spawned (serve's line) -> listening (its own line). */
  functionMs: number;
}

async function throughServe(delayMs: number): Promise<ColdRun[]> {
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
  // When each line of serve's output arrived here (the function's own lines come through serve).
  const arrivals: { at: number; line: string }[] = [];
  serve.child.stdout?.on('data', (d: Buffer) => {
    const at = performance.now();
    for (const line of d.toString().split('\n')) if (line) arrivals.push({ at, line });
  });
  const arrived = (pattern: RegExp) => arrivals.find((a) => pattern.test(a.line))?.at;
  await waitFor(() => serve.output().includes('scaled to zero'), {
    timeoutMs: 30_000,
    what: 'serve at zero',
  });
  // The next replica's proxy is started ahead (a warm sidecar) and listens after any idle time.
  const warm = (n: number) =>
    waitFor(() => new RegExp(`\\[cold-${n} proxy\\] info proxy listening`).test(serve.output()), {
      timeoutMs: 30_000,
      what: `cold-${n}'s proxy listening`,
    });
  await warm(0);
  const runs: ColdRun[] = [];
  for (let i = 0; i < RUNS; i++) {
    const ttfbMs = await firstByte(`http://127.0.0.1:${port}/?n=1&pause=0`);
    const spawned = arrived(new RegExp(`\\[serve\\] cold-${i} fn started`));
    const listening = await waitFor(() => arrived(new RegExp(`\\[cold-${i} fn\\] echo listening`)), {
      what: `cold-${i}'s function line`,
    });
    runs.push({ ttfbMs, functionMs: listening - spawned! });
    // Back to zero (delay 0): wait until the replica's processes are gone before the next run.
    const stopped = () => [...serve.output().matchAll(/\[serve\] (cold-\d+) stopped/g)].map((m) => m[1]!);
    await waitFor(() => stopped().length === i + 1, { timeoutMs: 30_000, what: 'back to zero' });
    const gone = stopped().at(-1)!;
    const started = new RegExp(`${gone} (?:fn|proxy) started \\(pid (\\d+)\\)`, 'g');
    for (const m of serve.output().matchAll(started)) {
      await waitFor(() => exited(Number(m[1])), { timeoutMs: 10_000, what: `${gone} to exit` });
    }
    await warm(i + 1);
  }
  await serve.stop('SIGTERM', 15_000);
  return runs;
}

const loadAtStart = loadavg()[0]!;
const rows: { delayMs: number; aloneMs: number; serveMs: number; functionMs: number; addedMs: number }[] = [];
for (const delayMs of DELAYS) {
  const alone: number[] = [];
  for (let i = 0; i < RUNS; i++) alone.push(await functionAlone(delayMs));
  const runs = await throughServe(delayMs);
  rows.push({
    delayMs,
    aloneMs: median(alone),
    serveMs: median(runs.map((r) => r.ttfbMs)),
    functionMs: median(runs.map((r) => r.functionMs)),
    // Paired within each run: the machine's noise on the function's own start cancels out.
    addedMs: median(runs.map((r) => r.ttfbMs - r.functionMs)),
  });
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
the front port until its first byte: held, decided, the function started (its proxy was started
ahead, when the replica before it stopped), readiness seen, forwarded. "Function's own start" is
measured in the same runs, from serve's \`fn started\` line to the function's \`listening\` line;
Sluice adds the rest (the median of the per-run differences).

| function start-up | alone | through sluice serve | of which the function's own start | added by Sluice | target |
| --- | --- | --- | --- | --- | --- |
${rows.map((r) => `| node + STARTUP_DELAY_MS=${r.delayMs} | ${f(r.aloneMs)} ms | ${f(r.serveMs)} ms | ${f(r.functionMs)} ms | ${f(r.addedMs)} ms | ≤ 300 ms |`).join('\n')}

What is left is serve's decision (at once: the held request is load), the spawn, readiness
polling (every 25 ms while a replica starts) and the forward. Without the warm proxy the Node
proxy's own start (1-2 s on this loaded machine) was on the path whenever the function started
faster than it. On a cluster the pod's start (scheduling, image pull, a GPU node joining) comes on
top and is the cluster's, not Sluice's; the activator forwards the moment the sidecar reports
ready, before the kubelet's next readiness probe.
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
