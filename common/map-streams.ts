/**
 * Names and JetStream configuration of a function's map streams. Pure: both the operator
 * (which creates, updates and deletes the streams from `spec.map`) and `sluice proxy` (which
 * creates them when missing, for local runs) derive them from here, so they always agree.
 *
 * For the function `<ns>/<name>` (both RFC 1123 labels: `[a-z0-9-]`, at most 63 characters):
 *
 *   tasks stream    SLUICE_TASKS_<ns>_<name>     work-queue retention, file storage
 *     subjects      sluice.<ns>.<name>.tasks.>   one message per input:
 *                   sluice.<ns>.<name>.tasks.<requestId>.<index>, body = the input as JSON; a task
 *                   handed back without a counted attempt (proxy/map/task.ts) is published
 *                   again as ….<requestId>.<index>.<attemptsBefore>
 *   results stream  SLUICE_RESULTS_<ns>_<name>   limits retention, max_age = resultRetentionSeconds
 *     subjects      sluice.<ns>.<name>.results.> per request, sluice.<ns>.<name>.results.<requestId>.…:
 *                   `accepted` (count, order, keep), `batch` (result and error records, the SSE
 *                   data of those events, one a line: proxy/map/records.ts) and `cancelled`;
 *                   a resume replays `<requestId>.>`
 *   cancel subject  sluice.<ns>.<name>.cancel    core NATS: a cancelled request (every replica aborts its tasks)
 *   watch subject   sluice.<ns>.<name>.watch     core NATS: `watching <requestId>` from each live map
 *                                                stream, `left <requestId>` when one breaks (the grace
 *                                                of cancelAfterDisconnectSeconds starts)
 *   consumer        sluice-workers               one durable pull consumer, shared by all replicas
 *
 * Labels never contain `_` or `.`, so `_` separates them in stream names and `.` in subjects
 * without any possible collision between, say, `a-b/c` and `a/b-c`; neither contains a
 * character NATS forbids in a stream name (`.`, `*`, `>`, whitespace, slashes).
 */
import type { ConsumerConfig, StreamConfig } from '@nats-io/jetstream';
import { SluiceError } from './errors.ts';

export interface MapStreamSettings {
  /** A task not acknowledged by then is handed to another replica. */
  ackWaitSeconds: number;
  /** Attempts before an input is reported failed. */
  maxDeliver: number;
  /** How long results (and so resumable map streams) are kept. */
  retentionSeconds: number;
  /**
   * Copies JetStream keeps of each stream (1, or 3 on a NATS cluster: one server may fail
   * without losing a task or a result). Only the operator sets more than 1; a proxy creating
   * missing streams for a local run makes them with 1.
   */
  replicas?: number;
}

export interface MapNames {
  tasksStream: string;
  resultsStream: string;
  /** Filter of every task of the function. */
  tasksSubjects: string;
  resultsSubjects: string;
  cancelSubject: string;
  watchSubject: string;
  workerConsumer: string;
  /** Prefix of a request's tasks (add `.<index>`; add `.>` to filter or purge them). */
  tasksOf: (requestId: string) => string;
  /** Prefix of a request's records (add `.<kind>`; add `.>` to replay them). */
  resultsOf: (requestId: string) => string;
}

export class MapNameError extends SluiceError {
  constructor(message: string) {
    super('ERR_MAP_NAME', message);
  }
}

const LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
/** Request ids are minted by the proxy (UUIDs); anything else is refused before it reaches a subject. */
export const REQUEST_ID = /^[A-Za-z0-9-]{1,64}$/;

export const WORKER_CONSUMER = 'sluice-workers';

/** `function` is `namespace/name`, as in `--function` and the CRD's metadata. */
export function mapNames(fn: string): MapNames {
  const [namespace, name, ...rest] = fn.split('/');
  if (namespace === undefined || name === undefined || rest.length > 0) {
    throw new MapNameError(`function must be namespace/name, got ${JSON.stringify(fn)}`);
  }
  for (const label of [namespace, name]) {
    if (!LABEL.test(label)) {
      throw new MapNameError(`${JSON.stringify(label)} in ${JSON.stringify(fn)} is not an RFC 1123 label`);
    }
  }
  const prefix = `sluice.${namespace}.${name}`;
  const checked = (requestId: string) => {
    if (!REQUEST_ID.test(requestId)) throw new MapNameError(`bad request id ${JSON.stringify(requestId)}`);
    return requestId;
  };
  return {
    tasksStream: `SLUICE_TASKS_${namespace}_${name}`,
    resultsStream: `SLUICE_RESULTS_${namespace}_${name}`,
    tasksSubjects: `${prefix}.tasks.>`,
    resultsSubjects: `${prefix}.results.>`,
    cancelSubject: `${prefix}.cancel`,
    watchSubject: `${prefix}.watch`,
    workerConsumer: WORKER_CONSUMER,
    tasksOf: (requestId) => `${prefix}.tasks.${checked(requestId)}`,
    resultsOf: (requestId) => `${prefix}.results.${checked(requestId)}`,
  };
}

const NANOS_PER_SECOND = 1_000_000_000;
const nanos = (seconds: number) => Math.round(seconds * NANOS_PER_SECOND);

/**
 * Work-queue retention: a task is gone once a replica acknowledges it (or once the requester
 * purges a cancelled request's tasks). No max_age: a long map may queue tasks for longer than
 * results are kept.
 */
export function tasksStreamConfig(
  fn: string,
  settings: Pick<MapStreamSettings, 'replicas'> = {},
): Partial<StreamConfig> & { name: string } {
  const names = mapNames(fn);
  return {
    name: names.tasksStream,
    description: `Sluice map tasks of ${fn}`,
    subjects: [names.tasksSubjects],
    retention: 'workqueue',
    storage: 'file',
    discard: 'old',
    max_age: 0,
    num_replicas: settings.replicas ?? 1,
    duplicate_window: nanos(120),
  };
}

/**
 * Limits retention, kept for `retentionSeconds` so a client can resume. The duplicate window
 * (results are published with msgID `<requestId>.<index>`) covers every redelivery of a slow
 * task, so a result produced twice is stored once; it may not exceed max_age.
 */
export function resultsStreamConfig(
  fn: string,
  settings: MapStreamSettings,
): Partial<StreamConfig> & { name: string } {
  const names = mapNames(fn);
  const redeliverySpan = settings.ackWaitSeconds * (settings.maxDeliver + 1);
  return {
    name: names.resultsStream,
    description: `Sluice map results of ${fn}`,
    subjects: [names.resultsSubjects],
    retention: 'limits',
    storage: 'file',
    discard: 'old',
    max_age: nanos(settings.retentionSeconds),
    num_replicas: settings.replicas ?? 1,
    duplicate_window: nanos(Math.min(settings.retentionSeconds, Math.max(120, redeliverySpan))),
  };
}

/**
 * The durable pull consumer every replica shares. The server may deliver a task one more time
 * than `maxDeliver`: the replica that gets that extra delivery publishes the `error` result
 * instead of running it again, so an input whose last attempt died with its replica is still
 * reported rather than silently dropped.
 */
export function workerConsumerConfig(fn: string, settings: MapStreamSettings): Partial<ConsumerConfig> {
  const names = mapNames(fn);
  return {
    durable_name: names.workerConsumer,
    description: `Sluice map workers of ${fn}`,
    ack_policy: 'explicit',
    deliver_policy: 'all',
    ack_wait: nanos(settings.ackWaitSeconds),
    max_deliver: settings.maxDeliver + 1,
    max_ack_pending: -1,
    filter_subject: names.tasksSubjects,
  };
}
