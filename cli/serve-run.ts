import { accessSync, constants, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { Backend } from '../activator/pick.ts';
import { PROXY_NODE_FLAGS, pathPrefix } from '../api/v1alpha1/proxy-flags.ts';
import type { StreamingFunction } from '../api/v1alpha1/schema.ts';
import { type LoadParts, scalingPolicy } from '../common/autoscale/decision.ts';
import { SluiceError } from '../common/errors.ts';
import { freePort, waitForPort } from '../common/net.ts';
import { sendJsonError } from '../common/wire-errors.ts';
import { createFront } from './serve-front.ts';
import { functionCommand, functionEnv, loadManifest, ManifestError, proxyArgs } from './serve-manifest.ts';
import { writeLocalNatsFiles } from './serve-nats.ts';
import { PendingTasks } from './serve-pending.ts';
import { formatNatsLine, formatPinoLine, PrefixedLog, Supervised } from './serve-process.ts';
import { describeScale, ServeScaler } from './serve-scaler.ts';

const SLUICE_BIN = fileURLToPath(new URL('../bin/sluice.js', import.meta.url));
const STOP_GRACE_MS = 5_000;
/** What serve runs at most, whatever spec.scaling.maxReplicas says (as --replicas). */
const MAX_LOCAL_REPLICAS = 64;
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
  /** --auth-tokens-file or SLUICE_AUTH_TOKENS_FILE: required when spec.auth.secretName is set. */
  authTokensFile?: string;
}

interface Replica extends Backend {
  adminPort: number;
  fn: Supervised;
  proxy: Supervised;
  /** A readiness check is on its way. */
  checking?: boolean;
  /** Set once it is being stopped (it no longer counts as running). */
  stopping?: Promise<void>;
  /** Its processes are being stopped: too late to keep it. */
  halting?: boolean;
}

