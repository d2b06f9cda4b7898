import type { IncomingMessage, ServerResponse } from 'node:http';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { errorMessage } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import { type MapStreamSettings, mapNames } from '../../common/map-streams.ts';
import { ensureMapTopology } from '../../common/map-topology.ts';
import { sendJsonError } from '../../common/wire-errors.ts';
import type { ProxyConfig } from '../config.ts';
import type { MapDependencies, MapService } from '../map-service.ts';
import { Cancellations } from './cancellations.ts';
import { connectNats, NatsLink } from './connection.ts';
import { DisconnectGrace } from './disconnect-grace.ts';
import { JetStreamPublisher } from './js-publisher.ts';
import { createMapMetrics, type MapMetrics } from './metrics.ts';
import { MapRequests } from './requests.ts';
import { MapWorker } from './worker.ts';

/** A JetStream ack not back by then is taken as lost and the publish retried (nats.js's default). */
const PUBLISH_ACK_TIMEOUT_MS = 5_000;

/** A connected map: the public side (requests) and this replica's share of the work (worker). */
interface Wired {
  nc: NatsConnection;
  publisher: JetStreamPublisher;
  cancellations: Cancellations;
  grace: DisconnectGrace;
  requests: MapRequests;
  worker: MapWorker;
}

interface MapContext {
  config: ProxyConfig;
  deps: MapDependencies;
  metrics: MapMetrics;
  link: NatsLink;
  log: Logger;
  replica: string;
}

function streamSettings(config: ProxyConfig): MapStreamSettings {
  return {
    ackWaitSeconds: config.mapAckWait,
    maxDeliver: config.mapMaxDeliver,
    retentionSeconds: config.mapRetention,
  };
}

/**
 * Map fan-out over NATS JetStream (SPEC §2). Returns at once: the connection is made in the
 * background, so plain streaming works while NATS is unreachable; until it is connected and
 * the streams exist, ready() is false and map requests get 503.
 */
export async function startMap(deps: MapDependencies): Promise<MapService> {
  const { config } = deps;
  const log = deps.log.child({ part: 'map' });
  const link = new NatsLink(log);
  const context: MapContext = {
    config,
    deps,
    metrics: createMapMetrics(deps.registry),
    link,
    log,
    replica: config.replica || hostname(),
  };
  const stopping = new AbortController();
  let wired: Wired | undefined;
  const started = retryUntilSetUp(
    async () => {
      wired = await connectAndWire(context);
    },
    stopping.signal,
    log,
  );

  return {
    async handle(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
      if (!link.connected || !wired) {
        sendJsonError(
          res,
          'nats_unavailable',
          `map is unavailable: not connected to NATS at ${config.nats}`,
          {
            'retry-after': '1',
          },
        );
        return;
      }
      await wired.requests.handle(req, res, path);
    },
    ready: () => link.connected,
    async drain(drainMs: number): Promise<void> {
      stopping.abort();
      await started;
      await Promise.all([wired?.worker.drain(drainMs), wired?.requests.queued(drainMs)]);
    },
    async close(): Promise<void> {
      stopping.abort();
      await started;
      if (!wired) return;
      await wired.worker.close();
      wired.grace.close();
      wired.cancellations.close();
      wired.publisher.close();
      await wired.nc.drain().catch(() => wired?.nc.close());
    },
  };
}

/** Tries `setUp` until it succeeds or the proxy stops, waiting 250 ms doubling to 5 s between tries. */
async function retryUntilSetUp(
  setUp: () => Promise<void>,
  stopping: AbortSignal,
  log: Logger,
): Promise<void> {
  let wait = 250;
  while (!stopping.aborted) {
    try {
      await setUp();
      return;
    } catch (err) {
      log.warn({ err: errorMessage(err), retryMs: wait }, 'map not ready: cannot set up NATS JetStream');
      await sleep(wait, undefined, { signal: stopping }).catch(() => {});
      wait = Math.min(wait * 2, 5_000);
    }
  }
}

/** Connects, makes sure the topology exists (as a guest: the operator owns it), and wires map up. */
async function connectAndWire(s: MapContext): Promise<Wired> {
  const { config } = s;
  const nc = await connectNats(config.nats, config.function, s.replica, config.natsCredentials);
  try {
    void s.link.watch(nc);
    const wired = await wire(s, nc);
    s.link.up();
    const { tasksStream, resultsStream } = mapNames(config.function);
    s.log.info({ nats: config.nats, tasks: tasksStream, results: resultsStream }, 'map ready');
    return wired;
  } catch (err) {
    await nc.close().catch(() => {});
    throw err;
  }
}

async function wire(s: MapContext, nc: NatsConnection): Promise<Wired> {
  const { config, deps, metrics, link, log, replica } = s;
  const names = mapNames(config.function);
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const ensureTopology = () => ensureMapTopology(jsm, config.function, streamSettings(config), 'guest');
  await ensureTopology();
  const publisher = new JetStreamPublisher(nc, Math.min(PUBLISH_ACK_TIMEOUT_MS, config.mapAckWait * 1000));
  const cancellations = new Cancellations({
    nc,
    jsm,
    publisher,
    names,
    retentionMs: config.mapRetention * 1000,
    log,
  });
  const grace = new DisconnectGrace({
    nc,
    names,
    graceMs: config.mapCancelAfterDisconnect * 1000,
    cancel: (requestId) => cancellations.cancel(requestId, 'disconnected'),
    log,
  });
  const requests = new MapRequests({
    nc,
    js,
    jsm,
    publisher,
    cancellations,
    grace,
    graceSeconds: config.mapCancelAfterDisconnect,
    names,
    metrics,
    log,
    link,
    maxBody: config.maxBody,
    maxInputs: config.maxMapInputs,
    heartbeatMs: config.heartbeat * 1000,
    outageMs: config.mapAckWait * 1000,
  });
  const worker = new MapWorker({
    nc,
    publisher,
    cancellations,
    names,
    ensureConsumer: async () => {
      await ensureTopology();
    },
    limiter: deps.limiter,
    metrics,
    log,
    replica,
    upstream: new URL(config.mapPath, config.upstream),
    concurrency: config.concurrency,
    ackWaitMs: config.mapAckWait * 1000,
    maxDeliver: config.mapMaxDeliver,
    taskTimeoutMs: config.maxDuration * 1000,
  });
  cancellations.start();
  grace.start();
  worker.start();
  link.on('up', () => worker.reconnected());
  return { nc, publisher, cancellations, grace, requests, worker };
}
