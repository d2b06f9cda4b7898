// `npm run bench`: the streaming data plane, side by side in one run on this machine —
// direct to the function, through `sluice proxy`, and through nginx (proxy_buffering off).
// The function, the proxy, nginx and this client are separate processes: an idle stream holds
// two descriptors in the proxy and one each in the function and the client, so no process
// could hold two roles at ~10,000 streams. Prints ratios measured in this run.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { Agent, type IncomingMessage, request } from 'node:http';
import { loadavg } from 'node:os';
import { createInterface } from 'node:readline';
import { createParser } from 'eventsource-parser';
import { freePort, waitFor, waitForPort } from '../common/net.ts';
import { startNginx } from '../test/support/nginx.ts';

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
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

async function perEventLatency(base: string): Promise<number[]> {
  const latencies: number[] = [];
  await stream(`${base}/stamp?count=3000&interval=1`, (data) => latencies.push(monotonicMs() - Number(data)));
  return latencies.slice(100); // the first events warm up JIT and connections
}

async function timeToFirstByte(base: string): Promise<number[]> {
  const times: number[] = [];
  for (let i = 0; i < 600; i++) times.push(await stream(`${base}/events?count=1`, () => {}));
  return times.slice(100);
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

/** Opens `count` streams to /idle through the proxy and returns the proxy's RSS growth per stream. */
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

async function main(): Promise<void> {
  const fn = spawnRaised([process.execPath, 'test/support/function-server.ts', '0']);
  const [line] = (await once(createInterface({ input: fn.stdout! }), 'line')) as [string];
  const fnPort = (JSON.parse(line) as { port: number }).port;
  const direct = `http://127.0.0.1:${fnPort}`;

  const startSluiceProxy = async (nodeFlags: string[] = []) => {
    const [proxyPort, adminPort] = [await freePort(), await freePort()];
    const child = spawnRaised(
      [
        process.execPath,
        ...nodeFlags,
        'bin/sluice.js',
        'proxy',
        '--listen',
        `127.0.0.1:${proxyPort}`,
        '--admin',
        `127.0.0.1:${adminPort}`,
        '--upstream',
        direct,
        '--concurrency',
        String(IDLE_STREAMS + 1000),
      ],
      { SLUICE_LOG_LEVEL: process.env.SLUICE_LOG_LEVEL ?? 'info' },
    );
    child.stdout!.resume(); // one JSON log line per request, read and dropped like a log shipper would
    await waitForPort(proxyPort);
    return { child, url: `http://127.0.0.1:${proxyPort}` };
  };
  const { child: proxy, url: proxied } = await startSluiceProxy();

  const nginx = await startNginx(fnPort, { workerConnections: 8192 });
  const viaNginx = nginx.url;
  const paths = { direct, proxy: proxied, nginx: viaNginx } as const;

  const cpu = spawnSync('nproc').stdout.toString().trim();
  console.log(`# sluice proxy benchmark — ${new Date().toISOString()}, ${cpu} CPUs, Node ${process.version}`);
  // Everything shares these CPUs: a busy machine moves the tails (p99) most of all.
  console.log(
    `load average at start: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}\n`,
  );

  // Per-event latency: the function stamps each event with CLOCK_MONOTONIC; the client subtracts.
  const latency: Record<string, { median: number; p99: number }> = {};
  for (const [name, base] of Object.entries(paths)) latency[name] = summary(await perEventLatency(base));
  const ttfb: Record<string, { median: number; p99: number }> = {};
  for (const [name, base] of Object.entries(paths)) ttfb[name] = summary(await timeToFirstByte(base));

  const added = (table: typeof latency, name: 'proxy' | 'nginx', key: 'median' | 'p99') =>
    table[name]![key] - table.direct![key];
  const ms = (v: number) => `${v.toFixed(3)} ms`;
  console.log('## Added latency (path minus direct, same run)\n');
  console.log('| measure | direct | sluice proxy | nginx | proxy added | nginx added | proxy − nginx |');
  console.log('|---|---|---|---|---|---|---|');
  for (const [label, table] of [
    ['per-event', latency],
    ['TTFB', ttfb],
  ] as const) {
    for (const key of ['median', 'p99'] as const) {
      const p = added(table, 'proxy', key);
      const n = added(table, 'nginx', key);
      console.log(
        `| ${label} ${key} | ${ms(table.direct![key])} | ${ms(table.proxy![key])} | ${ms(table.nginx![key])} | ${ms(p)} | ${ms(n)} | ${ms(p - n)} |`,
      );
    }
  }

  console.log('\n## Events/s (64-byte events, function writing as fast as it can)\n');
  console.log('| streams | direct | sluice proxy | nginx | proxy / nginx | proxy / direct |');
  console.log('|---|---|---|---|---|---|');
  const throughput: Record<number, Record<string, number>> = {};
  for (const [streams, perStream] of [
    [1, 100_000],
    [100, 1_000],
    [1000, 100],
  ] as const) {
    const row: Record<string, number> = {};
    for (const [name, base] of Object.entries(paths))
      row[name] = await eventsPerSecond(base, streams, perStream);
    throughput[streams] = row;
    console.log(
      `| ${streams} | ${row.direct!.toFixed(0)} | ${row.proxy!.toFixed(0)} | ${row.nginx!.toFixed(0)} | ${(row.proxy! / row.nginx!).toFixed(2)}× | ${(row.proxy! / row.direct!).toFixed(2)}× |`,
    );
  }

  console.log(`\n## Idle streams through the proxy\n`);
  // Each idle measurement gets a fresh process, so all three start from the same state.
  proxy.kill('SIGKILL');
  const fresh = await startSluiceProxy();
  const idle = await idleStreamCost(fresh.url, fresh.child.pid!, IDLE_STREAMS);
  console.log(
    `- ${IDLE_STREAMS} idle streams, default Node flags: proxy RSS ${idle.rssMb.toFixed(0)} MB, ${idle.perStreamKb.toFixed(2)} KB per idle stream`,
  );
  fresh.child.kill('SIGKILL');
  // The same with V8 told to favour memory over speed (the knob a memory-tight pod would use).
  const small = await startSluiceProxy(['--optimize-for-size']);
  const smallIdle = await idleStreamCost(small.url, small.child.pid!, IDLE_STREAMS);
  console.log(
    `- ${IDLE_STREAMS} idle streams, node --optimize-for-size: proxy RSS ${smallIdle.rssMb.toFixed(0)} MB, ${smallIdle.perStreamKb.toFixed(2)} KB per idle stream`,
  );
  small.child.kill('SIGKILL');
  // The floor: a bare http-proxy-3 forwarder, measured the same way.
  const barePort = await freePort();
  const bare = spawnRaised([process.execPath, 'bench/bare-forwarder.ts', String(barePort), direct]);
  await waitForPort(barePort);
  const bareIdle = await idleStreamCost(`http://127.0.0.1:${barePort}`, bare.pid!, IDLE_STREAMS);
  console.log(
    `- ${IDLE_STREAMS} idle streams, bare http-proxy-3 forwarder (bench/bare-forwarder.ts): RSS ${bareIdle.rssMb.toFixed(0)} MB, ${bareIdle.perStreamKb.toFixed(2)} KB per idle stream`,
  );
  console.log(
    `- Sluice's own share per idle stream (sluice − bare): ${(idle.perStreamKb - bareIdle.perStreamKb).toFixed(2)} KB`,
  );
  bare.kill('SIGKILL');

  console.log(
    `\nload average at end: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  console.log('\n## Targets\n');
  const latencyGap = added(latency, 'proxy', 'median') - added(latency, 'nginx', 'median');
  const verdicts = [
    [
      `added per-event median within 0.1 ms of nginx's`,
      `${ms(latencyGap)} more than nginx`,
      latencyGap <= 0.1,
    ],
    [`added per-event p99 ≤ 1 ms`, ms(added(latency, 'proxy', 'p99')), added(latency, 'proxy', 'p99') <= 1],
    [
      `events/s at 100 streams ≥ 0.8× nginx`,
      `${(throughput[100]!.proxy! / throughput[100]!.nginx!).toFixed(2)}×`,
      throughput[100]!.proxy! / throughput[100]!.nginx! >= 0.8,
    ],
    [`≤ 20 KB per idle stream`, `${idle.perStreamKb.toFixed(2)} KB`, idle.perStreamKb <= 20],
  ] as const;
  for (const [target, measured, met] of verdicts)
    console.log(`- ${met ? 'met' : 'MISSED'}: ${target} — ${measured}`);

  agent.destroy();
  await nginx.stop();
  for (const child of children) child.kill('SIGTERM');
}

await main();
process.exit(0);
