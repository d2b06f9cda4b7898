// `npm run bench:operator`: the operator against the real local control plane (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, kwok nodes; `npm run cluster -- up`).
//  1. apply → owned Deployment latency, one function at a time, over 100 functions;
//  2. 1,000 StreamingFunctions at once: time until the operator has applied every Deployment,
//     and until it reports every function Ready (pods really scheduled and run by kwok);
//     the operator's peak RSS and the API requests it sent per function;
//  3. apply → Deployment latency again with those 1,000 in its caches (is it flat?);
//  4. steady state: writes the operator makes while nothing changes (should be 0);
//  5. autoscaling at 1,000 functions x 10 replicas: 10,000 reporters (a child process) publish one
//     real load report a second each to a real nats-server; the operator's CPU% with them, against
//     the steady state without them;
//  6. a burst (an activator's held requests) -> the scale write, with those reports flowing;
//  7. the alternative signal: what scraping one sidecar's /metrics costs the scraper, times 10,000.
// The operator runs as a `sluice operator` child process, measured through its /metrics, with
// the Node flags the chart gives it (operator.nodeOptions; SLUICE_BENCH_NODE_OPTIONS overrides).
import { randomUUID } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { connect } from '@nats-io/transport-node';
import { parse as parseYaml } from 'yaml';
import { encodeReport, loadSubject } from '../common/autoscale/load-report.ts';
import { createLogger } from '../common/log.ts';
import { freePort, waitFor } from '../common/net.ts';
import { startNats } from '../harness/nats.ts';
import { start as startProcess, startSluice } from '../harness/process.ts';
import { streamingFunctionCrd } from '../operator/crd.ts';
import { Informer } from '../operator/informer.ts';
import { KubeClient, type KubeObject, resourcePath } from '../operator/kube.ts';
import { SIMULATED_KEY } from '../plane/runner.ts';
import { up } from '../scripts/cluster.ts';
import { applyObject, waitForCrd } from '../test/support/cluster.ts';

const FIRST = Number(process.env.BENCH_SEQUENTIAL ?? 100);
const MANY = Number(process.env.BENCH_FUNCTIONS ?? 1000);
const READY_TIMEOUT_MS = Number(process.env.BENCH_READY_TIMEOUT_MS ?? 600_000);
const chartValues = parseYaml(await readFile('charts/sluice/values.yaml', 'utf8')) as {
  operator: { nodeOptions?: string };
};
const NODE_OPTIONS = process.env.SLUICE_BENCH_NODE_OPTIONS ?? chartValues.operator.nodeOptions ?? '';
const log = createLogger('bench', 'warn');

const loadAtStart = loadavg()[0]!;
const plane = await up();
const kubeconfig = plane.kubeconfig;
// The CRD from the schema in code, as the test harness installs it.
await applyObject(kubeconfig, streamingFunctionCrd());
await waitForCrd(kubeconfig);
const kube = await KubeClient.load(kubeconfig);
const ns = `bench-${randomUUID().slice(0, 6)}`;
await kube.request('POST', '/api/v1/namespaces', { body: { metadata: { name: ns } } });

const nats = await startNats();
const metricsPort = await freePort();
const operator = startSluice(
  [
    'operator',
    `--kubeconfig=${kubeconfig}`,
    `--namespace=${ns}`,
    `--metrics=127.0.0.1:${metricsPort}`,
    '--workers=8',
    `--nats=${nats.url}`,
  ],
  { env: { ...process.env, SLUICE_LOG_LEVEL: 'warn', NODE_OPTIONS } },
);

