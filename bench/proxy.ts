// `npm run bench`: the streaming data plane, side by side in one run on this machine —
// direct to the function, through `sluice proxy`, through nginx (proxy_buffering off), and
// through a bare http-proxy-3 forwarder (the one the proxy replaced, bench/bare-forwarder.ts).
// The function, the proxy, nginx and this client are separate processes: an idle stream holds
// two descriptors in the proxy and one each in the function and the client, so no process
// could hold two roles at ~10,000 streams. Prints ratios measured in this run.
//
// SLUICE_BENCH_BEFORE=<another checkout> adds that checkout's `sluice proxy` as a fourth path
// (before/after of a change, in the same run); SLUICE_BENCH_ONLY=latency,throughput,idle picks
// sections; SLUICE_BENCH_IDLE sets the idle stream count (9,900). The Node forwarders run with
// the flags Sluice gives its proxies (PROXY_NODE_FLAGS) unless SLUICE_BENCH_NODE_FLAGS says
// otherwise ("" for Node's defaults).
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { Agent, type IncomingMessage, request } from 'node:http';
import { loadavg } from 'node:os';
import { createInterface } from 'node:readline';
import { createParser } from 'eventsource-parser';
import { PROXY_NODE_FLAGS } from '../api/v1alpha1/proxy-flags.ts';
import { freePort, waitFor, waitForPort } from '../common/net.ts';
import { nginxWorkerPid, startNginx } from '../test/support/nginx.ts';

const FD_LIMIT = 20_000;

// Raise the open-files limit for this process (the client) by re-running under `ulimit -n`.
if (!process.env.SLUICE_BENCH_RAISED) {
  const script = `ulimit -n $(( $(ulimit -Hn) < ${FD_LIMIT} ? $(ulimit -Hn) : ${FD_LIMIT} )) && exec "$0" "$@"`;
  const run = spawnSync(
    'bash',
    ['-c', script, process.execPath, ...process.execArgv, ...process.argv.slice(1)],
    {
      stdio: 'inherit',
      env: { ...process.env, SLUICE_BENCH_RAISED: '1' },
    },
  );
  process.exit(run.status ?? 1);
}

// A proxied stream holds two descriptors in the proxy (client side and function side), and the
// hard cap here is 20,000 per process, which not even root may raise in this container: 9,900
// streams is as close to 10,000 as fits.
const IDLE_STREAMS = Number(process.env.SLUICE_BENCH_IDLE ?? 9_900);
const BEFORE = process.env.SLUICE_BENCH_BEFORE;
const NODE_FLAGS = (process.env.SLUICE_BENCH_NODE_FLAGS ?? PROXY_NODE_FLAGS.join(' '))
  .split(' ')
  .filter(Boolean);
const ONLY = new Set((process.env.SLUICE_BENCH_ONLY ?? 'latency,throughput,idle').split(','));
// Each throughput figure is the median of this many runs, the paths taking turns, so a change
// in the machine's load during the run hits every path alike.
const ROUNDS = 5;
const children: ChildProcess[] = [];
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function summary(values: number[]): { median: number; p99: number } {
  const sorted = [...values].sort((a, b) => a - b);
  return { median: percentile(sorted, 50), p99: percentile(sorted, 99) };
}

function median(values: number[]): number {
  return percentile(
    [...values].sort((a, b) => a - b),
    50,
  );
}

/** A child process under the raised limit whose first stdout line is JSON (or that listens on `port`). */
function spawnRaised(command: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  const child = spawn('bash', ['-c', `ulimit -n $(ulimit -Hn) && exec "$@"`, 'bash', ...command], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, ...env },
  });
  children.push(child);
  return child;
}

function rssKb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]);
}

const agent = new Agent({ keepAlive: true, maxSockets: Number.POSITIVE_INFINITY });

