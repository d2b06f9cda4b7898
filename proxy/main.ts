import { createServer } from 'node:http';
import type { AddressInfo, Server, Socket } from 'node:net';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { NatsConnection } from '@nats-io/transport-node';
import type { Registry } from 'prom-client';
import { errorMessage } from '../common/errors.ts';
import { createLogger, type Logger } from '../common/log.ts';
import { jsonErrorBody, wireStatus } from '../common/wire-errors.ts';
import { createAdminServer, functionAccepts } from './admin.ts';
import { TokenFile } from './auth.ts';
import type { ProxyConfig } from './config.ts';
import { H2Forwarder } from './h2/forwarder.ts';
import { createH2PublicServer, createPublicPort } from './h2/public-port.ts';
import { ConcurrencyLimiter } from './limiter.ts';
import type { LoadReporter, LoadReporterOptions } from './load-reporter.ts';
import type { MapDependencies, MapService } from './map-service.ts';
import { createProxyMetrics } from './metrics.ts';
import { answerClientError, headersTimeoutOptions } from './request-timeouts.ts';
import { PublicHandler } from './server.ts';

export interface RunningProxy {
  publicPort: number;
  adminPort: number;
  /** True from the start of close(): /readyz fails and new requests get 503. */
  readonly draining: boolean;
  /**
   * Graceful stop: readiness goes false, new requests are refused, in-flight streams get
   * --drain seconds, then end with an `event: error` `{"code":"shutdown"}`; then everything closes.
   */
  close(): Promise<void>;
}

// Longer than the idle timeouts of common load balancers (GCP 600 s, AWS ALB 60 s, nginx 75 s),
// so the proxy never closes a kept-alive connection a balancer is about to reuse (Ray #54127).
const KEEP_ALIVE_TIMEOUT_MS = 620_000;

const BAD_CONNECT_BODY = `${jsonErrorBody('bad_request_target', 'CONNECT is not supported: not a proxy')}\n`;
const BAD_CONNECT = Buffer.from(
  `HTTP/1.1 ${wireStatus('bad_request_target')} Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n` +
    `content-length: ${Buffer.byteLength(BAD_CONNECT_BODY)}\r\n\r\n${BAD_CONNECT_BODY}`,
);

async function listen(server: Server, host: string, port: number): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return (server.address() as AddressInfo).port;
}