async function metrics(): Promise<{
  rss: number;
  cpuSeconds: number;
  requests: Record<string, number>;
  reconciles: number;
  reports: number;
}> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const requests: Record<string, number> = {};
  for (const m of text.matchAll(/^sluice_operator_api_requests_total\{method="(\w+)"\} (\d+)/gm)) {
    requests[m[1]!] = Number(m[2]);
  }
  let reconciles = 0;
  for (const m of text.matchAll(/^sluice_operator_reconcile_total\{[^}]*\} (\d+)/gm))
    reconciles += Number(m[1]);
  const rss = Number(/^process_resident_memory_bytes (\S+)/m.exec(text)?.[1] ?? 0);
  const cpuSeconds = Number(/^process_cpu_seconds_total (\S+)/m.exec(text)?.[1] ?? 0);
  const reports = Number(/^sluice_autoscaler_reports_total\{result="ok"\} (\S+)/m.exec(text)?.[1] ?? 0);
  return { rss, cpuSeconds, requests, reconciles, reports };
}
const sum = (r: Record<string, number>) => Object.values(r).reduce((a, b) => a + b, 0);
const writes = (r: Record<string, number>) => (r.POST ?? 0) + (r.PATCH ?? 0) + (r.PUT ?? 0) + (r.DELETE ?? 0);
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

// The bench's own view: when each Deployment appears, and each function's Ready condition.
const deploymentSeen = new Map<string, number>();
const readySeen = new Map<string, number>();
/** When each Deployment was first seen asking for 3 replicas (the burst of step 6). */
const threeSeen = new Map<string, number>();
const deployments = new Informer<KubeObject>(kube, {
  path: resourcePath('apps/v1', 'deployments', ns),
  onChange: (d, change) => {
    if (change !== 'deleted' && !deploymentSeen.has(d.metadata!.name!)) {
      deploymentSeen.set(d.metadata!.name!, performance.now());
    }
    if (change !== 'deleted' && d.spec?.replicas === 3 && !threeSeen.has(d.metadata!.name!)) {
      threeSeen.set(d.metadata!.name!, performance.now());
    }
  },
  log,
});
const functions = new Informer<KubeObject>(kube, {
  path: resourcePath('sluice.dev/v1alpha1', 'streamingfunctions', ns),
  onChange: (f) => {
    const ready = (f.status?.conditions ?? []).find((c: { type: string }) => c.type === 'Ready');
    if (ready?.status === 'True' && !readySeen.has(f.metadata!.name!)) {
      readySeen.set(f.metadata!.name!, performance.now());
    }
  },
  log,
});
await deployments.start();
await functions.start();
await waitFor(() => fetch(`http://127.0.0.1:${metricsPort}/readyz`).then((r) => r.ok), {
  timeoutMs: 30_000,
  what: 'the operator ready',
});

/** The operator sent nothing for 2 s: every watch event it had coming was handled. */
async function settled(): Promise<void> {
  await waitFor(
    async () => {
      const a = await metrics();
      await new Promise((r) => setTimeout(r, 2000));
      const b = await metrics();
      return sum(b.requests) === sum(a.requests);
    },
    { timeoutMs: 120_000, intervalMs: 0, what: 'the operator to go quiet' },
  ).catch(() => console.error('the operator did not go quiet within 120 s (pods still changing)'));
}

function create(name: string) {
  return kube.request('POST', resourcePath('sluice.dev/v1alpha1', 'streamingfunctions', ns), {
    body: {
      apiVersion: 'sluice.dev/v1alpha1',
      kind: 'StreamingFunction',
      metadata: { name, namespace: ns },
      // A thousand functions cannot run as processes here: kwok plays their pods. Room to scale
      // (step 6); the reports of step 5 keep each one at 1.
      spec: {
        image: 'ghcr.io/acme/echo:1',
        map: { enabled: false },
        tolerations: [{ key: SIMULATED_KEY, operator: 'Exists' }],
        scaling: { minReplicas: 1, maxReplicas: 3 },
      },
    },
  });
}

async function sequentialLatencies(prefix: string, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const name = `${prefix}-${i}`;
    const t0 = performance.now();
    await create(name);
    await waitFor(() => deploymentSeen.has(name), {
      timeoutMs: 30_000,
      intervalMs: 1,
      what: `${name}'s Deployment`,
    });
    out.push(deploymentSeen.get(name)! - t0);
  }
  return out;
}

// 1. apply → Deployment, one at a time.
const first = await sequentialLatencies('seq', FIRST);

