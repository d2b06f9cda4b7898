// `npm run bench:map`: map fan-out throughput, latency and CPU cost on this machine, in one run.
// A real nats-server -js, N replicas (a map function process + a `sluice proxy` each) for
// N = 1, 2, 3, and this client. For each N: the same inputs called directly on the functions
// in a loop with the same total concurrency, then one `POST /_sluice/map` of all of them.
// The function stamps each output with CLOCK_MONOTONIC (shared by every process here), so the
// client measures result produced → event read. CPU per item is each process's user + system
// time over the map (from /proc/<pid>/stat) divided by the items. Prints markdown tables.
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { loadavg } from 'node:os';
import { readMap, startReplicas } from '../harness/map-replicas.ts';
import { startNats } from '../harness/nats.ts';

const ITEMS = Number(process.env.SLUICE_BENCH_ITEMS ?? 10_000);
const CONCURRENCY = Number(process.env.SLUICE_BENCH_CONCURRENCY ?? 16);
/** A folder: each proxy writes a V8 CPU profile there when it stops (`node --cpu-prof`). */
const PROFILE_DIR = process.env.SLUICE_BENCH_PROFILE;
const REPLICAS = (process.env.SLUICE_BENCH_REPLICAS ?? '1,2,3').split(',').map(Number);
/** Clock ticks per second of /proc/<pid>/stat (USER_HZ: 100 on Linux). */
const USER_HZ = 100;

const monotonicMs = () => Number(process.hrtime.bigint()) / 1e6;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

/** User + system CPU of a process so far, in ms. */
function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  if (pid === process.pid) {
    const { user, system } = process.cpuUsage();
    return (user + system) / 1000;
  }
  // Fields after the command (which may hold spaces) start after its closing parenthesis.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / USER_HZ;
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

/** CPU ms per item over the map, by process kind (summed over the replicas). */
interface CpuPerItem {
  proxies: number;
  /** The proxy the map was posted to (it also streams the results), alone. */
  requester: number;
  nats: number;
  functions: number;
  client: number;
}

interface Row {
  replicas: number;
  directMs: number;
  mapMs: number;
  p50: number;
  p99: number;
  failed: number;
  cpu: CpuPerItem;
}

async function measure(nats: Awaited<ReturnType<typeof startNats>>, replicas: number): Promise<Row> {
  const group = await startReplicas(replicas, {
    nats: nats.url,
    fn: `bench/map-${replicas}-${process.pid}`,
    flags: ['--concurrency', String(CONCURRENCY), '--max-map-inputs', String(ITEMS)],
    nodeArgs: PROFILE_DIR ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}`] : [],
    logCalls: false,
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
    const pids = {
      proxies: group.map((r) => r.proxy.child.pid),
      functions: group.map((r) => r.fn.child.pid),
      nats: [nats.pid()],
      client: [process.pid],
    };
    const cpuOf = (list: (number | undefined)[]): number =>
      list.reduce<number>((sum, pid) => sum + cpuMs(pid), 0);
    const before = {
      proxies: cpuOf(pids.proxies),
      requester: cpuMs(pids.proxies[0]),
      functions: cpuOf(pids.functions),
      nats: cpuOf(pids.nats),
      client: cpuOf(pids.client),
    };
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
    const perItem = (now: number, then: number) => (now - then) / ITEMS;
    const cpu: CpuPerItem = {
      proxies: perItem(cpuOf(pids.proxies), before.proxies),
      requester: perItem(cpuMs(pids.proxies[0]), before.requester),
      functions: perItem(cpuOf(pids.functions), before.functions),
      nats: perItem(cpuOf(pids.nats), before.nats),
      client: perItem(cpuOf(pids.client), before.client),
    };
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
      cpu,
    };
  } finally {
    await Promise.all(group.map((r) => r.stop()));
  }
}

const loadAtStart = loadavg();
const nats = await startNats();
const rows: Row[] = [];
try {
  for (const n of REPLICAS) {
    rows.push(await measure(nats, n));
    process.stderr.write(`measured ${n} replica(s)\n`);
  }
} finally {
  await nats.stop();
}

const fmt = (n: number, digits = 1) => n.toFixed(digits);
const load = (l: number[]) => l.map((x) => x.toFixed(1)).join(' ');
console.log(
  `\n${ITEMS} inputs (trivial function), --concurrency ${CONCURRENCY} per replica, direct baseline with the same total concurrency; load average ${load(loadAtStart)} at the start, ${load(loadavg())} at the end\n`,
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
console.log('\nCPU ms per item during the map (user + system, all replicas of a kind summed):\n');
console.log('| replicas | proxies | of which the requester | nats-server | functions | client | all |');
console.log('| --- | --- | --- | --- | --- | --- | --- |');
for (const { replicas, cpu } of rows) {
  const all = cpu.proxies + cpu.nats + cpu.functions + cpu.client;
  console.log(
    `| ${replicas} | ${fmt(cpu.proxies, 3)} | ${fmt(cpu.requester, 3)} | ${fmt(cpu.nats, 3)} | ${fmt(cpu.functions, 3)} | ${fmt(cpu.client, 3)} | ${fmt(all, 3)} |`,
  );
}