/** Where an activator reaches this proxy: --advertise, else the public address (loopback for 0.0.0.0). */
function advertisedUrl(config: ProxyConfig, port: number): string {
  if (config.advertise) return config.advertise;
  const host = ['0.0.0.0', '::', ''].includes(config.listen.host) ? hostname() : config.listen.host;
  return `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

interface LoadReports {
  reporter: () => LoadReporter | undefined;
  close: () => Promise<void>;
}

/**
 * The autoscaler's signal (common/autoscale/load-report.ts) on a NATS connection of its own
 * (map's, in proxy/map/, comes and goes with JetStream). Connects in the background, retrying,
 * so a NATS that is not up yet never holds the proxy back.
 */
function startLoadReports(
  config: ProxyConfig,
  deps: Omit<LoadReporterOptions, 'nc' | 'fn' | 'replica'>,
): LoadReports {
  const stopping = new AbortController();
  let reporter: LoadReporter | undefined;
  let nc: NatsConnection | undefined;
  const started = (async () => {
    const [{ connectNats }, { LoadReporter }] = await Promise.all([
      import('./map/connection.ts'),
      import('./load-reporter.ts'),
    ]);
    const replica = config.replica || hostname();
    for (let wait = 250; !stopping.signal.aborted; wait = Math.min(wait * 2, 5000)) {
      try {
        nc = await connectNats(config.nats, config.function, `${replica} load`, config.natsCredentials);
        break;
      } catch (err) {
        deps.log.warn({ err: errorMessage(err), retryMs: wait }, 'load reports: cannot connect to NATS');
        await sleep(wait, undefined, { signal: stopping.signal }).catch(() => {});
      }
    }
    if (!nc) return;
    reporter = new LoadReporter({
      ...deps,
      nc,
      fn: config.function,
      replica,
    });
    reporter.start();
  })();
  return {
    reporter: () => reporter,
    close: async () => {
      stopping.abort();
      await started;
      await reporter?.close();
      await nc?.drain().catch(() => nc?.close());
    },
  };
}

async function loadMap(config: ProxyConfig, deps: Omit<MapDependencies, 'config'>): Promise<MapService> {
  // Loaded only when --nats is set, so a proxy without map never loads the NATS client.
  const { startMap } = await import('./map/index.ts');
  return startMap({ config, ...deps });
}

export async function runProxy(
  config: ProxyConfig,
  log: Logger = createLogger('proxy'),
): Promise<RunningProxy> {
  let reports: LoadReports | undefined;
  const limiter = new ConcurrencyLimiter(config.concurrency, () => reports?.reporter()?.touch());
  const metrics = createProxyMetrics(limiter);
  const tokens = config.authTokensFile ? new TokenFile(config.authTokensFile, log) : undefined;
  const map =
    config.nats && config.map
      ? await loadMap(config, { limiter, registry: metrics.registry, log })
      : undefined;
  const h2 =
    config.upstreamProtocol === 'h2c'
      ? new H2Forwarder({
          upstream: config.upstream,
          metrics,
          limits: {
            heartbeatMs: config.heartbeat * 1000,
            idleMs: config.idleTimeout * 1000,
            maxDurationMs: config.maxDuration * 1000,
            maxBodyBytes: config.maxBody,
          },
        })
      : undefined;
  const handler = new PublicHandler({ config, limiter, metrics, log, tokens, map, h2 });

  const publicServer = createServer({
    keepAliveTimeout: KEEP_ALIVE_TIMEOUT_MS,
    ...headersTimeoutOptions(config.headersTimeout),
    noDelay: true,
  });
  publicServer.on('request', handler.handle);
  publicServer.on('connect', (_req, socket: Socket) => socket.end(BAD_CONNECT));
  const notReadyReason = () => {
    if (handler.draining) return 'draining: the proxy is shutting down';
    if (map && !map.ready()) return 'map: not connected to NATS';
    return undefined;
  };
  // HTTP/1.1 and h2c with prior knowledge share the public port (proxy/h2/public-port.ts).
  const publicPortServer = createPublicPort({
    http1: publicServer,
    http2: createH2PublicServer(handler.handle),
    onClientError: answerClientError,
  });
  const adminServer = createAdminServer({
    registry: metrics.registry,
    upstream: new URL(config.upstream),
    notReadyReason,
  });

  const publicPort = await listen(publicPortServer.server, config.listen.host, config.listen.port);
  const adminPort = await listen(adminServer, config.admin.host, config.admin.port);
  if (config.nats) {
    // The autoscaler's signal (common/autoscale/load-report.ts); without it the function's
    // replicas stay where they are, so a NATS that is not there yet is waited for in the background.
    reports = startLoadReports(config, {
      url: advertisedUrl(config, publicPort),
      // What /readyz answers: an activator sends work the moment it would pass.
      ready: async () => !notReadyReason() && (await functionAccepts(new URL(config.upstream), 500)),
      limiter,
      draining: () => handler.draining,
      maps: () => activeMaps(metrics.registry),
      log,
    });
  }
  log.info(
    {
      listen: publicPort,
      admin: adminPort,
      upstream: config.upstream,
      upstreamProtocol: config.upstreamProtocol,
      concurrency: config.concurrency,
      map: !!map,
      loadReports: !!reports,
    },
    'proxy listening',
  );

  let closing: Promise<void> | undefined;
  const shutdown = async () => {
    log.info({ inFlight: handler.inFlight, drainSeconds: config.drain }, 'draining');
    // Map tasks drain alongside the streams: neither waits for the other's period.
    const drained = Promise.all([handler.drain(config.drain * 1000), map?.drain(config.drain * 1000)]);
    // Activators and the autoscaler learn at once that this replica takes nothing new.
    void reports?.reporter()?.report();
    await drained;
    await reports?.close();
    await map?.close();
    tokens?.close();
    h2?.close();
    await publicPortServer.close();
    await Promise.all(
      [adminServer].map(
        (server) =>
          new Promise<void>((resolve) => {
            server.close(() => resolve());
            server.closeAllConnections();
          }),
      ),
    );
    log.info('proxy stopped');
  };
  return {
    publicPort,
    adminPort,
    get draining() {
      return handler.draining;
    },
    close: () => {
      closing ??= shutdown();
      return closing;
    },
  };
}

/** Map requests this proxy streams results for now (proxy/map's gauge; 0 without map). */
async function activeMaps(registry: Registry): Promise<number> {
  const gauge = registry.getSingleMetric('sluice_map_requests_active');
  const values = gauge ? (await gauge.get()).values : [];
  return values.reduce((sum, v) => sum + v.value, 0);
}
