import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A real function for map tests and the map benchmark, run as its own process (so a test can
 * SIGKILL a whole replica). `POST /` takes one map input:
 *   a number n                 → JSON {"square": n*n}
 *   a string s                 → text/plain s upper-cased
 *   {"sleep": ms, ...}         → waits ms first (then as below; {"echo": input} if nothing else)
 *   {"status": code}           → answers that status with text "failing on purpose"
 *   {"bytes": n}               → JSON string of n "x" characters
 *   {"stamp": n}               → JSON {"n": n, "t": CLOCK_MONOTONIC ms when answered} (benchmark)
 *   {"holdOn": replica, ...}   → never answers in that replica (MAP_REPLICA names this process's),
 *                                so a test knows its tasks are still running when it kills it
 *   anything else              → JSON {"echo": input}
 * `GET /attempts` → JSON {"<input as JSON>": attempts seen by this process}.
 */
const attempts = new Map<string, number>();

async function answer(input: unknown): Promise<{ status: number; type: string; body: string }> {
  if (typeof input === 'number')
    return { status: 200, type: 'application/json', body: JSON.stringify({ square: input * input }) };
  if (typeof input === 'string') return { status: 200, type: 'text/plain', body: input.toUpperCase() };
  if (input && typeof input === 'object' && !Array.isArray(input)) {
    const { sleep, status, bytes, stamp, holdOn } = input as {
      sleep?: number;
      status?: number;
      bytes?: number;
      stamp?: number;
      holdOn?: string;
    };
    if (holdOn !== undefined && holdOn === process.env.MAP_REPLICA) await new Promise(() => {});
    if (stamp !== undefined) {
      return {
        status: 200,
        type: 'application/json',
        body: JSON.stringify({ n: stamp, t: Number(process.hrtime.bigint()) / 1e6 }),
      };
    }
    if (sleep) await new Promise((r) => setTimeout(r, sleep));
    if (status) return { status, type: 'text/plain', body: 'failing on purpose' };
    if (bytes) return { status: 200, type: 'application/json', body: JSON.stringify('x'.repeat(bytes)) };
  }
  return { status: 200, type: 'application/json', body: JSON.stringify({ echo: input }) };
}

const server = createServer({ noDelay: true, keepAliveTimeout: 60_000 }, (req, res) => {
  if (req.method === 'GET' && req.url === '/attempts') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(Object.fromEntries(attempts)));
    return;
  }
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', async () => {
    const text = Buffer.concat(chunks).toString();
    attempts.set(text, (attempts.get(text) ?? 0) + 1);
    let input: unknown;
    try {
      input = JSON.parse(text);
    } catch {
      res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(`not JSON: ${JSON.stringify(text)}`);
      return;
    }
    const { status, type, body } = await answer(input);
    res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
});
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: (server.address() as AddressInfo).port })}\n`);
});