/** `sluice serve`: runs until SIGINT/SIGTERM, then stops every process it started. */
export async function runServe(file: string, override: string[], options: ServeOptions): Promise<void> {
  const serveLog = new PrefixedLog('serve', 7);
  let fn: StreamingFunction;
  let command: string[];
  let fixedCount: number | undefined;
  let frontPort: number;
  let tokensFile: string | undefined;
  try {
    fn = await loadManifest(file);
    tokensFile = authTokens(fn, options.authTokensFile);
    command = functionCommand(fn, override, file);
    fixedCount =
      options.replicas === undefined
        ? undefined
        : parseCount('--replicas', options.replicas, 1, 1, MAX_LOCAL_REPLICAS);
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

  // The proxies read the tokens as in a pod; their own settings check the file again.
  const proxyEnv = tokensFile ? { ...process.env, SLUICE_AUTH_TOKENS_FILE: tokensFile } : process.env;
  if (tokensFile) serveLog.line(`auth: requests need a bearer token from ${tokensFile}`);

  const supervised: Supervised[] = [];
  let stopping = false;
  const fatal = (message: string) => {
    serveLog.line(message);
    void shutdown(1);
  };

  const replicas: Replica[] = [];
  let natsUrl = '';
  const prefix = pathPrefix(fn);
  const fnName = `${fn.metadata.namespace ?? 'default'}/${name}`;
  const localPath = (req: { url?: string }) => {
    const path = (req.url ?? '/').split('?')[0]!;
    return prefix && path.startsWith(`${prefix}/`) ? path.slice(prefix.length) : path;
  };
  const isMapRequest = (req: { url?: string }) => {
    const local = localPath(req);
    return local === '/_sluice/map' || local.startsWith('/_sluice/map/');
  };
  let scaler: ServeScaler | undefined;
  const policy = scalingPolicy({
    ...fn.spec.scaling,
    maxReplicas: Math.max(
      fn.spec.scaling.minReplicas,
      Math.min(fn.spec.scaling.maxReplicas, MAX_LOCAL_REPLICAS),
    ),
  });
  const front = createFront({
    backends: replicas,
    concurrency: fn.spec.scaling.concurrency,
    hold: {
      fn: fnName,
      timeoutMs: fn.spec.scaling.coldStartTimeoutSeconds * 1000,
      heartbeatMs: fn.spec.streaming.heartbeatSeconds * 1000,
    },
    crashed: () =>
      replicas.length > 0 && replicas.every((r) => r.fn.crashLoop) ? replicas[0]!.fn.crashLoop : undefined,
    intercept: (req, res) => {
      if (natsUrl || !fn.spec.map.enabled || !isMapRequest(req)) return false;
      sendJsonError(res, 'map_unavailable', NATS_MISSING);
      return true;
    },
    // A map request's tasks are load where they wait (JetStream), not the request itself.
    countsAsLoad: (req) => !isMapRequest(req),
    canGrow: () => scaler !== undefined && replicas.filter((r) => !r.draining).length < policy.maxReplicas,
    onHeld: () => void scaler?.decide(),
    onColdStart: (ms) =>
      serveLog.line(`cold start: a held request got its first byte after ${Math.round(ms)} ms`),
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
  const initial = fixedCount ?? policy.minReplicas;
  serveLog.line(
    fixedCount === undefined
      ? `front port ${options.host}:${frontPort} -> ${name}, ${policy.minReplicas} to ${policy.maxReplicas} replica(s) following the load (${policy.target} streams each; --replicas N for a fixed count)`
      : `front port ${options.host}:${frontPort} -> ${fixedCount} replica(s) of ${name}`,
  );

  // NATS for map: started only when the spec enables map and nats-server is installed.
  let natsDir: string | undefined;
  let natsCredentials: string | undefined;
  const natsBinary = fn.spec.map.enabled ? findOnPath('nats-server') : undefined;
  if (natsBinary) {
    const natsPort = await freePort();
    natsDir = mkdtempSync(join(tmpdir(), `sluice-serve-${name}-`));
    const natsFiles = await writeLocalNatsFiles(natsDir, `${fn.metadata.namespace ?? 'default'}/${name}`);
    natsCredentials = natsFiles.credentials;
    const nats = new Supervised({
      label: 'nats',
      command: natsBinary,
      args: ['-js', '-a', '127.0.0.1', '-p', String(natsPort), '-sd', natsDir, '-c', natsFiles.config],
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
    serveLog.line(`map: nats-server with JetStream on ${natsUrl} (store ${natsDir}; credentials required)`);
  } else if (fn.spec.map.enabled) {
    serveLog.line(`map is off: ${NATS_MISSING}`);
  }

  let launched = 0;
  /** A replica with its proxy started and its function not yet: its name, ports and processes. */
  const prepare = async (): Promise<Replica> => {
    const i = launched++;
    const replicaName = `${name}-${i}`;
    const [functionPort, listenPort, adminPort] = [await freePort(), await freePort(), await freePort()];
    const replica = {
      name: replicaName,
      port: listenPort,
      adminPort,
      ready: false,
      inFlight: 0,
      load: 0,
      peak: 0,
    } as Replica;
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
        ...proxyArgs(
          fn,
          { name: replicaName, listenPort, adminPort, functionPort },
          natsUrl,
          natsCredentials,
        ),
      ],
      env: proxyEnv,
      cwd,
      log: new PrefixedLog(`${replicaName} proxy`, i * 2 + 1),
      report: (m) => serveLog.line(m),
      format: formatPinoLine,
      onExit: () => {
        replica.ready = false;
      },
    });
    supervised.push(replica.fn, replica.proxy);
    replica.proxy.start();
    return replica;
  };

  // Following the load, the next replica's proxy is started ahead (a warm sidecar): a cold start
  // then waits for the function alone, not for a Node process to load the proxy as well.
  let spare: Promise<Replica> | undefined;
  const keepSpare = () => {
    if (fixedCount === undefined && !stopping && !spare && replicas.length < policy.maxReplicas)
      spare = prepare();
  };

  /** Starts one more replica: its function and the proxy in front of it (the warm one, if any). */
  const launch = async (): Promise<Replica> => {
    const next = spare ?? prepare();
    spare = undefined;
    const replica = await next;
    replicas.push(replica);
    replica.fn.start();
    keepSpare();
    return replica;
  };

  /**
   * Stops a replica the load no longer needs: it takes nothing new at once, and its processes
   * stop only once the streams it serves have ended (never cut one).
   */
  const retire = (replica: Replica): Promise<void> => {
    replica.draining = true;
    replica.stopping ??= (async () => {
      if (replica.inFlight > 0) {
        serveLog.line(`${replica.name} stops once its ${replica.inFlight} request(s) end`);
        while (replica.inFlight > 0 && replica.draining && !stopping) await sleep(100);
        if (!replica.draining) {
          replica.stopping = undefined; // needed again before it was idle: it stays
          return;
        }
      }
      replica.halting = true;
      await replica.proxy.stop(STOP_GRACE_MS);
      await replica.fn.stop(STOP_GRACE_MS);
      replicas.splice(replicas.indexOf(replica), 1);
      for (const s of [replica.fn, replica.proxy]) supervised.splice(supervised.indexOf(s), 1);
      serveLog.line(`${replica.name} stopped`);
      keepSpare();
    })();
    return replica.stopping;
  };

  const running = () => replicas.filter((r) => !r.draining);
  const scaleTo = async (to: number) => {
    const now = running();
    if (to > now.length) {
      // A replica still finishing its streams is the quickest one to have back.
      for (const r of replicas) if (r.draining && !r.halting && running().length < to) r.draining = false;
      while (running().length < to) await launch();
    } else {
      const idlest = [...now].sort((a, b) => a.inFlight - b.inFlight).slice(0, now.length - to);
      for (const r of idlest) void retire(r);
    }
  };

  for (let i = 0; i < initial; i++) await launch();
  keepSpare();

  const pending = natsUrl ? new PendingTasks(natsUrl, fnName) : undefined;
  if (fixedCount === undefined) {
    scaler = new ServeScaler({
      policy,
      initial,
      load: async (): Promise<LoadParts> => {
        let streams = 0;
        for (const r of replicas) {
          if (!r.draining) streams += Math.max(r.peak, r.load);
          r.peak = r.load;
        }
        // Held now, not the interval's highest: a request held a moment ago is in a replica's peak
        // by now, and counting it twice would start a replica nobody needs.
        return { streams, held: front.room.size, pendingTasks: (await pending?.count()) ?? 0 };
      },
      scaleTo: (from, to, decision, parts) => {
        serveLog.line(
          describeScale(from, to, decision, parts, policy, fn.spec.scaling.scaleDownDelaySeconds),
        );
        void scaleTo(to);
      },
    });
    scaler.start();
  }

  // Readiness: a replica takes requests once its proxy's /readyz says the function answers.
  // Checked often while one starts: a held request goes the moment it can.
  const readiness = setInterval(() => {
    for (const replica of replicas) if (!replica.ready && !replica.checking) void checkReady(replica);
  }, 25);
  let announced = false;
  const checkReady = async (replica: Replica) => {
    replica.checking = true;
    try {
      const response = await fetch(`http://127.0.0.1:${replica.adminPort}/readyz`, {
        signal: AbortSignal.timeout(1000),
      });
      await response.body?.cancel();
      replica.ready = response.ok;
    } catch {
      replica.ready = false;
    } finally {
      replica.checking = false;
    }
    if (replica.ready) front.offer();
    front.checkCrashed();
    if (!announced && replicas.every((r) => r.ready)) {
      announced = true;
      announce();
    }
  };
  const announce = () => {
    const url = frontUrl;
    const count = replicas.length;
    serveLog.line(
      count === 0
        ? `${name} ready, scaled to zero: the first request starts a replica (and is held until it answers)`
        : `${name} ready with ${count} replica(s) on ${url}`,
    );
    serveLog.line(`  curl --no-buffer ${url}/`);
    if (natsUrl) {
      serveLog.line(`  curl --no-buffer -X POST ${url}/_sluice/map -d '{"inputs":[1,2,3]}'`);
    }
  };
  if (replicas.length === 0) {
    announced = true;
    announce();
  }

  async function shutdown(code: number): Promise<void> {
    if (stopping) return;
    stopping = true;
    clearInterval(readiness);
    scaler?.stop();
    serveLog.line('stopping');
    front.closeAll();
    await pending?.close();
    // Proxies first (they stop taking requests and end streams), then functions, NATS last.
    const natsProcess = natsBinary ? supervised[0] : undefined;
    const warm = await spare;
    await Promise.all([...replicas, ...(warm ? [warm] : [])].map((r) => r.proxy.stop(STOP_GRACE_MS)));
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

/**
 * The tokens file serve's proxies require: a function that asks for auth (spec.auth.secretName,
 * a cluster Secret serve cannot read) does not start without one.
 */
function authTokens(fn: StreamingFunction, given: string | undefined): string | undefined {
  const setting = '--auth-tokens-file (SLUICE_AUTH_TOKENS_FILE)';
  const secret = fn.spec.auth?.secretName;
  if (!given) {
    if (!secret) return undefined;
    throw new ServeUsageError(
      `spec.auth.secretName (${secret}) asks for bearer tokens, and that Secret is in a cluster: ` +
        `pass ${setting} with a file of accepted tokens, one a line`,
    );
  }
  const path = resolve(given);
  try {
    readFileSync(path);
  } catch (err) {
    throw new ServeUsageError(
      `${setting}: cannot read ${JSON.stringify(path)} (${(err as NodeJS.ErrnoException).code})`,
    );
  }
  return path;
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
