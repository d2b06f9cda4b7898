import https from 'node:https';
import { createInterface } from 'node:readline';
import { SluiceError } from '../common/errors.ts';
import { type Connection, loadConnection, loadConnectionWithClientLibrary } from './kubeconfig.ts';

/** The fields every Kubernetes object has that the operator reads. */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    generation?: number;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    ownerReferences?: OwnerReference[];
    finalizers?: string[];
    deletionTimestamp?: string;
    creationTimestamp?: string;
    managedFields?: { manager: string; operation: string }[];
  };
  // biome-ignore lint/suspicious/noExplicitAny: API objects are open-ended JSON
  [field: string]: any;
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

export interface KubeList<T> {
  metadata: { resourceVersion?: string; continue?: string };
  items: T[];
}

export interface WatchEvent<T> {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: T;
}

/** An answer from the API server other than 2xx, or no answer at all (status 0). */
export class KubeApiError extends SluiceError {
  readonly status: number;
  readonly reason: string;

  constructor(
    method: string,
    path: string,
    status: number,
    reason: string,
    message: string,
    cause?: unknown,
  ) {
    super('ERR_KUBE_API', `${method} ${path}: ${status || 'no answer'} ${reason}: ${message}`, { cause });
    this.status = status;
    this.reason = reason;
  }

  /** Worth retrying with backoff: the server is busy, unreachable, or the object moved under us. */
  get retryable(): boolean {
    return this.status === 0 || this.status === 409 || this.status === 429 || this.status >= 500;
  }
}

export const isNotFound = (err: unknown): boolean => err instanceof KubeApiError && err.status === 404;
export const isConflict = (err: unknown): boolean => err instanceof KubeApiError && err.status === 409;

export interface RequestOptions {
  query?: Record<string, string | number | boolean | undefined>;
  body?: unknown;
  contentType?: string;
  signal?: AbortSignal;
}

const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

/**
 * A small REST client over one keep-alive HTTPS agent. client-node 2.0's generated clients
 * build a new TLS agent per request (a handshake per call and sockets left behind), which does
 * not fit a controller issuing thousands of requests. Every request is counted by method, so
 * tests and the benchmark can see what a reconcile cost.
 */
export class KubeClient {
  readonly server: string;
  readonly requests = new Map<string, number>();
  private readonly connection: Connection;
  private readonly agent: https.Agent;
  private headers: Record<string, string> = {};
  private headersAt = 0;

  private constructor(connection: Connection) {
    this.connection = connection;
    this.server = connection.server;
    this.agent = new https.Agent({
      ca: connection.ca,
      cert: connection.cert,
      key: connection.key,
      rejectUnauthorized: connection.rejectUnauthorized,
      servername: connection.servername,
      keepAlive: true,
      maxSockets: 64,
    });
  }

  /** `kubeconfig` empty: $KUBECONFIG, then ~/.kube/config, then the in-cluster service account. */
  static async load(kubeconfig = ''): Promise<KubeClient> {
    const connection = loadConnection(kubeconfig) ?? (await loadConnectionWithClientLibrary(kubeconfig));
    return new KubeClient(connection);
  }

  /** Tokens (the in-cluster one is rotated on disk) are re-read once a minute. */
  private authHeaders(): Record<string, string> {
    if (Date.now() - this.headersAt > 60_000) {
      this.headers = this.connection.headers();
      this.headersAt = Date.now();
    }
    return this.headers;
  }

  /** Write requests (POST/PUT/PATCH/DELETE) sent so far. */
  get writes(): number {
    let total = 0;
    for (const [method, n] of this.requests) if (WRITE_METHODS.has(method)) total += n;
    return total;
  }

  get total(): number {
    let total = 0;
    for (const n of this.requests.values()) total += n;
    return total;
  }

