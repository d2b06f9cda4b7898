import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  type Consumer,
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
} from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { errorMessage } from '../../common/errors.ts';
import {
  type MapStreamSettings,
  mapNames,
  resultsStreamConfig,
  tasksStreamConfig,
  workerConsumerConfig,
} from '../../common/map-streams.ts';
import { sendJsonError } from '../http-errors.ts';
import type { MapDependencies, MapService } from '../map-service.ts';
import { createMapMetrics } from './metrics.ts';
import { MapRequests } from './requests.ts';
import { MapWorker } from './worker.ts';

function isApiError(err: unknown, code: number): boolean {
  return err instanceof JetStreamApiError && err.code === code;
}

/** Reconnect waits: 250 ms doubling to 5 s, with jitter so replicas do not reconnect in step. */
function backoff(): () => number {
  let attempt = 0;
  return () => {
    const base = Math.min(250 * 2 ** attempt++, 5_000);
    return base / 2 + Math.random() * (base / 2);
  };
}

/**
 * Map fan-out over NATS JetStream (SPEC §2). Returns at once: the connection is made in the
 * background, so plain streaming works while NATS is unreachable; until it is connected and
 * the streams exist, ready() is false and map requests get 503.
 */
export async function startMap({
  config,
  limiter,
  registry,
  log: parentLog,
}: MapDependencies): Promise<MapService> {
  const log = parentLog.child({ part: 'map' });
  const names = mapNames(config.function);
  const settings: MapStreamSettings = {
    ackWaitSeconds: config.mapAckWait,
    maxDeliver: config.mapMaxDeliver,
    retentionSeconds: config.mapRetention,
  };
  const metrics = createMapMetrics(registry);
  const replica = config.replica || hostname();
  const link = new EventEmitter();
  let connected = false;
  let requests: MapRequests | undefined;
  let worker: MapWorker | undefined;
  let nc: NatsConnection | undefined;
  const stopping = new AbortController();

  const setUp = async () => {
    const delay = backoff();
    nc = await connect({
      servers: config.nats,
      name: `sluice-proxy ${config.function} ${replica}`,
      reconnect: true,
      maxReconnectAttempts: -1,
      reconnectDelayHandler: delay,
      pingInterval: 10_000,
      maxPingOut: 2,
      // A stack trace captured per request (every JetStream publish) was the worker's top cost.
      noAsyncTraces: true,
    });
    const conn = nc;
    const js = jetstream(conn);
    const jsm = await jetstreamManager(conn);
    void watchStatus(conn);
    const ensureConsumer = async (): Promise<Consumer> => {
      await ensureStreams(jsm, config.function, settings);
      const want = workerConsumerConfig(config.function, settings);
      try {
        const info = await jsm.consumers.info(names.tasksStream, names.workerConsumer);
        if (info.config.ack_wait !== want.ack_wait || info.config.max_deliver !== want.max_deliver) {
          await jsm.consumers.update(names.tasksStream, names.workerConsumer, {
            ack_wait: want.ack_wait,
            max_deliver: want.max_deliver,
          });
        }
      } catch (err) {
        if (!isApiError(err, JetStreamApiCodes.ConsumerNotFound)) throw err;
        await jsm.consumers.add(names.tasksStream, want).catch(async (addErr) => {
          // Another replica created it first: fine, as long as it is there now.
          await jsm.consumers.info(names.tasksStream, names.workerConsumer).catch(() => {
            throw addErr;
          });
        });
      }
      return js.consumers.get(names.tasksStream, names.workerConsumer);
    };
    let ensured: Consumer | undefined = await ensureConsumer();
    requests = new MapRequests({
      nc: conn,
      js,
      jsm,
      names,
      metrics,
      log,
      link,
      maxBody: config.maxBody,
      maxInputs: config.maxMapInputs,
      heartbeatMs: config.heartbeat * 1000,
      outageMs: config.mapAckWait * 1000,
    });
    worker = new MapWorker({
      nc: conn,
      js,
      names,
      // The first lookup is the one just made; later ones (after trouble) check everything again.
      consumer: async () => {
        const consumer = ensured ?? (await ensureConsumer());
        ensured = undefined;
        return consumer;
      },
      limiter,
      metrics,
      log,
      replica,
      upstream: new URL(config.mapPath, config.upstream),
      concurrency: config.concurrency,
      ackWaitMs: config.mapAckWait * 1000,
      maxDeliver: config.mapMaxDeliver,
      taskTimeoutMs: config.maxDuration * 1000,
      retentionMs: config.mapRetention * 1000,
    });
    worker.start();
    connected = true;
    log.info({ nats: config.nats, tasks: names.tasksStream, results: names.resultsStream }, 'map ready');
  };

  const watchStatus = async (conn: NatsConnection) => {
    for await (const status of conn.status()) {
      if (status.type === 'disconnect') {
        connected = false;
        log.warn({ server: status.server }, 'NATS disconnected; map requests get 503 until it is back');
        link.emit('down');
      } else if (status.type === 'reconnect') {
        connected = true;
        log.info({ server: status.server }, 'NATS reconnected');
        link.emit('up');
      }
    }
  };

  const started = (async () => {
    let wait = 250;
    while (!stopping.signal.aborted) {
      try {
        await setUp();
        return;
      } catch (err) {
        log.warn({ err: errorMessage(err), retryMs: wait }, 'map not ready: cannot set up NATS JetStream');
        await nc?.close().catch(() => {});
        nc = undefined;
        await sleep(wait, undefined, { signal: stopping.signal }).catch(() => {});
        wait = Math.min(wait * 2, 5_000);
      }
    }
  })();

  return {
    async handle(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
      if (!connected || !requests) {
        sendJsonError(
          res,
          503,
          'nats_unavailable',
          `map is unavailable: not connected to NATS at ${config.nats}`,
          {
            'retry-after': '1',
          },
        );
        return;
      }
      await requests.handle(req, res, path);
    },
    ready: () => connected,
    async close(): Promise<void> {
      stopping.abort();
      await started;
      await worker?.close();
      await nc?.drain().catch(() => nc?.close());
    },
  };
}

/** Creates the function's streams when missing (local runs); in a cluster the operator owns them. */
async function ensureStreams(jsm: JetStreamManager, fn: string, settings: MapStreamSettings): Promise<void> {
  for (const config of [tasksStreamConfig(fn), resultsStreamConfig(fn, settings)]) {
    try {
      await jsm.streams.info(config.name);
    } catch (err) {
      if (!isApiError(err, JetStreamApiCodes.StreamNotFound)) throw err;
      await jsm.streams.add(config).catch(async (addErr) => {
        await jsm.streams.info(config.name).catch(() => {
          throw addErr;
        });
      });
    }
  }
}
