// The part of the kubelet's HTTPS API that `kubectl logs` needs: the API server proxies
// /containerLogs/<ns>/<pod>/<container> to the node's InternalIP and kubelet port, with its
// kubelet client certificate (the plane's CA signs it; nothing else is accepted).
import { watch } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import https from 'node:https';
import { connect, createServer, type Server } from 'node:net';
import type { TLSSocket } from 'node:tls';

export interface LogSource {
  /** undefined: no such pod on this node. */
  logFile(
    namespace: string,
    pod: string,
    container: string,
    previous: boolean,
  ): { file?: string; error?: string } | undefined;
  running(namespace: string, pod: string, container: string): boolean;
}

/** The last `lines` lines of `text` (a trailing newline does not count as a line). */
export function tail(text: string, lines: number): string {
  if (lines < 0) return text;
  if (lines === 0) return '';
  const parts = text.split('\n');
  const trailing = text.endsWith('\n');
  if (trailing) parts.pop();
  const kept = parts.slice(-lines).join('\n');
  return trailing && kept ? `${kept}\n` : kept;
}

async function serveLogs(
  res: import('node:http').ServerResponse,
  url: URL,
  source: LogSource,
): Promise<void> {
  const [, , namespace = '', pod = '', container = ''] = url.pathname.split('/').map(decodeURIComponent);
  const follow = url.searchParams.get('follow') === 'true';
  const previous = url.searchParams.get('previous') === 'true';
  const tailLines = url.searchParams.has('tailLines') ? Number(url.searchParams.get('tailLines')) : -1;
  const limitBytes = url.searchParams.has('limitBytes')
    ? Number(url.searchParams.get('limitBytes'))
    : Infinity;
  const found = source.logFile(namespace, pod, container, previous);
  if (!found) {
    res.writeHead(404, { 'content-type': 'text/plain' }).end(`pod ${namespace}/${pod} is not on this node\n`);
    return;
  }
  if (!found.file) {
    res.writeHead(400, { 'content-type': 'text/plain' }).end(`${found.error}\n`);
    return;
  }
  const file = found.file;
  const handle = await open(file, 'r').catch(() => undefined);
  if (!handle) {
    res.writeHead(400, { 'content-type': 'text/plain' }).end(`no log for container "${container}" yet\n`);
    return;
  }
  let sent = 0;
  const send = (chunk: Buffer | string) => {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    const room = limitBytes - sent;
    if (room <= 0) return false;
    const part = buf.length > room ? buf.subarray(0, room) : buf;
    sent += part.length;
    res.write(part);
    return sent < limitBytes;
  };
  res.writeHead(200, { 'content-type': 'text/plain' });
  try {
    const initial = await handle.readFile();
    let offset = initial.length;
    const more = send(tailLines >= 0 ? tail(initial.toString('utf8'), tailLines) : initial);
    if (!follow || previous || !more) return;
    // Follow: send what the container appends until it stops running or the client leaves.
    await new Promise<void>((resolve) => {
      let reading = false;
      const pump = async () => {
        if (reading) return;
        reading = true;
        try {
          const size = (await stat(file)).size;
          if (size > offset) {
            const buf = Buffer.alloc(size - offset);
            await handle.read(buf, 0, buf.length, offset);
            offset = size;
            if (!send(buf)) finish();
          } else if (!source.running(namespace, pod, container)) {
            finish();
          }
        } finally {
          reading = false;
        }
      };
      const watcher = watch(file, () => void pump());
      // A change notification can be missed when the container exits right after writing.
      const timer = setInterval(() => void pump(), 500);
      function finish() {
        watcher.close();
        clearInterval(timer);
        resolve();
      }
      res.on('close', finish);
    });
  } finally {
    await handle.close();
    res.end();
  }
}

export interface KubeletApiOptions {
  address: string;
  port: number;
  cert: Buffer;
  key: Buffer;
  ca: Buffer;
  source: LogSource;
}

export function startKubeletApi(options: KubeletApiOptions): Promise<https.Server> {
  const server = https.createServer(
    { cert: options.cert, key: options.key, ca: options.ca, requestCert: true, rejectUnauthorized: true },
    (req, res) => {
      const authorized = (req.socket as TLSSocket).authorized;
      const url = new URL(req.url ?? '/', 'https://kubelet');
      if (!authorized) {
        res.writeHead(401).end('client certificate required\n');
      } else if (url.pathname === '/healthz') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
      } else if (req.method === 'GET' && url.pathname.startsWith('/containerLogs/')) {
        serveLogs(res, url, options.source).catch((err) => {
          if (!res.headersSent) res.writeHead(500);
          res.end(String(err));
        });
      } else {
        res
          .writeHead(404, { 'content-type': 'text/plain' })
          .end(`the local plane's kubelet does not serve ${url.pathname}\n`);
      }
    },
  );
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.address, () => resolve(server));
  });
}

/**
 * The API server listens on loopback only; pods reach it through the `kubernetes` Service,
 * whose endpoint is this forwarder on the node address.
 */
export function startForwarder(
  address: string,
  port: number,
  target: { host: string; port: number },
): Promise<Server> {
  const server = createServer((client) => {
    const upstream = connect(target.port, target.host);
    client.pipe(upstream).pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close);
    upstream.on('error', close);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, address, () => resolve(server));
  });
}