  private url(path: string, query: RequestOptions['query']): URL {
    const url = new URL(this.server + path);
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) url.searchParams.set(k, String(v));
    return url;
  }

  private async open(method: string, path: string, options: RequestOptions) {
    this.requests.set(method, (this.requests.get(method) ?? 0) + 1);
    const url = this.url(path, options.query);
    const body = options.body === undefined ? undefined : JSON.stringify(options.body);
    const headers: Record<string, string> = { ...this.authHeaders(), accept: 'application/json' };
    if (body !== undefined) {
      headers['content-type'] = options.contentType ?? 'application/json';
      // Node frames DELETE bodies neither chunked nor by length unless told: without this the
      // API server ignores DELETE preconditions and reads the body as the next request.
      headers['content-length'] = String(Buffer.byteLength(body));
    }
    return new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
      const req = https.request(url, { method, headers, agent: this.agent, signal: options.signal }, resolve);
      req.on('error', (err) => reject(new KubeApiError(method, path, 0, 'Unreachable', err.message, err)));
      req.end(body);
    });
  }

  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const res = await this.open(method, path, options);
    const chunks: Buffer[] = [];
    try {
      for await (const chunk of res) chunks.push(chunk as Buffer);
    } catch (err) {
      throw new KubeApiError(method, path, 0, 'Unreachable', (err as Error).message, err);
    }
    const text = Buffer.concat(chunks).toString('utf8');
    const status = res.statusCode ?? 0;
    if (status >= 200 && status < 300) return (text ? JSON.parse(text) : undefined) as T;
    let reason = res.statusMessage ?? '';
    let message = text;
    try {
      const parsed = JSON.parse(text) as { reason?: string; message?: string };
      reason = parsed.reason ?? reason;
      message = parsed.message ?? message;
    } catch {
      // not a Status object: keep the raw text
    }
    throw new KubeApiError(method, path, status, reason, message);
  }

  get<T>(path: string, query?: RequestOptions['query']): Promise<T> {
    return this.request<T>('GET', path, { query });
  }

  /** Server-side apply: the object is the whole intent of `fieldManager` for the fields it names. */
  apply<T>(path: string, object: KubeObject, fieldManager: string, force = true): Promise<T> {
    return this.request<T>('PATCH', path, {
      body: object,
      contentType: 'application/apply-patch+yaml', // JSON is YAML
      query: { fieldManager, force },
    });
  }

  mergePatch<T>(path: string, patch: unknown, query?: RequestOptions['query']): Promise<T> {
    return this.request<T>('PATCH', path, {
      body: patch,
      contentType: 'application/merge-patch+json',
      query,
    });
  }

  /**
   * One watch call: streams events to `onEvent` until the server ends the watch (its
   * timeoutSeconds), the connection drops, or `signal` aborts. Non-2xx → KubeApiError.
   */
  async watch<T>(
    path: string,
    query: RequestOptions['query'],
    onEvent: (event: WatchEvent<T>) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const res = await this.open('GET', path, { query: { ...query, watch: true }, signal });
    if ((res.statusCode ?? 0) >= 300) {
      const chunks: Buffer[] = [];
      for await (const chunk of res) chunks.push(chunk as Buffer);
      const text = Buffer.concat(chunks).toString('utf8');
      let parsed: { reason?: string; message?: string } = {};
      try {
        parsed = JSON.parse(text);
      } catch {
        // keep the raw text
      }
      throw new KubeApiError('WATCH', path, res.statusCode ?? 0, parsed.reason ?? '', parsed.message ?? text);
    }
    const lines = createInterface({ input: res, crlfDelay: Number.POSITIVE_INFINITY });
    try {
      for await (const line of lines) {
        if (line.trim()) onEvent(JSON.parse(line) as WatchEvent<T>);
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof KubeApiError) throw err; // an ERROR event the handler raised (e.g. 410)
      throw new KubeApiError('WATCH', path, 0, 'Disconnected', (err as Error).message, err);
    } finally {
      res.destroy();
    }
  }

  close(): void {
    this.agent.destroy();
  }
}

/** REST path of a kind's collection (namespace '' = all namespaces) or of one object. */
export function resourcePath(
  apiVersion: string,
  plural: string,
  namespace = '',
  name = '',
  subresource = '',
): string {
  const base = apiVersion.includes('/') ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
  let path = namespace ? `${base}/namespaces/${namespace}/${plural}` : `${base}/${plural}`;
  if (name) path += `/${name}`;
  if (subresource) path += `/${subresource}`;
  return path;
}