/** GETs an event stream; calls onEvent per event; resolves with the time to the first byte. */
function stream(
  url: string,
  onEvent: (data: string) => void,
  useAgent: Agent | false = agent,
): Promise<number> {
  return new Promise((resolve, reject) => {
    const sent = monotonicMs();
    let firstByte = 0;
    const parser = createParser({ onEvent: (e) => onEvent(e.data) });
    const req = request(url, { agent: useAgent }, (res) => {
      res.setEncoding('utf8');
      if (res.statusCode !== 200) {
        let body = '';
        res.on('data', (chunk: string) => {
          body += chunk;
        });
        res.on('end', () => reject(new Error(`${url}: ${res.statusCode} ${body}`)));
        return;
      }
      res.on('data', (chunk: string) => {
        if (firstByte === 0) firstByte = monotonicMs() - sent;
        parser.feed(chunk);
      });
      res.on('end', () => resolve(firstByte));
      res.on('error', (err) => reject(new Error(`${url}: ${err.message}`, { cause: err })));
    });
    req.on('error', (err) => reject(new Error(`${url}: ${err.message}`, { cause: err })));
    req.end();
  });
}

async function perEventLatency(base: string): Promise<number[]> {
  const latencies: number[] = [];
  await stream(`${base}/stamp?count=3000&interval=1`, (data) => latencies.push(monotonicMs() - Number(data)));
  return latencies.slice(100); // the first events warm up JIT and connections
}

/** Requests one after another over keep-alive connections, the paths taking turns request by request. */
async function timeToFirstByte(paths: Record<string, string>): Promise<Record<string, number[]>> {
  const times: Record<string, number[]> = Object.fromEntries(Object.keys(paths).map((name) => [name, []]));
  for (let i = 0; i < 600; i++) {
    for (const [name, base] of Object.entries(paths)) {
      const ms = await stream(`${base}/events?count=1`, () => {});
      if (i >= 100) times[name]!.push(ms); // the first ones warm up JIT and connections
    }
  }
  return times;
}

async function eventsPerSecond(base: string, streams: number, perStream: number): Promise<number> {
  let events = 0;
  const started = monotonicMs();
  await Promise.all(
    Array.from({ length: streams }, () =>
      stream(`${base}/events?count=${perStream}&size=64`, () => {
        events++;
      }),
    ),
  );
  const seconds = (monotonicMs() - started) / 1000;
  if (events !== streams * perStream) throw new Error(`${base}: ${events} of ${streams * perStream} events`);
  return events / seconds;
}

/** Opens `count` streams to /idle through a forwarder and returns the RSS growth of process `pid` per stream. */
async function idleStreamCost(
  base: string,
  pid: number,
  count: number,
): Promise<{ perStreamKb: number; rssMb: number }> {
  const before = rssKb(pid);
  const open: ReturnType<typeof request>[] = [];
  const batch = 500;
  for (let i = 0; i < count; i += batch) {
    await Promise.all(
      Array.from({ length: Math.min(batch, count - i) }, () => {
        const req = request(`${base}/idle`, { agent: false });
        open.push(req);
        req.on('error', () => {});
        req.end();
        return once(req, 'response').then(([res]) => {
          const status = (res as IncomingMessage).statusCode;
          if (status !== 200) throw new Error(`idle stream ${open.length} got ${status}, not 200`);
        });
      }),
    );
  }
  // Settle: let the proxy finish allocating for the last batch before reading its RSS.
  let last = 0;
  await waitFor(
    () => {
      const now = rssKb(pid);
      const stable = Math.abs(now - last) < 256;
      last = now;
      return stable;
    },
    { intervalMs: 500, timeoutMs: 30_000, what: 'proxy RSS to settle' },
  );
  const after = rssKb(pid);
  for (const req of open) req.destroy();
  return { perStreamKb: (after - before) / count, rssMb: after / 1024 };
}

function spawnProxy(checkout: string, upstream: string, port: number, adminPort: number): ChildProcess {
  const child = spawnRaised(
    [
      process.execPath,
      ...NODE_FLAGS,
      `${checkout}/bin/sluice.js`,
      'proxy',
      '--listen',
      `127.0.0.1:${port}`,
      '--admin',
      `127.0.0.1:${adminPort}`,
      '--upstream',
      upstream,
      '--concurrency',
      String(IDLE_STREAMS + 1000),
    ],
    { SLUICE_LOG_LEVEL: process.env.SLUICE_LOG_LEVEL ?? 'info' },
  );
  child.stdout!.resume(); // one JSON log line per request, read and dropped like a log shipper would
  return child;
}

const HERE = new URL('..', import.meta.url).pathname.replace(/\/$/, '');

