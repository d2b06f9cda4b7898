import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PROXY_NODE_FLAGS, pathPrefix } from '../api/v1alpha1/proxy-flags.ts';
import type { StreamingFunction } from '../api/v1alpha1/schema.ts';
import { SluiceError } from '../common/errors.ts';
import { freePort, waitForPort } from '../common/net.ts';
import { sendJsonError } from '../common/wire-errors.ts';
import { type Backend, createFront } from './serve-front.ts';
import { functionCommand, functionEnv, loadManifest, ManifestError, proxyArgs } from './serve-manifest.ts';
import { formatNatsLine, formatPinoLine, PrefixedLog, Supervised } from './serve-process.ts';

const SLUICE_BIN = fileURLToPath(new URL('../bin/sluice.js', import.meta.url));
const STOP_GRACE_MS = 5_000;
const NATS_MISSING =
  'map needs a local nats-server with JetStream, which was not found on PATH: install it with `npm run setup` ' +
  '(or `apt-get install nats-server`) and restart sluice serve';

class ServeUsageError extends SluiceError {
  constructor(message: string) {
    super('ERR_SERVE_USAGE', message);
  }
}

/** `sluice serve`'s options, as commander parses them (cli/serve.ts). */
export interface ServeOptions {
  replicas?: string;
  port: string;
  host: string;
}

interface Replica extends Backend {
  adminPort: number;
  fn: Supervised;
  proxy: Supervised;
}

