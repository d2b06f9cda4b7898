import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { Agent, createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, credsAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { API_VERSION, ingressPath, PLURAL } from '../api/v1alpha1/schema.ts';
import { errorMessage } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import { splitNatsServers } from '../common/nats-servers.ts';
import { sendJsonError } from '../common/wire-errors.ts';
import { functionView } from '../operator/function.ts';
import { Informer } from '../operator/informer.ts';
import { KubeClient, type KubeObject, resourcePath } from '../operator/kube.ts';
import { createH2PublicServer, createPublicPort } from '../proxy/h2/public-port.ts';
import { refusedTarget, requestHost } from '../proxy/headers.ts';
import type { ActivatorConfig } from './config.ts';
import { FunctionGate, type GateSettings } from './gate.ts';
import { type Route, RouteTable } from './routes.ts';

/** A request's headers (or a silent connection's first) within this, as the sidecars' --headers-timeout default. */
const HEADERS_TIMEOUT_MS = 30_000;

/** A function with nothing held or forwarded this long stops being listened to. */
const GATE_IDLE_MS = 60_000;

export interface RunningActivator {
  port: number;
  adminPort: number;
  /** Requests held now, over every function. */
  held: () => number;
  stop: () => Promise<void>;
}

interface Known extends Route {
  settings: GateSettings;
}

/**
 * `sluice activator` (Knative's activator): receives the traffic of functions that have no
 * ready replica (the operator lists the activator's pods in their Services), holds each request
 * (activator/hold.ts) and counts it as load over NATS so the autoscaler starts a replica at once,
 * then forwards it to the first replica that reports ready, straight to its pod. Once a replica is
 * ready the operator takes the activator out of the path: no extra hop in steady state.
 */
export async function startActivator(config: ActivatorConfig, log: Logger): Promise<RunningActivator> {
  const client = await KubeClient.load(config.kubeconfig);
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const coldStarts = new Histogram({
    name: 'sluice_cold_start_seconds',
    help: 'From a request held with no replica ready to the first byte of its answer',
    labelNames: ['function'],
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800],
    registers: [registry],
  });
  const requests = new Counter({
    name: 'sluice_activator_requests_total',
    help: 'Requests that reached the activator, by outcome (function, unknown)',
    labelNames: ['outcome'],
    registers: [registry],
  });
  const gates = new Map<string, FunctionGate>();
  new Gauge({
    name: 'sluice_activator_held_requests',
    help: 'Requests held now, waiting for a ready replica, by function',
    labelNames: ['function'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [fn, gate] of gates) this.set({ function: fn }, gate.room.size);
    },
  });

  // The functions, as the informer has them; the route table is rebuilt when they change.
  let known = new Map<string, Known>();
  let table = new RouteTable([]);
  let stale = true;
  const functions = new Informer<KubeObject>(client, {
    path: resourcePath(API_VERSION, PLURAL, config.namespace),
    onChange: () => {
      stale = true;
    },
    log,
  });
  const current = () => {
    if (stale) {
      stale = false;
      known = new Map();
      for (const object of functions.list()) {
        const entry = knownFunction(object);
        if (entry) known.set(entry.key, entry);
      }
      table = new RouteTable(known.values());
    }
    return { known, table };
  };

  let nc: NatsConnection | undefined;
  const stopping = new AbortController();
  const connecting = (async () => {
    for (let wait = 250; !stopping.signal.aborted; wait = Math.min(wait * 2, 5000)) {
      try {
        nc = await connect({
          servers: splitNatsServers(config.nats),
          name: `sluice-activator ${config.identity}`,
          // Read at every (re)connect, as the sidecars do.
          ...(config.natsCredentials
            ? {
                authenticator: credsAuthenticator(() => readFileSync(config.natsCredentials)),
                ignoreAuthErrorAbort: true,
              }
            : {}),
          maxReconnectAttempts: -1,
          noAsyncTraces: true,
        });
        log.info({ nats: config.nats }, 'connected to NATS');
        return;
      } catch (err) {
        log.warn({ err: errorMessage(err), retryMs: wait }, 'cannot connect to NATS');
        await sleep(wait, undefined, { signal: stopping.signal }).catch(() => {});
      }
    }
  })();

  const agent = new Agent({ keepAlive: true, timeout: 4000 });
  const handle = (req: IncomingMessage, res: ServerResponse): void => {
    const refused = refusedTarget(req.method, req.url);
    if (refused) {
      sendJsonError(res, 'bad_request_target', refused);
      return;
    }
    const { known, table } = current();
    // An HTTP/2 request names its host in :authority.
    const route = table.resolve(requestHost(req), req.url!);
    const fn = route && known.get(route.key);
    if (!fn) {
      requests.inc({ outcome: 'unknown' });
      sendJsonError(
        res,
        'not_found',
        `no StreamingFunction is served at host ${JSON.stringify(requestHost(req) ?? '')} path ${JSON.stringify(req.url)}`,
      );
      return;
    }
    if (!nc) {
      sendJsonError(res, 'nats_unavailable', 'the activator is not connected to NATS yet; retry', {
        'retry-after': '1',
      });
      return;
    }
    requests.inc({ outcome: 'function' });
    let gate = gates.get(fn.key);
    if (!gate) {
      const key = fn.key;
      gate = new FunctionGate({
        nc,
        fn: key,
        settings: () => current().known.get(key)?.settings ?? fn.settings,
        reporter: `activator/${config.identity}`,
        agent,
        log,
        onColdStart: (seconds) => coldStarts.observe({ function: key }, seconds),
      });
      gates.set(key, gate);
    }
    gate.handle(req, res).catch((err: unknown) => {
      log.error({ err, function: fn.key }, 'activator request failed');
      if (!res.headersSent) sendJsonError(res, 'internal', 'activator error');
      else res.destroy();
    });
  };

  const http1 = createServer(
    { noDelay: true, keepAliveTimeout: 620_000, headersTimeout: HEADERS_TIMEOUT_MS, requestTimeout: 0 },
    handle,
  );
  // HTTP/1.1 and h2c on one port, as the sidecars' public port: the function's Service tells
  // Traefik to speak h2c to its endpoints, and while the function is at zero those are ours.
  const publicPort = createPublicPort({
    http1,
    http2: createH2PublicServer(handle),
  });
  const server = publicPort.server;
  const admin = createServer(async (req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/healthz') return void res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
    if (path === '/readyz') {
      const ok = functions.synced && nc !== undefined && !nc.isClosed();
      return void res
        .writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' })
        .end(ok ? 'ok\n' : 'functions not listed or NATS not connected\n');
    }
    if (path === '/metrics') {
      return void res.writeHead(200, { 'content-type': registry.contentType }).end(await registry.metrics());
    }
    sendJsonError(res, 'not_found', `no route ${path}`);
  });

  await functions.start();
  server.listen(config.listen.port, config.listen.host);
  admin.listen(config.admin.port, config.admin.host);
  await Promise.all([once(server, 'listening'), once(admin, 'listening')]);
  const ticker = setInterval(() => {
    const now = Date.now();
    for (const [key, gate] of gates) {
      gate.tick();
      const idle = gate.idleSince();
      if (idle !== undefined && now - idle > GATE_IDLE_MS) {
        gate.close();
        gates.delete(key);
      }
    }
  }, 1000);
  log.info(
    { listen: (server.address() as AddressInfo).port, namespace: config.namespace || '(all)' },
    'activator listening',
  );

  return {
    port: (server.address() as AddressInfo).port,
    adminPort: (admin.address() as AddressInfo).port,
    held: () => [...gates.values()].reduce((n, g) => n + g.room.size, 0),
    stop: async () => {
      clearInterval(ticker);
      stopping.abort();
      await connecting;
      await publicPort.close();
      await functions.stop();
      for (const gate of gates.values()) gate.close();
      await nc?.drain().catch(() => nc?.close());
      await new Promise<void>((resolve) => admin.close(() => resolve()));
      admin.closeAllConnections();
      agent.destroy();
      client.close();
    },
  };
}

/** A function's route and the spec fields the activator needs; undefined for a spec it cannot read. */
function knownFunction(object: KubeObject): Known | undefined {
  if (object.metadata?.deletionTimestamp) return undefined;
  try {
    const fn = functionView(object);
    const { namespace, name } = fn.metadata;
    const { ingress, scaling, streaming } = fn.spec;
    return {
      key: `${namespace}/${name}`,
      namespace,
      name,
      ingress: ingress.enabled ? { host: ingress.host ?? '', path: ingressPath(fn) } : undefined,
      settings: {
        hold: {
          fn: `${namespace}/${name}`,
          timeoutMs: scaling.coldStartTimeoutSeconds * 1000,
          heartbeatMs: streaming.heartbeatSeconds * 1000,
        },
        concurrency: scaling.concurrency,
        maxReplicas: scaling.maxReplicas,
      },
    };
  } catch {
    return undefined;
  }
}
