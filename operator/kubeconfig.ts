import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';
import { parse } from 'yaml';
import { SluiceError } from '../common/errors.ts';

/** What a connection to the API server needs: where, TLS material, and headers (bearer token). */
export interface Connection {
  server: string;
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  rejectUnauthorized: boolean;
  servername?: string;
  /** Re-read on every call: in-cluster tokens are rotated on disk. */
  headers: () => Record<string, string>;
}

export class KubeconfigError extends SluiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_KUBECONFIG', message, options);
  }
}

const SERVICE_ACCOUNT = '/var/run/secrets/kubernetes.io/serviceaccount';

interface Named<T> {
  name: string;
  [key: string]: T | string;
}
// biome-ignore lint/suspicious/noExplicitAny: kubeconfig YAML is loosely typed
type Entry = Record<string, any>;

/** Data inline (base64) or in a file relative to the kubeconfig's directory. */
function material(base: string, data: string | undefined, file: string | undefined): Buffer | undefined {
  if (data) return Buffer.from(data, 'base64');
  if (file) return readFileSync(isAbsolute(file) ? file : join(base, file));
  return undefined;
}

function inCluster(): Connection {
  const host = process.env.KUBERNETES_SERVICE_HOST;
  const port = process.env.KUBERNETES_SERVICE_PORT ?? '443';
  if (!host) throw new KubeconfigError('no kubeconfig found and not running in a cluster');
  return {
    server: `https://${host.includes(':') ? `[${host}]` : host}:${port}`,
    ca: readFileSync(join(SERVICE_ACCOUNT, 'ca.crt')),
    rejectUnauthorized: true,
    headers: () => ({
      authorization: `Bearer ${readFileSync(join(SERVICE_ACCOUNT, 'token'), 'utf8').trim()}`,
    }),
  };
}

/**
 * Reads a kubeconfig the way kubectl picks one: the given file, else $KUBECONFIG (first entry),
 * else ~/.kube/config, else the in-cluster service account. Client certificates, tokens and
 * token files are handled here; exec and auth-provider plugins (cloud logins) are not, and
 * `load` returns undefined for them so the caller can use the full client library instead.
 * Doing the common cases here keeps @kubernetes/client-node (some 80 MB resident once
 * imported) out of the operator's memory.
 */
export function loadConnection(explicit = ''): Connection | undefined {
  const file =
    explicit ||
    process.env.KUBECONFIG?.split(':').find(Boolean) ||
    (existsSync(join(homedir(), '.kube', 'config')) ? join(homedir(), '.kube', 'config') : '');
  if (!file) return inCluster();
  let config: Entry;
  try {
    config = parse(readFileSync(file, 'utf8')) as Entry;
  } catch (err) {
    throw new KubeconfigError(`cannot read kubeconfig ${file}: ${(err as Error).message}`, { cause: err });
  }
  const find = (list: Named<Entry>[] | undefined, name: string, what: string): Entry => {
    const found = (list ?? []).find((e) => e.name === name);
    if (!found) throw new KubeconfigError(`kubeconfig ${file} has no ${what} named ${JSON.stringify(name)}`);
    return found[what] as Entry;
  };
  const contextName = config['current-context'];
  if (!contextName) throw new KubeconfigError(`kubeconfig ${file} sets no current-context`);
  const context = find(config.contexts, contextName, 'context');
  const cluster = find(config.clusters, context.cluster, 'cluster');
  const user = context.user ? find(config.users, context.user, 'user') : {};
  if (user.exec || user['auth-provider']) return undefined;
  const base = dirname(file);
  try {
    const tokenFile = user.tokenFile as string | undefined;
    return {
      server: String(cluster.server).replace(/\/$/, ''),
      ca: material(base, cluster['certificate-authority-data'], cluster['certificate-authority']),
      cert: material(base, user['client-certificate-data'], user['client-certificate']),
      key: material(base, user['client-key-data'], user['client-key']),
      rejectUnauthorized: cluster['insecure-skip-tls-verify'] !== true,
      servername: cluster['tls-server-name'],
      headers: (): Record<string, string> => {
        const token = tokenFile ? readFileSync(tokenFile, 'utf8').trim() : user.token;
        if (token) return { authorization: `Bearer ${token}` };
        if (user.username) {
          return {
            authorization: `Basic ${Buffer.from(`${user.username}:${user.password ?? ''}`).toString('base64')}`,
          };
        }
        return {};
      },
    };
  } catch (err) {
    throw new KubeconfigError(`kubeconfig ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/** For exec and auth-provider users: the full client library, loaded only then. */
export async function loadConnectionWithClientLibrary(explicit = ''): Promise<Connection> {
  const { KubeConfig } = await import('@kubernetes/client-node');
  const config = new KubeConfig();
  try {
    if (explicit) config.loadFromFile(explicit);
    else config.loadFromDefault();
  } catch (err) {
    throw new KubeconfigError(`cannot load kubeconfig ${explicit || '(default)'}`, { cause: err });
  }
  const cluster = config.getCurrentCluster();
  if (!cluster) throw new KubeconfigError('kubeconfig names no cluster');
  const options: import('node:https').RequestOptions = {};
  await config.applyToHTTPSOptions(options);
  let headers: Record<string, string> = {};
  const refresh = async () => {
    const fresh: import('node:https').RequestOptions = {};
    await config.applyToHTTPSOptions(fresh);
    headers = Object.fromEntries(Object.entries(fresh.headers ?? {}).map(([k, v]) => [k, String(v)]));
  };
  await refresh();
  // Plugins hand out short-lived tokens: refresh in the background once a minute.
  setInterval(() => void refresh().catch(() => undefined), 60_000).unref();
  return {
    server: cluster.server.replace(/\/$/, ''),
    ca: options.ca as Buffer | undefined,
    cert: options.cert as Buffer | undefined,
    key: options.key as Buffer | undefined,
    rejectUnauthorized: options.rejectUnauthorized !== false,
    servername: cluster.tlsServerName,
    headers: () => headers,
  };
}
