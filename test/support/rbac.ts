import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** What RBAC authorizes for one API request: the attributes kube-apiserver's RequestInfo derives. */
export interface RequestAttributes {
  verb: string;
  apiGroup: string;
  /** plural, with `/subresource` when there is one */
  resource: string;
  namespace: string;
}

/**
 * The RBAC attributes of a resource request, by the rules of k8s.io/apiserver's RequestInfoFactory:
 * GET of a collection is list (watch with ?watch=true), of one object get; POST create; PUT update;
 * PATCH patch; DELETE of one object delete, of a collection deletecollection. Non-resource
 * paths (/version, discovery) give undefined.
 */
export function requestAttributes(method: string, url: string): RequestAttributes | undefined {
  const { pathname, searchParams } = new URL(url, 'https://apiserver');
  const parts = pathname.split('/').filter(Boolean);
  let apiGroup: string;
  let rest: string[];
  if (parts[0] === 'api' && parts.length >= 3) {
    apiGroup = '';
    rest = parts.slice(2);
  } else if (parts[0] === 'apis' && parts.length >= 4) {
    apiGroup = parts[1]!;
    rest = parts.slice(3);
  } else {
    return undefined;
  }
  let namespace = '';
  if (rest[0] === 'namespaces' && rest.length >= 3) {
    namespace = rest[1]!;
    rest = rest.slice(2);
  }
  const [plural = '', name, subresource] = rest;
  const watch = searchParams.get('watch') === 'true' || searchParams.get('watch') === '1';
  const verbs: Record<string, string> = name
    ? { GET: 'get', POST: 'create', PUT: 'update', PATCH: 'patch', DELETE: 'delete' }
    : { GET: watch ? 'watch' : 'list', POST: 'create', DELETE: 'deletecollection' };
  const verb = verbs[method.toUpperCase()];
  if (!verb) return undefined;
  return { verb, apiGroup, resource: subresource ? `${plural}/${subresource}` : plural, namespace };
}

export interface PolicyRule {
  apiGroups?: string[];
  resources?: string[];
  verbs: string[];
}

/** `namespace|group|resource|verb` for every combination a Role (namespace) or ClusterRole ('*') grants. */
export function grants(namespace: string, rules: PolicyRule[]): Set<string> {
  const out = new Set<string>();
  for (const rule of rules) {
    for (const group of rule.apiGroups ?? []) {
      for (const resource of rule.resources ?? []) {
        for (const verb of rule.verbs) out.add(`${namespace}|${group}|${resource}|${verb}`);
      }
    }
  }
  return out;
}

export interface RecordedCall {
  method: string;
  url: string;
  status: number;
}

export interface RecordingProxy {
  url: string;
  /** Bytes a client sent that are no HTTP request (e.g. a body with no Content-Length). */
  clientErrors: string[];
  /** PEM of the proxy's own self-signed certificate, for the client's kubeconfig. */
  caPem: string;
  calls: RecordedCall[];
  close: () => Promise<void>;
}

/**
 * A TLS reverse proxy in front of the API server that records every request a client makes
 * (method, path and query, answer status) and forwards it untouched, watches included. Bearer
 * tokens pass through, so the API server still authenticates and authorizes the real client.
 */
export async function startRecordingProxy(
  upstream: URL,
  upstreamCa: string | Buffer,
  workdir: string,
): Promise<RecordingProxy> {
  const key = join(workdir, 'proxy.key');
  const cert = join(workdir, 'proxy.crt');
  await run('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-days',
    '1',
    '-subj',
    '/CN=127.0.0.1',
    '-addext',
    'subjectAltName=IP:127.0.0.1',
    '-keyout',
    key,
    '-out',
    cert,
  ]);
  const caPem = await readFile(cert, 'utf8');
  const calls: RecordedCall[] = [];
  const clientErrors: string[] = [];
  // Like kube-apiserver (Go's net/http), answer what a connection asked before closing it on
  // bytes that are no request; Node's default would drop the answer with the connection.
  const inFlight = new Map<Socket, number>();
  const broken = new Set<Socket>();
  const agent = new https.Agent({ ca: upstreamCa, keepAlive: true });
  const server = https.createServer({ key: await readFile(key), cert: caPem }, (req, res) => {
    const socket = req.socket;
    inFlight.set(socket, (inFlight.get(socket) ?? 0) + 1);
    res.on('close', () => {
      const left = (inFlight.get(socket) ?? 1) - 1;
      inFlight.set(socket, left);
      if (left === 0 && broken.has(socket)) socket.destroy();
    });
    const forward = https.request(
      {
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: upstream.host },
        agent,
      },
      (answer) => {
        calls.push({ method: req.method ?? '', url: req.url ?? '', status: answer.statusCode ?? 0 });
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    forward.on('error', () => res.destroy());
    res.on('close', () => forward.destroy()); // the client ended a watch: end it upstream too
    req.pipe(forward);
  });
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    clientErrors.push(err.code ?? err.message);
    if (inFlight.get(socket)) broken.add(socket);
    else socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `https://127.0.0.1:${port}`,
    caPem,
    calls,
    clientErrors,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      agent.destroy();
    },
  };
}

/** A kubeconfig that authenticates with a bearer token (a ServiceAccount's) at `server`. */
export function tokenKubeconfig(server: string, caPem: string, token: string): string {
  return JSON.stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [
      { name: 'c', cluster: { server, 'certificate-authority-data': Buffer.from(caPem).toString('base64') } },
    ],
    users: [{ name: 'u', user: { token } }],
    contexts: [{ name: 'c', context: { cluster: 'c', user: 'u' } }],
    'current-context': 'c',
  });
}
