import {
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamManager,
  jetstreamManager,
} from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { SluiceError } from '../common/errors.ts';

const isMissing = (err: unknown, code: number) => err instanceof JetStreamApiError && err.code === code;

import type { Logger } from '../common/log.ts';
import {
  type MapStreamSettings,
  mapNames,
  resultsStreamConfig,
  tasksStreamConfig,
  workerConsumerConfig,
} from '../common/map-streams.ts';
import type { FunctionView } from './function.ts';

/** NATS trouble: always worth a retry (the server restarts, a leader moves). */
export class StreamError extends SluiceError {
  readonly retryable = true;

  constructor(message: string, cause: unknown) {
    super('ERR_MAP_STREAMS', message, { cause });
  }
}

export function streamSettings(fn: FunctionView): MapStreamSettings {
  const { map } = fn.spec;
  return {
    ackWaitSeconds: map.ackWaitSeconds,
    maxDeliver: map.maxDeliver,
    retentionSeconds: map.resultRetentionSeconds,
  };
}

/** True when every field `want` names has the same value in `have` (the server adds its own). */
function covers(want: object, have: object): boolean {
  return Object.entries(want).every(([k, v]) => {
    const h = (have as Record<string, unknown>)[k];
    if (Array.isArray(v)) return JSON.stringify(v) === JSON.stringify(h);
    return v === h;
  });
}

/**
 * Keeps each map-enabled function's JetStream streams (tasks, results) and shared worker
 * consumer equal to its spec.map, with names and configs from common/map-streams.ts, and
 * deletes them when the function goes. A function whose streams were already made for its
 * current generation is not asked about again, so a steady state sends NATS nothing.
 */
export class StreamManager {
  private readonly url: string;
  private readonly log: Logger;
  private connection: Promise<{ nc: NatsConnection; jsm: JetStreamManager }> | undefined;
  private readonly ensured = new Map<string, string>();

  constructor(url: string, log: Logger) {
    this.url = url;
    this.log = log;
  }

  private manager(): Promise<JetStreamManager> {
    this.connection ??= (async () => {
      const nc = await connect({ servers: this.url, name: 'sluice-operator', maxReconnectAttempts: -1 });
      return { nc, jsm: await jetstreamManager(nc) };
    })().catch((err) => {
      this.connection = undefined;
      throw err;
    });
    return this.connection.then((c) => c.jsm);
  }

  private static fnName(fn: FunctionView): string {
    return `${fn.metadata.namespace}/${fn.metadata.name}`;
  }

  /** Creates or updates the streams and consumer; true when anything was written to NATS. */
  async ensure(fn: FunctionView): Promise<boolean> {
    const name = StreamManager.fnName(fn);
    const settings = streamSettings(fn);
    const stamp = `${fn.metadata.uid}/${JSON.stringify(settings)}`;
    if (this.ensured.get(name) === stamp) return false;
    let wrote = false;
    try {
      const jsm = await this.manager();
      for (const config of [tasksStreamConfig(name), resultsStreamConfig(name, settings)]) {
        try {
          const info = await jsm.streams.info(config.name);
          if (!covers(config, info.config)) {
            await jsm.streams.update(config.name, config);
            wrote = true;
          }
        } catch (err) {
          if (!isMissing(err, JetStreamApiCodes.StreamNotFound)) throw err;
          await jsm.streams.add(config);
          wrote = true;
        }
      }
      const names = mapNames(name);
      const consumer = workerConsumerConfig(name, settings);
      try {
        const info = await jsm.consumers.info(names.tasksStream, names.workerConsumer);
        if (!covers(consumer, info.config)) {
          await jsm.consumers.update(names.tasksStream, names.workerConsumer, consumer);
          wrote = true;
        }
      } catch (err) {
        if (!isMissing(err, JetStreamApiCodes.ConsumerNotFound)) throw err;
        await jsm.consumers.add(names.tasksStream, consumer);
        wrote = true;
      }
    } catch (err) {
      throw new StreamError(`cannot create the map streams of ${name}: ${(err as Error).message}`, err);
    }
    this.ensured.set(name, stamp);
    if (wrote) this.log.info({ function: name }, 'map streams applied');
    return wrote;
  }

  /** Deletes both streams (the consumer goes with the tasks stream); missing ones are fine. */
  async remove(fn: FunctionView): Promise<void> {
    const name = StreamManager.fnName(fn);
    const names = mapNames(name);
    try {
      const jsm = await this.manager();
      for (const stream of [names.tasksStream, names.resultsStream]) {
        try {
          await jsm.streams.delete(stream);
        } catch (err) {
          if (!isMissing(err, JetStreamApiCodes.StreamNotFound)) throw err;
        }
      }
    } catch (err) {
      throw new StreamError(`cannot delete the map streams of ${name}: ${(err as Error).message}`, err);
    }
    this.ensured.delete(name);
  }

  async close(): Promise<void> {
    const connection = await this.connection?.catch(() => undefined);
    await connection?.nc.drain();
  }
}