// 2. MANY at once.
const before = await metrics();
let peakRss = before.rss;
const sampler = setInterval(() => {
  metrics()
    .then((m) => {
      peakRss = Math.max(peakRss, m.rss);
    })
    .catch(() => undefined);
}, 500);
const names = Array.from({ length: MANY }, (_, i) => `many-${i}`);
const t0 = performance.now();
for (let i = 0; i < names.length; i += 25) await Promise.all(names.slice(i, i + 25).map(create));
const createdMs = performance.now() - t0;
await waitFor(() => names.every((n) => deploymentSeen.has(n)), {
  timeoutMs: READY_TIMEOUT_MS,
  intervalMs: 100,
});
const allAppliedMs = Math.max(...names.map((n) => deploymentSeen.get(n)!)) - t0;
let allReadyMs: number | undefined;
try {
  await waitFor(() => names.every((n) => readySeen.has(n)), { timeoutMs: READY_TIMEOUT_MS, intervalMs: 200 });
  allReadyMs = Math.max(...names.map((n) => readySeen.get(n)!)) - t0;
} catch {
  // reported as the count that made it
}
const readyCount = names.filter((n) => readySeen.has(n)).length;
// Let the status writes of the last pods settle before counting.
await settled();
const after = await metrics();
clearInterval(sampler);
peakRss = Math.max(peakRss, after.rss);
const delta = Object.fromEntries(
  Object.entries(after.requests).map(([k, v]) => [k, v - (before.requests[k] ?? 0)]),
);

// 3. latency again with MANY + FIRST functions in the caches.
const later = await sequentialLatencies('late', 20);
await settled();

// 4. steady state: nothing changes for 10 s; count what the operator writes meanwhile.
const idleBefore = await metrics();
await new Promise((r) => setTimeout(r, 10_000));
const idleAfter = await metrics();
const idleWrites = writes(idleAfter.requests) - writes(idleBefore.requests);
const idleCpuPct = ((idleAfter.cpuSeconds - idleBefore.cpuSeconds) / 10) * 100;

// 5. 10,000 reporters (MANY functions x 10 replicas), one report a second each.
const REPLICAS = Number(process.env.BENCH_REPLICAS ?? 10);
const reporters = startProcess(process.execPath, [
  'bench/load-reporters.ts',
  nats.url,
  ns,
  'many-',
  String(MANY),
  String(REPLICAS),
]);
await waitFor(async () => (await metrics()).reports > MANY * REPLICAS * 3, {
  timeoutMs: 60_000,
  what: `the operator to hear the reports (${reporters.output().slice(-500)})`,
});
const LOAD_SECONDS = Number(process.env.BENCH_LOAD_SECONDS ?? 30);
const loadBefore = await metrics();
const loadT0 = performance.now();
let loadPeakRss = loadBefore.rss;
const loadSampler = setInterval(() => {
  metrics()
    .then((m) => {
      loadPeakRss = Math.max(loadPeakRss, m.rss);
    })
    .catch(() => undefined);
}, 1000);
await new Promise((r) => setTimeout(r, LOAD_SECONDS * 1000));
const loadAfter = await metrics();
clearInterval(loadSampler);
const loadWall = (performance.now() - loadT0) / 1000;
const autoscaling = {
  reporters: MANY * REPLICAS,
  seconds: loadWall,
  reportsPerSecond: (loadAfter.reports - loadBefore.reports) / loadWall,
  operatorCpuPct: ((loadAfter.cpuSeconds - loadBefore.cpuSeconds) / loadWall) * 100,
  idleCpuPct,
  statusWritesPerSecond: (writes(loadAfter.requests) - writes(loadBefore.requests)) / loadWall,
  peakRssMB: loadPeakRss / 2 ** 20,
};

