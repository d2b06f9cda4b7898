// `node bench/profile-proxy.ts [streams] [eventsPerStream] [forwarder] [rounds]`: where the
// proxy's CPU time goes. Runs the function, `sluice proxy --cpu-prof` and a client (this
// process) as three processes, streams `streams` × `eventsPerStream` 64-byte events through the
// proxy `rounds` times (1; many rounds of one 1-event stream profile the per-request path),
// stops it and prints the functions with the most self time. `forwarder` = `bare` profiles
// bench/bare-forwarder.ts (http-proxy-3 with nothing of Sluice's) instead.
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readdir, readFile } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { PROXY_NODE_FLAGS } from '../api/v1alpha1/proxy-flags.ts';
import { freePort, waitForPort } from '../common/net.ts';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

const [streams = 100, perStream = 1000] = process.argv.slice(2, 4).map(Number);
const forwarder = process.argv[4] ?? 'sluice';
const rounds = Number(process.argv[5] ?? 1);

function stream(url: string, agent: Agent): Promise<number> {
  return new Promise((resolve, reject) => {
    let bytes = 0;
    request(url, { agent }, (res) => {
      res.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
      });
      res.on('end', () => resolve(bytes));
      res.on('error', reject);
    })
      .on('error', reject)
      .end();
  });
}

/** Self time per function (name and place), as a share of all samples. */
export function selfTimes(nodes: ProfileNode[]): { what: string; share: number }[] {
  const total = nodes.reduce((sum, n) => sum + (n.hitCount ?? 0), 0);
  const byFunction = new Map<string, number>();
  for (const node of nodes) {
    const { functionName, url, lineNumber } = node.callFrame;
    const where = url ? `${url.replace(/^.*\/(node_modules|dataplane)\//, '')}:${lineNumber + 1}` : '';
    const key = `${functionName || '(anonymous)'} ${where}`.trim();
    byFunction.set(key, (byFunction.get(key) ?? 0) + (node.hitCount ?? 0));
  }
  return [...byFunction]
    .map(([what, hits]) => ({ what, share: hits / total }))
    .sort((a, b) => b.share - a.share);
}

async function main(): Promise<void> {
  const children: ChildProcess[] = [];
  process.on('exit', () => {
    for (const child of children) child.kill('SIGKILL');
  });
  const fn = spawn(process.execPath, ['test/support/function-server.ts', '0'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(fn);
  const [line] = (await once(createInterface({ input: fn.stdout! }), 'line')) as [string];
  const upstream = `http://127.0.0.1:${(JSON.parse(line) as { port: number }).port}`;

  const dir = await mkdtemp(join(tmpdir(), 'sluice-prof-'));
  const port = await freePort();
  const args =
    forwarder === 'bare'
      ? ['bench/bare-forwarder.ts', String(port), upstream]
      : [
          'bin/sluice.js',
          'proxy',
          '--listen',
          `127.0.0.1:${port}`,
          '--admin',
          `127.0.0.1:${await freePort()}`,
          '--upstream',
          upstream,
          '--concurrency',
          String(streams + 10),
          '--drain',
          '0',
        ];
  const proxy = spawn(process.execPath, [...PROXY_NODE_FLAGS, '--cpu-prof', '--cpu-prof-dir', dir, ...args], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env: { ...process.env, SLUICE_LOG_LEVEL: 'warn' },
  });
  children.push(proxy);
  await waitForPort(port);

  const agent = new Agent({ keepAlive: true, maxSockets: Number.POSITIVE_INFINITY });
  const url = `http://127.0.0.1:${port}/events?count=${perStream}&size=64`;
  // Warm-up: JIT, and as many connections on both sides as the run will use.
  const warmUrl = `http://127.0.0.1:${port}/events?count=10&size=64`;
  await Promise.all(Array.from({ length: streams }, () => stream(warmUrl, agent)));
  const started = performance.now();
  for (let round = 0; round < rounds; round++)
    await Promise.all(Array.from({ length: streams }, () => stream(url, agent)));
  const seconds = (performance.now() - started) / 1000;
  agent.destroy();

  // Node writes the profile on a normal exit: both forwarders exit 0 on SIGINT.
  proxy.kill('SIGINT');
  await once(proxy, 'exit');
  const [file] = await readdir(dir);
  if (!file) throw new Error(`${forwarder} wrote no profile`);
  const profile = JSON.parse(await readFile(join(dir, file), 'utf8')) as { nodes: ProfileNode[] };
  console.log(
    `${forwarder}: ${rounds} × ${streams} streams × ${perStream} events in ${seconds.toFixed(2)} s ` +
      `(${((rounds * streams * perStream) / seconds).toFixed(0)} events/s, ` +
      `${((seconds * 1e6) / (rounds * streams)).toFixed(0)} µs per stream); profile ${join(dir, file)}\n`,
  );
  for (const { what, share } of selfTimes(profile.nodes).slice(0, 25))
    console.log(`${(share * 100).toFixed(1).padStart(5)}%  ${what}`);
}

if (import.meta.main) {
  await main();
  process.exit(0);
}
