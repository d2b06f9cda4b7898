import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect } from 'node:net';
import { Gauge, type Registry } from 'prom-client';
import { sendJsonError } from '../common/wire-errors.ts';

export interface AdminOptions {
  registry: Registry;
  upstream: URL;
  /** Extra readiness conditions (not draining, map connected), each with a reason when false. */
  notReadyReason: () => string | undefined;
}

/** Resolves true when something accepts a TCP connection at the function's address. */
export function functionAccepts(upstream: URL, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const port = Number(upstream.port || (upstream.protocol === 'https:' ? 443 : 80));
    const socket = connect({ host: upstream.hostname.replace(/^\[|\]$/g, ''), port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/** The admin port: probes and metrics, never behind auth (SPEC §2). */
export function createAdminServer(options: AdminOptions): Server {
  // Readiness as a metric too, so a dashboard can count a function's ready replicas.
  new Gauge({
    name: 'sluice_proxy_ready',
    help: '1 when /readyz answers 200 (the function takes connections, not draining, map connected)',
    registers: [options.registry],
    async collect() {
      this.set((await ready(options)) === undefined ? 1 : 0);
    },
  });
  return createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      sendJsonError(res, 'method_not_allowed', 'the admin port only answers GET', {
        allow: 'GET, HEAD',
      });
      return;
    }
    if (path === '/healthz') {
      sendJson(res, 200, { status: 'ok' });
    } else if (path === '/readyz') {
      void ready(options).then((reason) =>
        reason
          ? sendJson(res, 503, { status: 'not ready', reason })
          : sendJson(res, 200, { status: 'ready' }),
      );
    } else if (path === '/metrics') {
      void options.registry.metrics().then((text) => {
        res.writeHead(200, { 'content-type': options.registry.contentType });
        res.end(text);
      });
    } else {
      sendJsonError(res, 'not_found', `no such path ${path}; try /healthz, /readyz or /metrics`);
    }
  });
}

async function ready(options: AdminOptions): Promise<string | undefined> {
  const reason = options.notReadyReason();
  if (reason) return reason;
  if (!(await functionAccepts(options.upstream)))
    return `the function at ${options.upstream.host} refuses connections`;
  return undefined;
}