// 6. Bursts while the reports flow: an activator holds 13 requests (3 replicas at 6 each).
const activatorNc = await connect({ servers: nats.url });
const burstLatencies: number[] = [];
for (let i = 0; i < 5; i++) {
  const name = `many-${i}`;
  const t = performance.now();
  const report = {
    from: 'activator/bench',
    kind: 'activator' as const,
    active: 0,
    queued: 0,
    peak: 13,
    held: 13,
  };
  activatorNc.publish(loadSubject(`${ns}/${name}`), encodeReport(report));
  await waitFor(() => threeSeen.has(name), { timeoutMs: 30_000, intervalMs: 1, what: `${name} scaled to 3` });
  burstLatencies.push(threeSeen.get(name)! - t);
}
await activatorNc.close();
await reporters.stop();

// 7. Scraping instead: one real sidecar's /metrics, fetched and parsed by this process.
const proxyAdmin = await freePort();
const proxy = startSluice([
  'proxy',
  `--listen=127.0.0.1:${await freePort()}`,
  `--admin=127.0.0.1:${proxyAdmin}`,
  '--upstream=http://127.0.0.1:9',
]);
await waitFor(() => fetch(`http://127.0.0.1:${proxyAdmin}/healthz`).then((r) => r.ok), { what: 'a proxy' });
const SCRAPES = 500;
let scrapeBytes = 0;
const cpu0 = process.cpuUsage();
const scrapeT0 = performance.now();
for (let i = 0; i < SCRAPES; i++) {
  const text = await (await fetch(`http://127.0.0.1:${proxyAdmin}/metrics`)).text();
  scrapeBytes = text.length;
  // What a scraper needs from it: the streams in flight and the queue.
  for (const line of text.split('\n')) {
    if (line.startsWith('sluice_proxy_streams_active ') || line.startsWith('sluice_proxy_queue_waiting ')) {
      Number(line.split(' ')[1]);
    }
  }
}
const cpu1 = process.cpuUsage(cpu0);
const scrapeCpuMs = (cpu1.user + cpu1.system) / 1000 / SCRAPES;
const scrapeWallMs = (performance.now() - scrapeT0) / SCRAPES;
await proxy.stop();
const scraping = {
  bytesPerScrape: scrapeBytes,
  scraperCpuMsPerScrape: scrapeCpuMs,
  wallMsPerScrape: scrapeWallMs,
  scraperCpuPctAt10kPerSecond: scrapeCpuMs * MANY * REPLICAS * 0.1,
};

const results = {
  date: new Date().toISOString(),
  sequential: { n: FIRST, p50Ms: pct(first, 50), p99Ms: pct(first, 99), maxMs: Math.max(...first) },
  withManyCached: { n: later.length, p50Ms: pct(later, 50), p99Ms: pct(later, 99) },
  many: {
    n: MANY,
    createMs: createdMs,
    allDeploymentsMs: allAppliedMs,
    allReadyMs,
    readyCount,
    operatorCpuMsPerFunction: ((after.cpuSeconds - before.cpuSeconds) * 1000) / MANY,
    requestsPerFunction: sum(delta) / MANY,
    writesPerFunction: writes(delta) / MANY,
    requests: delta,
  },
  operatorPeakRssMB: peakRss / 2 ** 20,
  operatorSettledRssMB: after.rss / 2 ** 20,
  operatorNodeOptions: NODE_OPTIONS,
  steadyStateWrites10s: idleWrites,
  autoscaling,
  burstToScaleMs: { p50: pct(burstLatencies, 50), max: Math.max(...burstLatencies) },
  scraping,
  loadAverage: { start: loadAtStart, end: loadavg()[0]! },
};
console.log(JSON.stringify(results, null, 2));

