/**
 * The one place that makes a function's map topology (the two streams and the shared worker
 * consumer of common/map-streams.ts) exist on a NATS server, and removes it. The operator owns
 * it in a cluster; `sluice proxy` makes what is missing for local runs. Both call ensureMapTopology,
 * each with its role, so names, configs and comparisons are the same for both.
 */
import {
  type ConsumerConfig,
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamManager,
  type StreamConfig,
} from '@nats-io/jetstream';
import {
  type MapStreamSettings,
  mapNames,
  resultsStreamConfig,
  tasksStreamConfig,
  workerConsumerConfig,
} from './map-streams.ts';

/**
 * `owner` (the operator): streams and consumer are made equal to their configs.
 * `guest` (a proxy): creates what is missing and never changes the streams (in a cluster the
 * operator owns them); on the consumer it keeps in step only the delivery settings its own
 * worker counts on (ack_wait, max_deliver: the last delivery is reported, not run).
 */
export type TopologyRole = 'owner' | 'guest';

const GUEST_CONSUMER_FIELDS = ['ack_wait', 'max_deliver'] as const;

/** True when every field `want` names has the same value in `have` (the server adds its own). */
export function configCovers(want: object, have: object): boolean {
  return Object.entries(want).every(([k, v]) => {
    const h = (have as Record<string, unknown>)[k];
    if (Array.isArray(v)) return JSON.stringify(v) === JSON.stringify(h);
    return v === h;
  });
}

const isApiError = (err: unknown, code: number) => err instanceof JetStreamApiError && err.code === code;

/** info, or undefined when the server says it does not exist. */
async function lookUp<T>(read: () => Promise<T>, missing: number): Promise<T | undefined> {
  try {
    return await read();
  } catch (err) {
    if (!isApiError(err, missing)) throw err;
    return undefined;
  }
}

async function ensureStream(
  jsm: JetStreamManager,
  want: Partial<StreamConfig> & { name: string },
  role: TopologyRole,
): Promise<boolean> {
  let info = await lookUp(() => jsm.streams.info(want.name), JetStreamApiCodes.StreamNotFound);
  if (!info) {
    try {
      await jsm.streams.add(want);
      return true;
    } catch (err) {
      // Another party (a replica, the operator) made it first: fine, as long as it is there now.
      info = await jsm.streams.info(want.name).catch(() => {
        throw err;
      });
    }
  }
  if (role === 'guest' || configCovers(want, info.config)) return false;
  await jsm.streams.update(want.name, want);
  return true;
}

async function ensureConsumer(
  jsm: JetStreamManager,
  stream: string,
  want: Partial<ConsumerConfig> & { durable_name: string },
  role: TopologyRole,
): Promise<boolean> {
  const name = want.durable_name;
  let info = await lookUp(() => jsm.consumers.info(stream, name), JetStreamApiCodes.ConsumerNotFound);
  if (!info) {
    try {
      await jsm.consumers.add(stream, want);
      return true;
    } catch (err) {
      info = await jsm.consumers.info(stream, name).catch(() => {
        throw err;
      });
    }
  }
  const managed =
    role === 'owner' ? want : Object.fromEntries(GUEST_CONSUMER_FIELDS.map((field) => [field, want[field]]));
  if (configCovers(managed, info.config)) return false;
  await jsm.consumers.update(stream, name, managed);
  return true;
}

/** Makes the streams and the worker consumer of `fn` (`namespace/name`) exist; true when anything was written. */
export async function ensureMapTopology(
  jsm: JetStreamManager,
  fn: string,
  settings: MapStreamSettings,
  role: TopologyRole,
): Promise<boolean> {
  let wrote = false;
  for (const config of [tasksStreamConfig(fn, settings), resultsStreamConfig(fn, settings)]) {
    if (await ensureStream(jsm, config, role)) wrote = true;
  }
  const consumer = workerConsumerConfig(fn, settings) as Partial<ConsumerConfig> & { durable_name: string };
  if (await ensureConsumer(jsm, mapNames(fn).tasksStream, consumer, role)) wrote = true;
  return wrote;
}

/** Deletes both streams (the consumer goes with the tasks stream); missing ones are fine. */
export async function deleteMapTopology(jsm: JetStreamManager, fn: string): Promise<void> {
  const names = mapNames(fn);
  for (const stream of [names.tasksStream, names.resultsStream]) {
    await lookUp(() => jsm.streams.delete(stream), JetStreamApiCodes.StreamNotFound);
  }
}