/** `sluice serve`: runs until SIGINT/SIGTERM, then stops every process it started. */
export async function runServe(file: string, override: string[], options: ServeOptions): Promise<void> {
  const serveLog = new PrefixedLog('serve', 7);
  let fn: StreamingFunction;
  let command: string[];
  let replicaCount: number;
  let frontPort: number;
  try {
    fn = await loadManifest(file);
    command = functionCommand(fn, override, file);
    replicaCount = parseCount(
      '--replicas',
      options.replicas,
      Math.max(1, fn.spec.scaling.minReplicas),
      1,
      64,
    );
    frontPort = parseCount('--port', options.port, 8080, 0, 65535);
  } catch (err) {
    if (err instanceof ManifestError) {
      process.stderr.write(`sluice serve: ${file} is not a valid StreamingFunction:\n`);
      for (const problem of err.problems) process.stderr.write(`  ${problem}\n`);
      process.exit(2);
    }
    if (err instanceof ServeUsageError) {
      process.stderr.write(`sluice serve: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }

  const name = fn.metadata.name;
  const cwd = dirname(resolve(file));
  const { env: specEnv, fromCluster } = functionEnv(fn);
  if (fromCluster.length > 0) {
    serveLog.line(
      `spec.env ${fromCluster.join(', ')} use valueFrom (cluster objects); set them in your shell to pass them on`,
    );
  }

  const authSecret = fn.spec.auth?.secretName;
  if (authSecret && !process.env.SLUICE_AUTH_TOKENS_FILE) {
    serveLog.line(
      `spec.auth.secretName (${authSecret}) is a cluster Secret: set SLUICE_AUTH_TOKENS_FILE to a file of tokens to require them here`,
    );
  }

  const supervised: Supervised[] = [];
  let stopping = false;
  const fatal = (message: string) => {
    serveLog.line(message);
    void shutdown(1);
  };

  const replicas: Replica[] = [];
  let natsUrl = '';
  const prefix = pathPrefix(fn);
  const front = createFront({
    backends: replicas,
    intercept: (req, res) => {
      if (natsUrl || !fn.spec.map.enabled) return false;
      const path = (req.url ?? '/').split('?')[0]!;
      const local = prefix && path.startsWith(`${prefix}/`) ? path.slice(prefix.length) : path;
      if (local !== '/_sluice/map' && !local.startsWith('/_sluice/map/')) return false;
      sendJsonError(res, 'map_unavailable', NATS_MISSING);
      return true;
    },
  });

  // The front port first: a port in use stops serve before anything else starts, and the
  // functions learn their own URL (SLUICE_URL) for calling themselves (map) or peers.
  try {
    await new Promise<void>((resolveListen, reject) => {
      front.server.once('error', reject);
      front.server.listen(frontPort, options.host, resolveListen);
    });
  } catch (err) {
    process.stderr.write(
      `sluice serve: cannot listen on ${options.host}:${frontPort}: ${(err as NodeJS.ErrnoException).code ?? err}\n`,
    );
    process.exit(1);
  }
  const address = front.server.address();
  if (typeof address === 'object' && address) frontPort = address.port;
  const frontUrl = `http://${options.host === '0.0.0.0' ? '127.0.0.1' : options.host}:${frontPort}`;
  serveLog.line(`front port ${options.host}:${frontPort} -> ${replicaCount} replica(s) of ${name}`);

  // NATS for map: started only when the spec enables map and nats-server is installed.
  let natsDir: string | undefined;
  const natsBinary = fn.spec.map.enabled ? findOnPath('nats-server') : undefined;
  if (natsBinary) {
    const natsPort = await freePort();
    natsDir = mkdtempSync(join(tmpdir(), `sluice-serve-${name}-`));
    const nats = new Supervised({
      label: 'nats',
      command: natsBinary,
      args: ['-js', '-a', '127.0.0.1', '-p', String(natsPort), '-sd', natsDir],
      env: process.env,
      cwd,
      log: new PrefixedLog('nats', 6),
      report: (m) => serveLog.line(m),
      format: formatNatsLine,
    });
    supervised.push(nats);
    nats.start();
    await waitForPort(natsPort, '127.0.0.1', 15_000).catch((err: unknown) => {
      throw new SluiceError('ERR_NATS_START', `nats-server did not listen on ${natsPort}`, { cause: err });
    });
    natsUrl = `nats://127.0.0.1:${natsPort}`;
    serveLog.line(`map: nats-server with JetStream on ${natsUrl} (store ${natsDir})`);
  } else if (fn.spec.map.enabled) {
    serveLog.line(`map is off: ${NATS_MISSING}`);
  }

  for (let i = 0; i < replicaCount; i++) {
    const replicaName = `${name}-${i}`;
    const [functionPort, listenPort, adminPort] = [await freePort(), await freePort(), await freePort()];
    const replica = { name: replicaName, port: listenPort, adminPort, ready: false, inFlight: 0 } as Replica;
    replica.fn = new Supervised({
      label: `${replicaName} fn`,
      command: command[0]!,
      args: command.slice(1),
      // The shell overrides spec.env (to point a function at local peers); serve's own variables win.
      env: { ...specEnv, ...process.env, PORT: String(functionPort), SLUICE_URL: `${frontUrl}/` },
      cwd,
      log: new PrefixedLog(`${replicaName} fn`, i * 2),
      report: (m) => serveLog.line(m),
      onExit: () => {
        replica.ready = false;
      },
      onSpawnError: (err) => {
        if (err.code === 'ENOENT' && replica.fn.restarts === 0) {
          fatal(`cannot run ${command[0]}: not found (cwd ${cwd}); is it installed and on PATH?`);
        }
      },
    });
    replica.proxy = new Supervised({
      label: `${replicaName} proxy`,
      command: process.execPath,
      args: [
        ...PROXY_NODE_FLAGS,
        SLUICE_BIN,
        ...proxyArgs(fn, { name: replicaName, listenPort, adminPort, functionPort }, natsUrl),
      ],
      env: process.env,
      cwd,
      log: new PrefixedLog(`${replicaName} proxy`, i * 2 + 1),
      report: (m) => serveLog.line(m),
      format: formatPinoLine,
      onExit: () => {
        replica.ready = false;
      },
    });
    replicas.push(replica);
    supervised.push(replica.fn, replica.proxy);
    replica.fn.start();
    replica.proxy.start();
  }

  // Readiness: a replica takes requests once its proxy's /readyz says the function answers.
  const readiness = setInterval(() => {
    for (const replica of replicas) if (!replica.ready) void checkReady(replica);
  }, 250);
  let announced = false;
  const checkReady = async (replica: Replica) => {
    try {
      const response = await fetch(`http://127.0.0.1:${replica.adminPort}/readyz`, {
        signal: AbortSignal.timeout(1000),
      });
      await response.body?.cancel();
      replica.ready = response.ok;
    } catch {
      replica.ready = false;
    }
    if (!announced && replicas.every((r) => r.ready)) {
      announced = true;
      const url = frontUrl;
      serveLog.line(`${name} ready with ${replicas.length} replica(s) on ${url}`);
      serveLog.line(`  curl --no-buffer ${url}/`);
      if (natsUrl) {
        serveLog.line(`  curl --no-buffer -X POST ${url}/_sluice/map -d '{"inputs":[1,2,3]}'`);
      }
    }
  };

  async function shutdown(code: number): Promise<void> {
    if (stopping) return;
    stopping = true;
    clearInterval(readiness);
    serveLog.line('stopping');
    front.closeAll();
    // Proxies first (they stop taking requests and end streams), then functions, NATS last.
    const natsProcess = natsBinary ? supervised[0] : undefined;
    await Promise.all(replicas.map((r) => r.proxy.stop(STOP_GRACE_MS)));
    await Promise.all(replicas.map((r) => r.fn.stop(STOP_GRACE_MS)));
    await natsProcess?.stop(STOP_GRACE_MS);
    if (natsDir) rmSync(natsDir, { recursive: true, force: true });
    serveLog.line('stopped');
    process.exit(code);
  }

  process.on('SIGINT', () => {
    // A second Ctrl-C does not wait for the graceful stop.
    if (stopping) for (const s of supervised) s.killNow();
    void shutdown(130);
  });
  process.once('SIGTERM', () => void shutdown(143));
  // Whatever way serve exits, its process groups go with it.
  process.once('exit', () => {
    for (const s of supervised) s.killNow();
  });
}

function parseCount(
  flag: string,
  value: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new ServeUsageError(
      `${flag} must be an integer from ${min} to ${max} (got ${JSON.stringify(value)})`,
    );
  }
  return n;
}

function findOnPath(binary: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const candidate = join(dir, binary);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}