const f = (x: number | undefined, d = 0) => (x === undefined ? 'n/a' : x.toFixed(d));
const section = `## Operator

\`npm run bench:operator\` (bench/operator.ts), ${results.date.slice(0, 10)}, this 2-core machine, against the
local plane (etcd on tmpfs, kube-apiserver, kube-controller-manager, kube-scheduler, kwok nodes).
The operator runs as a \`sluice operator\` child process with 8 workers and
\`NODE_OPTIONS=${results.operatorNodeOptions || '(none)'}\`; numbers from one run.
1-minute load average ${f(results.loadAverage.start, 1)} at the start and ${f(results.loadAverage.end, 1)} at the end (2 cores,
shared with other work): latencies are dominated by the API server's own CPU share.

| measure | result | target |
| --- | --- | --- |
| apply → owned Deployment, p50 / p99 (${FIRST} functions, one at a time) | ${f(results.sequential.p50Ms, 1)} ms / ${f(results.sequential.p99Ms, 1)} ms | p50 ≤ 200 ms |
| same, with ${MANY + FIRST} functions in the caches (20 more) | ${f(results.withManyCached.p50Ms, 1)} ms / ${f(results.withManyCached.p99Ms, 1)} ms | flat |
| ${MANY} functions created (25 at a time) | ${f(createdMs / 1000, 1)} s | |
| … every Deployment applied | ${f(allAppliedMs / 1000, 1)} s | |
| … every function Ready from the operator's view | ${allReadyMs === undefined ? `${readyCount}/${MANY} after ${READY_TIMEOUT_MS / 1000} s` : `${f(allReadyMs / 1000, 1)} s`} | |
| operator peak RSS | ${f(results.operatorPeakRssMB)} MB | ≤ 150 MB |
| operator RSS once the ${MANY} have settled | ${f(results.operatorSettledRssMB)} MB | |
| operator CPU per function (all its reconciles) | ${f(results.many.operatorCpuMsPerFunction, 1)} ms | |
| API requests per function (all verbs) / writes | ${f(results.many.requestsPerFunction, 2)} / ${f(results.many.writesPerFunction, 2)} | |
| writes in 10 s of steady state | ${idleWrites} | 0 |
| operator CPU, steady state (no load reports) | ${f(idleCpuPct, 1)} % of a core | |
| **autoscaling**: ${autoscaling.reporters} reporters (${MANY} functions x ${REPLICAS} replicas), reports received | ${f(autoscaling.reportsPerSecond)} /s | ${autoscaling.reporters} /s |
| … operator CPU while deciding on them (one decision per function a second) | ${f(autoscaling.operatorCpuPct, 1)} % of a core | ≤ 25 % |
| … status writes (inFlight refreshed at most every 15 s per function) | ${f(autoscaling.statusWritesPerSecond, 1)} /s | |
| … operator peak RSS | ${f(autoscaling.peakRssMB)} MB | ≤ 150 MB |
| burst (13 held requests) → Deployment scaled to 3, p50 / max of 5 | ${f(results.burstToScaleMs.p50)} ms / ${f(results.burstToScaleMs.max)} ms | ≤ 2,000 ms |
| the alternative: scraping one sidecar's /metrics (${f(scraping.bytesPerScrape / 1024, 1)} KiB), scraper CPU | ${f(scraping.scraperCpuMsPerScrape, 2)} ms per scrape = ${f(scraping.scraperCpuPctAt10kPerSecond)} % of a core at ${autoscaling.reporters}/s | |

Requests during the ${MANY}: ${Object.entries(delta)
  .map(([k, v]) => `${k} ${v}`)
  .join(', ')}. Per function: 3 GETs (is a foreign object in the way?), 3 server-side applies (Deployment,
Service, Ingress), one Event, and a status patch each time what the operator observes changes
(Deployment created, pods scheduled, ready). Not the operator's time: with ${f(results.many.operatorCpuMsPerFunction, 1)} ms of
its own CPU per function, the wall-clock numbers are set by how fast this machine's API server,
controller-manager (client QPS 20 by default) and kwok turn Deployments into running pods.
`;
const path = 'bench/RESULTS.md';
let doc = await readFile(path, 'utf8').catch(() => '# Benchmark results\n');
const start = doc.indexOf('## Operator');
if (start >= 0) {
  const next = doc.indexOf('\n## ', start + 1);
  doc = doc.slice(0, start) + section + (next >= 0 ? `\n${doc.slice(next + 1)}` : '');
} else {
  doc = `${doc.trimEnd()}\n\n${section}`;
}
await writeFile(path, doc);

clearInterval(sampler);
await operator.stop();
await nats.stop();
await deployments.stop();
await functions.stop();
await kube.request('DELETE', `/api/v1/namespaces/${ns}`).catch(() => undefined);
kube.close();
