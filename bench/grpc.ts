// `npm run bench:grpc` (also part of `npm run bench`): gRPC through `sluice proxy
// --upstream-protocol h2c`, side by side in one run with the same calls direct to the function
// and through nginx's grpc_pass. The function (grpc-js echo), the proxy, nginx and this client
// (grpc-js) are separate processes. Prints ratios measured in this run.
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type * as grpc from '@grpc/grpc-js';
import { freePort, waitForPort } from '../common/net.ts';
import { echoClient } from '../test/support/grpc-echo.ts';

const NGINX = process.env.SLUICE_NGINX ?? '/usr/sbin/nginx';
const ROUNDS = Number(process.env.SLUICE_BENCH_ROUNDS ?? 5);
const PING_PONGS = 1000; // per round and path
const STREAM_MESSAGES = 20_000; // per round and path
const CONCURRENT_CALLS = 16;

const children: ChildProcess[] = [];
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

function spawnChild(command: string, args: string[]): ChildProcess {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return child;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** nginx as ingress-nginx renders `backend-protocol: GRPC`: h2c in, grpc_pass out, kept-alive upstream. */
async function startGrpcNginx(upstreamPort: number): Promise<number> {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-nginx-grpc-'));
  const port = await freePort();
  const conf = `
worker_processes 1;
error_log ${dir}/error.log warn;
pid ${dir}/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream fn { server 127.0.0.1:${upstreamPort}; keepalive 64; }
  server {
    listen 127.0.0.1:${port} http2;
    location / {
      grpc_pass grpc://fn;
      grpc_read_timeout 3600s;
      grpc_send_timeout 3600s;
      grpc_buffer_size 4k;
    }
  }
}
`;
  const confPath = join(dir, 'nginx.conf');
  await writeFile(confPath, conf);
  spawnChild(NGINX, ['-p', dir, '-c', confPath, '-e', join(dir, 'error.log'), '-g', 'daemon off;']);
  await waitForPort(port);
  return port;
}

/** Bidi ping-pong: one message out, wait for its echo, next; the round trip of each. */
async function pingPong(client: ReturnType<typeof echoClient>, count: number): Promise<number[]> {
  const call = client.Bidi();
  const rtts: number[] = [];
  const payload = Buffer.alloc(64, 'x');
  let sent = 0;
  await new Promise<void>((resolve, reject) => {
    call.on('data', () => {
      rtts.push(performance.now() - sent);
      if (rtts.length === count) {
        call.end();
        return;
      }
      sent = performance.now();
      call.write(payload);
    });
    call.on('status', (s: grpc.StatusObject) => (s.code === 0 ? resolve() : reject(new Error(s.details))));
    call.on('error', reject);
    sent = performance.now();
    call.write(payload);
  });
  return rtts;
}

/** Server streaming as fast as the function writes: messages/s over `calls` concurrent calls. */
async function messagesPerSecond(
  client: ReturnType<typeof echoClient>,
  calls: number,
  perCall: number,
): Promise<number> {
  const started = performance.now();
  let received = 0;
  await Promise.all(
    Array.from(
      { length: calls },
      () =>
        new Promise<void>((resolve, reject) => {
          const call = client.ServerStream(Buffer.from(`${perCall},0,64`));
          call.on('data', () => {
            received++;
          });
          call.on('status', (s: grpc.StatusObject) =>
            s.code === 0 ? resolve() : reject(new Error(s.details)),
          );
          call.on('error', reject);
        }),
    ),
  );
  if (received !== calls * perCall) throw new Error(`${received} of ${calls * perCall} messages`);
  return received / ((performance.now() - started) / 1000);
}

async function main(): Promise<void> {
  const fn = spawnChild(process.execPath, ['test/support/grpc-echo.ts']);
  const [line] = (await once(createInterface({ input: fn.stdout! }), 'line')) as [string];
  const fnPort = (JSON.parse(line) as { port: number }).port;
  const [proxyPort, adminPort] = [await freePort(), await freePort()];
  const proxy = spawnChild(process.execPath, [
    'bin/sluice.js',
    'proxy',
    `--listen=127.0.0.1:${proxyPort}`,
    `--admin=127.0.0.1:${adminPort}`,
    `--upstream=http://127.0.0.1:${fnPort}`,
    '--upstream-protocol=h2c',
    '--concurrency=1000',
  ]);
  proxy.stdout!.resume(); // one JSON log line per call, read and dropped like a log shipper would
  await waitForPort(proxyPort);
  const nginxPort = await startGrpcNginx(fnPort);
  const targets = { direct: fnPort, proxy: proxyPort, nginx: nginxPort } as const;
  type Path = keyof typeof targets;
  const clients = Object.fromEntries(
    Object.entries(targets).map(([name, port]) => [name, echoClient(`127.0.0.1:${port}`)]),
  ) as Record<Path, ReturnType<typeof echoClient>>;

  const cpu = spawnSync('nproc').stdout.toString().trim();
  console.log(`# gRPC benchmark — ${new Date().toISOString()}, ${cpu} CPUs, Node ${process.version}`);
  console.log(
    `load average at start: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  console.log(
    `${ROUNDS} rounds; each round runs every path in turn (direct, proxy, nginx), so drift in the machine's load hits all three alike.\n`,
  );

  // Warm-up: connections, JIT, nginx's upstream keep-alive.
  for (const client of Object.values(clients)) {
    await pingPong(client, 200);
    await messagesPerSecond(client, 2, 2000);
  }
  const rtts: Record<Path, number[]> = { direct: [], proxy: [], nginx: [] };
  const rates: Record<Path, number[]> = { direct: [], proxy: [], nginx: [] };
  const concurrentRates: Record<Path, number[]> = { direct: [], proxy: [], nginx: [] };
  for (let round = 0; round < ROUNDS; round++) {
    for (const path of Object.keys(targets) as Path[]) {
      rtts[path].push(...(await pingPong(clients[path], PING_PONGS)));
      rates[path].push(await messagesPerSecond(clients[path], 1, STREAM_MESSAGES));
      concurrentRates[path].push(
        await messagesPerSecond(clients[path], CONCURRENT_CALLS, STREAM_MESSAGES / CONCURRENT_CALLS),
      );
    }
  }

  const stats = (values: number[]) => {
    const sorted = [...values].sort((a, b) => a - b);
    return { median: percentile(sorted, 50), p99: percentile(sorted, 99) };
  };
  const median = (values: number[]) => stats(values).median;
  const rtt = Object.fromEntries(Object.entries(rtts).map(([k, v]) => [k, stats(v)])) as Record<
    Path,
    { median: number; p99: number }
  >;
  const ms = (v: number) => `${v.toFixed(3)} ms`;
  console.log('## Per-message round trip (bidi ping-pong, 64-byte messages)\n');
  console.log(
    '| measure | direct | sluice proxy | nginx grpc_pass | proxy added | nginx added | proxy / nginx |',
  );
  console.log('|---|---|---|---|---|---|---|');
  for (const key of ['median', 'p99'] as const) {
    const p = rtt.proxy[key] - rtt.direct[key];
    const n = rtt.nginx[key] - rtt.direct[key];
    console.log(
      `| ${key} | ${ms(rtt.direct[key])} | ${ms(rtt.proxy[key])} | ${ms(rtt.nginx[key])} | ${ms(p)} | ${ms(n)} | ${(rtt.proxy[key] / rtt.nginx[key]).toFixed(2)}× |`,
    );
  }
  console.log(
    '\n## Messages/s (server streaming, 64-byte messages, the function writing as fast as it can)\n',
  );
  console.log('| calls | direct | sluice proxy | nginx grpc_pass | proxy / nginx | proxy / direct |');
  console.log('|---|---|---|---|---|---|');
  const row = (calls: number, table: Record<Path, number[]>) => {
    const [d, p, n] = [median(table.direct), median(table.proxy), median(table.nginx)];
    console.log(
      `| ${calls} | ${d.toFixed(0)} | ${p.toFixed(0)} | ${n.toFixed(0)} | ${(p / n).toFixed(2)}× | ${(p / d).toFixed(2)}× |`,
    );
    return p / n;
  };
  const single = row(1, rates);
  const concurrent = row(CONCURRENT_CALLS, concurrentRates);
  console.log(
    `\nload average at end: ${loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );

  console.log('\n## Targets\n');
  const latencyRatio = rtt.proxy.median / rtt.nginx.median;
  const verdicts = [
    ['per-message round trip ≤ 1.1× nginx (median)', `${latencyRatio.toFixed(2)}×`, latencyRatio <= 1.1],
    ['messages/s ≥ nginx / 1.1 (1 call)', `${single.toFixed(2)}× nginx`, single >= 1 / 1.1],
    [
      `messages/s ≥ nginx / 1.1 (${CONCURRENT_CALLS} calls)`,
      `${concurrent.toFixed(2)}× nginx`,
      concurrent >= 1 / 1.1,
    ],
  ] as const;
  for (const [target, measured, met] of verdicts)
    console.log(`- ${met ? 'met' : 'MISSED'}: ${target} — ${measured}`);
  for (const client of Object.values(clients)) client.close();
}

await main();
process.exit(0);
