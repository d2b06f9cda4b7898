import { once } from 'node:events';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A real HTTP "function" for the proxy's tests and benchmark. Routes:
 *   /events?count=N&interval=MS[&size=B]  N SSE events, `data: <n>` (padded to B bytes), MS apart
 *   /stamp?count=N&interval=MS            N events whose data is process.hrtime (CLOCK_MONOTONIC,
 *                                         comparable across processes) at the moment of writing
 *   /idle                                 SSE headers, then silence until the client leaves
 *   /echo                                 JSON: method, url, headers and body length received
 *   anything else                         a held stream the test drives (see HeldStream); query
 *                                         `type=text` for text/plain, `headers=0` to send nothing yet
 */
export interface HeldStream {
  req: IncomingMessage;
  res: ServerResponse;
  /** Resolves when the function sees its connection close (client or proxy aborted it). */
  closed: Promise<void>;
  isClosed: () => boolean;
  write: (data: string | Buffer) => Promise<void>;
}

export interface FunctionServer {
  port: number;
  url: string;
  /** Every request seen, in arrival order. */
  requests: IncomingMessage[];
  /** The next held stream (already arrived or yet to arrive). */
  nextStream: () => Promise<HeldStream>;
  close: () => Promise<void>;
}

export function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

function sseHead(res: ServerResponse): void {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-transform' });
  res.flushHeaders();
}

async function generate(req: IncomingMessage, res: ServerResponse, params: URLSearchParams, stamp: boolean) {
  const count = Number(params.get('count') ?? 10);
  const interval = Number(params.get('interval') ?? 0);
  const size = Number(params.get('size') ?? 0);
  sseHead(res);
  for (let n = 0; n < count && !res.destroyed; n++) {
    if (interval > 0) await new Promise((r) => setTimeout(r, interval));
    else if (n % 64 === 63) await new Promise((r) => setImmediate(r)); // let other streams run
    const data = stamp ? monotonicMs().toFixed(4) : String(n).padEnd(size, '.');
    if (!res.write(`id: ${n}\ndata: ${data}\n\n`)) await once(res, 'drain');
  }
  res.end();
  void req;
}

export async function startFunctionServer(port = 0, host = '127.0.0.1'): Promise<FunctionServer> {
  const requests: IncomingMessage[] = [];
  const held: HeldStream[] = [];
  const waiting: ((s: HeldStream) => void)[] = [];

  const server = createServer({ noDelay: true, keepAliveTimeout: 30_000 }, (req, res) => {
    requests.push(req);
    const url = new URL(req.url ?? '/', 'http://function');
    if (url.pathname === '/events' || url.pathname === '/stamp') {
      void generate(req, res, url.searchParams, url.pathname === '/stamp');
      return;
    }
    if (url.pathname === '/idle') {
      sseHead(res);
      return;
    }
    if (url.pathname === '/echo') {
      let length = 0;
      req.on('data', (chunk: Buffer) => {
        length += chunk.length;
      });
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(
          JSON.stringify({ method: req.method, url: req.url, headers: req.headers, bodyLength: length }),
        );
      });
      return;
    }
    let closed = false;
    const stream: HeldStream = {
      req,
      res,
      closed: new Promise((resolve) =>
        res.once('close', () => {
          closed = true;
          resolve();
        }),
      ),
      isClosed: () => closed,
      write: async (data) => {
        if (!res.write(data)) await once(res, 'drain');
      },
    };
    if (url.searchParams.get('headers') !== '0') {
      res.writeHead(200, {
        'content-type': url.searchParams.get('type') === 'text' ? 'text/plain' : 'text/event-stream',
      });
      res.flushHeaders();
    }
    const taker = waiting.shift();
    if (taker) taker(stream);
    else held.push(stream);
  });
  await new Promise<void>((resolve) => server.listen(port, host, resolve));
  const bound = (server.address() as AddressInfo).port;
  return {
    port: bound,
    url: `http://${host}:${bound}`,
    requests,
    nextStream: () => {
      const ready = held.shift();
      return ready ? Promise.resolve(ready) : new Promise((resolve) => waiting.push(resolve));
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// As a process (the benchmark runs the function apart from the proxy and the clients).
if (import.meta.main) {
  const fn = await startFunctionServer(Number(process.argv[2] ?? 0));
  process.stdout.write(`${JSON.stringify({ port: fn.port })}\n`);
}
