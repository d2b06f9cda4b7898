// `npm run bench:map`: map fan-out throughput and latency on this machine, in one run.
// A real nats-server -js, N replicas (a map function process + a `sluice proxy` each) for
// N = 1, 2, 3, and this client. For each N: the same inputs called directly on the functions
// in a loop with the same total concurrency, then one `POST /_sluice/map` of all of them.
// The function stamps each output with CLOCK_MONOTONIC (shared by every process here), so the
// client measures result produced → event read. Prints a markdown table with ratios.
import { Agent, request } from 'node:http';
import { loadavg } from 'node:os';
import { readMap, startReplicas } from '../harness/map-replicas.ts';
import { startNats } from '../harness/nats.ts';

const ITEMS = Number(process.env.SLUICE_BENCH_ITEMS ?? 10_000);
const CONCURRENCY = Number(process.env.SLUICE_BENCH_CONCURRENCY ?? 16);
/** A folder: each proxy writes a V8 CPU profile there when it stops (`node --cpu-prof`). */
const PROFILE_DIR = process.env.SLUICE_BENCH_PROFILE;
const REPLICAS = (process.env.SLUICE_BENCH_REPLICAS ?? '1,2,3').split(',').map(Number);

const monotonicMs = () => Number(process.hrtime.bigint()) / 1e6;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

function post(agent: Agent, url: string, body: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { method: 'POST', agent, headers: { 'content-type': 'application/json' } },
      (res) => {
        res.resume();
        res.on('end', () =>
          res.statusCode === 200 ? resolve() : reject(new Error(`status ${res.statusCode}`)),
        );
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** The baseline: every input POSTed straight to the functions, `lanes` at a time. */
async function direct(functionUrls: string[], inputs: string[], lanes: number): Promise<number> {
  const agent = new Agent({ keepAlive: true, maxSockets: lanes });
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: lanes }, async (_, lane) => {
      while (next < inputs.length) {
        const i = next++;
        await post(agent, `${functionUrls[lane % functionUrls.length]}/`, inputs[i]!);
      }
    }),
  );
  const elapsed = performance.now() - started;
  agent.destroy();
  return elapsed;
}

interface Row {
  replicas: number;
  directMs: number;
  mapMs: number;
  p50: number;
  p99: number;
  failed: number;
}

async function measure(natsUrl: string, replicas: number): Promise<Row> {
  const group = await startReplicas(replicas, {
    nats: natsUrl,
    fn: `bench/map-${replicas}-${process.pid}`,
    flags: ['--concurrency', String(CONCURRENCY), '--max-map-inputs', String(ITEMS)],
    nodeArgs: PROFILE_DIR ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}`] : [],
  });
  try {
    const inputs = Array.from({ length: ITEMS }, (_, i) => JSON.stringify({ stamp: i }));
    // Warm both paths (connections, JIT) on a tenth of the inputs first.
    await direct(
      group.map((r) => r.functionUrl),
      inputs.slice(0, ITEMS / 10),
      CONCURRENCY * replicas,
    );
    await readMap(`${group[0]!.url}/_sluice/map`, {
      method: 'POST',
      body: JSON.stringify({
        inputs: inputs.slice(0, ITEMS / 10).map((i) => JSON.parse(i)),
        order: 'completion',
      }),
    });
    const directMs = await direct(
      group.map((r) => r.functionUrl),
      inputs,
      CONCURRENCY * replicas,
    );
    const latencies: number[] = [];
    const started = performance.now();
    const { events } = await readMap(`${group[0]!.url}/_sluice/map`, {
      method: 'POST',
      body: `{"order":"completion","inputs":[${inputs.join(',')}]}`,
      onEvent: (event) => {
        if (event.event === 'result') latencies.push(monotonicMs() - (event.json.output as { t: number }).t);
      },
    });
    const mapMs = performance.now() - started;
    const done = events.at(-1);
    if (done?.event !== 'done' || latencies.length + Number(done.json.failed) !== ITEMS) {
      throw new Error(`map did not finish: last event ${JSON.stringify(done)}`);
    }
    latencies.sort((a, b) => a - b);
    return {
      replicas,
      directMs,
      mapMs,
      p50: percentile(latencies, 50),
      p99: percentile(latencies, 99),
      failed: Number(done.json.failed),
    };
  } finally {
    await Promise.all(group.map((r) => r.stop()));
  }
}

const nats = await startNats();
const rows: Row[] = [];
try {
  for (const n of REPLICAS) {
    rows.push(await measure(nats.url, n));
    process.stderr.write(`measured ${n} replica(s)\n`);
  }
} finally {
  await nats.stop();
}

const fmt = (n: number, digits = 1) => n.toFixed(digits);
console.log(
  `\n${ITEMS} inputs (trivial function), --concurrency ${CONCURRENCY} per replica, direct baseline with the same total concurrency; load average at the end ${loadavg()
    .map((l) => l.toFixed(1))
    .join(' ')}\n`,
);
console.log(
  '| replicas | direct items/s | map items/s | map / direct | added ms per item | result → client p50 / p99 | failed |',
);
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const r of rows) {
  const directRate = (ITEMS / r.directMs) * 1000;
  const mapRate = (ITEMS / r.mapMs) * 1000;
  console.log(
    `| ${r.replicas} | ${fmt(directRate, 0)} | ${fmt(mapRate, 0)} | x${fmt(mapRate / directRate, 2)} | ${fmt((r.mapMs - r.directMs) / ITEMS, 3)} | ${fmt(r.p50)} ms / ${fmt(r.p99)} ms | ${r.failed} |`,
  );
}