async function main(): Promise<void> {
  const fn = spawnRaised([process.execPath, 'test/support/function-server.ts', '0']);
  const [line] = (await once(createInterface({ input: fn.stdout! }), 'line')) as [string];
  const fnPort = (JSON.parse(line) as { port: number }).port;
  const direct = `http://127.0.0.1:${fnPort}`;

  const startProxyAt = async (checkout: string) => {
    const port = await freePort();
    const child = spawnProxy(checkout, direct, port, await freePort());
    await waitForPort(port);
    return { child, url: `http://127.0.0.1:${port}` };
  };
  const proxy = await startProxyAt(HERE);
  const before = BEFORE ? await startProxyAt(BEFORE) : undefined;
  // Enough connections for the idle streams: each holds two (client and function side), under
  // the hard cap on open files.
  const nginx = await startNginx(fnPort, { workerConnections: FD_LIMIT, rlimitNofile: FD_LIMIT });
  // The forwarder this proxy replaced: http-proxy-3 on Node with nothing of Sluice's.
  const startBare = async () => {
    const port = await freePort();
    const child = spawnRaised([
      process.execPath,
      ...NODE_FLAGS,
      'bench/bare-forwarder.ts',
      String(port),
      direct,
    ]);
    await waitForPort(port);
    return { child, url: `http://127.0.0.1:${port}` };
  };
  const bare = await startBare();
  const paths: Record<string, string> = {
    direct,
    proxy: proxy.url,
    nginx: nginx.url,
    'http-proxy-3': bare.url,
  };
  if (before) paths.before = before.url;
  const names = Object.keys(paths);
  // An error names a URL: this says whose it is.
  console.log(
    Object.entries(paths)
      .map(([name, url]) => `${name} ${url}`)
      .join(', '),
  );

  const cpu = spawnSync('nproc').stdout.toString().trim();
  console.log(`# sluice proxy benchmark — ${new Date().toISOString()}, ${cpu} CPUs, Node ${process.version}`);
  if (BEFORE) console.log(`"before" is the sluice proxy of ${BEFORE}`);
  console.log(`Node forwarders run with: ${NODE_FLAGS.join(' ') || "Node's default flags"}`);
  // Everything shares these CPUs: a busy machine moves the tails (p99) most of all.
  console.log(
    `load average at start: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}\n`,
  );

  const ms = (v: number) => `${v.toFixed(3)} ms`;
  const ratio = (v: number) => `${v.toFixed(2)}×`;
  const verdicts: [string, string, boolean][] = [];

  if (ONLY.has('latency')) {
    // Per-event latency: the function stamps each event with CLOCK_MONOTONIC; the client subtracts.
    const latency: Record<string, { median: number; p99: number }> = {};
    for (const [name, base] of Object.entries(paths)) latency[name] = summary(await perEventLatency(base));
    const ttfbTimes = await timeToFirstByte(paths);
    const ttfb = Object.fromEntries(names.map((name) => [name, summary(ttfbTimes[name]!)]));
    const added = (table: typeof latency, name: string, key: 'median' | 'p99') =>
      table[name]![key] - table.direct![key];

    console.log('## Added latency (path minus direct, same run)\n');
    const cols = names.filter((n) => n !== 'direct');
    console.log(
      `| measure | direct | ${cols.join(' | ')} | ${cols.map((c) => `${c} added`).join(' | ')} | proxy − nginx |`,
    );
    console.log(`|---|---|${cols.map(() => '---|---|').join('')}---|`);
    for (const [label, table] of [
      ['per-event', latency],
      ['TTFB', ttfb],
    ] as const) {
      for (const key of ['median', 'p99'] as const) {
        const cells = cols.map((c) => ms(table[c]![key]));
        const adds = cols.map((c) => ms(added(table, c, key)));
        const gap = added(table, 'proxy', key) - added(table, 'nginx', key);
        console.log(
          `| ${label} ${key} | ${ms(table.direct![key])} | ${cells.join(' | ')} | ${adds.join(' | ')} | ${ms(gap)} |`,
        );
      }
    }
    const latencyGap = added(latency, 'proxy', 'median') - added(latency, 'nginx', 'median');
    verdicts.push(
      [
        `TTFB added, median ≤ 0.3 ms`,
        ms(added(ttfb, 'proxy', 'median')),
        added(ttfb, 'proxy', 'median') <= 0.3,
      ],
      [
        `per-event added, median within 0.05 ms of nginx's`,
        `${ms(latencyGap)} more than nginx`,
        latencyGap <= 0.05,
      ],
      [
        `per-event added, p99 ≤ 1 ms`,
        ms(added(latency, 'proxy', 'p99')),
        added(latency, 'proxy', 'p99') <= 1,
      ],
    );
  }

  if (ONLY.has('throughput')) {
    console.log(
      `\n## Events/s (64-byte events, function writing as fast as it can; median of ${ROUNDS} runs, paths taking turns)\n`,
    );
    const cols = names.filter((n) => n !== 'nginx');
    console.log(
      `| streams | ${names.join(' | ')} | ${cols
        .filter((c) => c !== 'direct')
        .map((c) => `${c} / nginx`)
        .join(' | ')} | proxy / direct |`,
    );
    console.log(
      `|---|${names.map(() => '---|').join('')}${cols
        .filter((c) => c !== 'direct')
        .map(() => '---|')
        .join('')}---|`,
    );
    for (const [streams, perStream] of [
      [1, 100_000],
      [100, 1_000],
      [1000, 100],
    ] as const) {
      const runs: Record<string, number[]> = Object.fromEntries(names.map((name) => [name, []]));
      for (let round = 0; round < ROUNDS; round++) {
        for (const [name, base] of Object.entries(paths))
          runs[name]!.push(await eventsPerSecond(base, streams, perStream));
      }
      const row = Object.fromEntries(names.map((name) => [name, median(runs[name]!)]));
      const vsNginx = cols.filter((c) => c !== 'direct').map((c) => ratio(row[c]! / row.nginx!));
      console.log(
        `| ${streams} | ${names.map((n) => row[n]!.toFixed(0)).join(' | ')} | ${vsNginx.join(' | ')} | ${ratio(row.proxy! / row.direct!)} |`,
      );
      const goal = streams === 100 ? 0.9 : 1.0;
      verdicts.push([
        `events/s at ${streams} streams ≥ ${goal.toFixed(1)}× nginx`,
        ratio(row.proxy! / row.nginx!),
        row.proxy! / row.nginx! >= goal,
      ]);
    }
  }

  if (ONLY.has('idle')) {
    console.log(`\n## Idle streams (${IDLE_STREAMS}, RSS growth ÷ streams, each forwarder fresh)\n`);
    console.log('| forwarder | RSS | per idle stream |');
    console.log('|---|---|---|');
    // Each forwarder is measured from a fresh process, with nothing else open through it.
    proxy.child.kill('SIGKILL');
    before?.child.kill('SIGKILL');
    bare.child.kill('SIGKILL');
    const measure = async (label: string, url: string, pid: number) => {
      const idle = await idleStreamCost(url, pid, IDLE_STREAMS);
      console.log(`| ${label} | ${idle.rssMb.toFixed(0)} MB | ${idle.perStreamKb.toFixed(2)} KB |`);
      return idle;
    };
    const fresh = await startProxyAt(HERE);
    const ours = await measure('`sluice proxy`', fresh.url, fresh.child.pid!);
    fresh.child.kill('SIGKILL');
    if (BEFORE) {
      const old = await startProxyAt(BEFORE);
      await measure('`sluice proxy` before', old.url, old.child.pid!);
      old.child.kill('SIGKILL');
    }
    await measure('nginx worker', nginx.url, nginxWorkerPid(nginx)!);
    const freshBare = await startBare();
    await measure(
      'bare http-proxy-3 forwarder (bench/bare-forwarder.ts)',
      freshBare.url,
      freshBare.child.pid!,
    );
    freshBare.child.kill('SIGKILL');
    verdicts.push([`≤ 15 KB per idle stream`, `${ours.perStreamKb.toFixed(2)} KB`, ours.perStreamKb <= 15]);
  }

  console.log(
    `\nload average at end: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  console.log('\n## Goals (issue 17)\n');
  for (const [target, measured, met] of verdicts)
    console.log(`- ${met ? 'met' : 'MISSED'}: ${target} — ${measured}`);

  agent.destroy();
  await nginx.stop();
  for (const child of children) child.kill('SIGTERM');
}

await main();
process.exit(0);
