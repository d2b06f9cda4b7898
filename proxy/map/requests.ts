import { randomUUID } from 'node:crypto';
import type { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ConsumerMessages, JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { errorMessage } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import { type MapNames, REQUEST_ID } from '../../common/map-streams.ts';
import { errorEventData, sendJsonError, WireError } from '../../common/wire-errors.ts';
import { BodyTooLargeError, readBody } from '../body.ts';
import type { Cancellations } from './cancellations.ts';
import type { DisconnectGrace } from './disconnect-grace.ts';
import { EventStreamWriter } from './event-stream.ts';
import type { JetStreamPublisher } from './js-publisher.ts';
import type { MapMetrics } from './metrics.ts';
import {
  type AcceptedRecord,
  encodeRecord,
  maxRecordBytes,
  parseBatch,
  type RecordLine,
  taskMsgId,
} from './records.ts';
import { MapRequestError, parseMapBody } from './request-body.ts';
import { ResultSequencer } from './sequencer.ts';

/** A map that cannot go on (NATS unreachable for too long, tasks not storable); clients see `map_failed`. */
export class MapHaltedError extends WireError<'map_failed'> {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_MAP_HALTED', 'map_failed', message, options);
  }
}

export interface MapRequestsOptions {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  publisher: JetStreamPublisher;
  cancellations: Cancellations;
  grace: DisconnectGrace;
  /** --map-cancel-after-disconnect, told to callers in the accepted event. */
  graceSeconds: number;
  names: MapNames;
  metrics: MapMetrics;
  log: Logger;
  /** Emits `down` when the NATS connection drops and `up` when it is back. */
  link: EventEmitter;
  maxBody: number;
  maxInputs: number;
  heartbeatMs: number;
  /** How long a map waits for NATS to come back before failing (--map-ack-wait). */
  outageMs: number;
}

/** Task publishes awaiting their JetStream ack at once: one round trip per input would cap throughput. */
const PUBLISH_WINDOW = 1024;

interface Delivery {
  kind: 'result' | 'error';
  index: number;
  data: string;
}

/** A record stored on its own by an earlier sidecar: its index is in the record. */
function legacyLine(kind: 'result' | 'error', text: string): RecordLine {
  let index = Number.NaN;
  try {
    index = (JSON.parse(text) as { index?: number }).index ?? Number.NaN;
  } catch {
    // Not a record: the sequencer drops a NaN index.
  }
  return { kind, index, text };
}

/** How a map stream ended: every index sent, cancelled (done sent), the caller gone, or failed. */
type StreamEnd = 'done' | 'cancelled' | 'client_left' | 'failed';

/** The public side of map: `POST /_sluice/map`, `GET` and `DELETE /_sluice/map/<requestId>`. */
export class MapRequests {
  readonly #o: MapRequestsOptions;
  /** Maps whose inputs are still being queued. */
  readonly #publishing = new Set<Promise<void>>();

  constructor(options: MapRequestsOptions) {
    this.#o = options;
  }

  /**
   * Resolves once every accepted map has all its inputs queued (or after `ms`): a proxy that
   * stops must not leave a map with inputs that no replica will ever see.
   */
  async queued(ms: number): Promise<void> {
    if (this.#publishing.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...this.#publishing]),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, ms);
      }),
    ]);
    clearTimeout(timer);
  }

  async handle(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    if (path === '/_sluice/map') {
      if (req.method !== 'POST') {
        sendJsonError(res, 'method_not_allowed', 'POST the inputs to /_sluice/map', { allow: 'POST' });
        return;
      }
      await this.#start(req, res);
      return;
    }
    const requestId = decodeURIComponent(path.slice('/_sluice/map/'.length));
    if (req.method !== 'GET' && req.method !== 'DELETE') {
      sendJsonError(
        res,
        'method_not_allowed',
        'GET /_sluice/map/<requestId> resumes a map, DELETE cancels it',
        {
          allow: 'GET, DELETE',
        },
      );
      return;
    }
    if (!REQUEST_ID.test(requestId)) {
      sendJsonError(res, 'map_not_found', `no map request ${JSON.stringify(requestId)}`);
      return;
    }
    const accepted = await this.#accepted(res, requestId);
    if (!accepted) return;
    if (req.method === 'DELETE') await this.#delete(res, requestId);
    else await this.#resume(req, res, accepted);
  }

  async #start(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const { names, log, publisher, cancellations, grace } = this.#o;
    let request: ReturnType<typeof parseMapBody>;
    try {
      const body = await readBody(req, this.#o.maxBody);
      const maxInputBytes = maxRecordBytes(this.#o.nc);
      request = parseMapBody(body, { maxInputs: this.#o.maxInputs, maxInputBytes });
    } catch (err) {
      if (err instanceof BodyTooLargeError || err instanceof MapRequestError) {
        sendJsonError(res, err.wireCode, err.message);
      } else throw err;
      return;
    }
    const requestId = randomUUID();
    const accepted: AcceptedRecord = {
      requestId,
      count: request.inputs.length,
      order: request.order,
      keep: request.keep,
    };
    try {
      // Stored first, so a resume knows the count and order even if the caller drops at once.
      await publisher.publish(`${names.resultsOf(requestId)}.accepted`, encodeRecord(accepted));
    } catch (err) {
      sendJsonError(res, 'nats_unavailable', `could not queue the map: ${errorMessage(err)}`, {
        'retry-after': '1',
      });
      return;
    }
    log.info(
      { requestId, count: accepted.count, order: accepted.order, keep: accepted.keep },
      'map accepted',
    );
    const writer = new EventStreamWriter(res, this.#o.heartbeatMs);
    writer.open();
    writer.event('accepted', this.#acceptedEvent(accepted));

    // Publishing goes on when the caller leaves (it has the grace to come back); a cancel stops it.
    const stopPublishing = new AbortController();
    const stopOnCancel = cancellations.onCancel((id) => {
      if (id === requestId) stopPublishing.abort();
    });
    const published = this.#publishTasks(requestId, request.inputs, stopPublishing.signal);
    this.#publishing.add(published);
    void published.catch(() => {}).finally(() => this.#publishing.delete(published));
    const sequencer = new ResultSequencer<Delivery>({ count: accepted.count, order: accepted.order });
    const unwatch = accepted.keep ? undefined : grace.watch(requestId);
    let end: StreamEnd;
    try {
      end = await this.#stream(requestId, sequencer, writer, res, published);
    } finally {
      unwatch?.();
    }
    if (end === 'cancelled') stopPublishing.abort();
    else if (end !== 'done' && !accepted.keep) grace.left(requestId);
    await published.catch(() => {});
    stopOnCancel();
    // Tasks published while the cancel was on its way were not purged with the rest.
    if (stopPublishing.signal.aborted) await cancellations.purge(requestId);
  }

  /** The stored accepted record of a map, or undefined after answering 404 or 503 itself. */
  async #accepted(res: ServerResponse, requestId: string): Promise<AcceptedRecord | undefined> {
    const { jsm, names } = this.#o;
    try {
      const stored = await jsm.streams.getMessage(names.resultsStream, {
        last_by_subj: `${names.resultsOf(requestId)}.accepted`,
      });
      if (stored) return stored.json<AcceptedRecord>();
      sendJsonError(
        res,
        'map_not_found',
        `no map request ${requestId} in the results kept (--map-retention)`,
      );
    } catch (err) {
      sendJsonError(res, 'nats_unavailable', `could not read the map's results: ${errorMessage(err)}`, {
        'retry-after': '1',
      });
    }
    return undefined;
  }

  /** `accepted` event data: a caller that is not kept learns how long it has to resume. */
  #acceptedEvent(accepted: AcceptedRecord): string {
    return JSON.stringify({
      requestId: accepted.requestId,
      count: accepted.count,
      cancelAfterDisconnectSeconds: accepted.keep ? null : this.#o.graceSeconds,
    });
  }

  /** DELETE /_sluice/map/<requestId>: cancels the map on every replica. */
  async #delete(res: ServerResponse, requestId: string): Promise<void> {
    try {
      await this.#o.cancellations.cancel(requestId, 'deleted');
    } catch (err) {
      sendJsonError(res, 'nats_unavailable', `could not cancel the map: ${errorMessage(err)}`, {
        'retry-after': '1',
      });
      return;
    }
    const body = JSON.stringify({ requestId, cancelled: true });
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }

  async #resume(req: IncomingMessage, res: ServerResponse, accepted: AcceptedRecord): Promise<void> {
    const { requestId } = accepted;
    const header = req.headers['last-event-id'];
    let lastEventId: number | undefined;
    if (header !== undefined && header !== '') {
      lastEventId = /^\d+$/.test(header as string) ? Number(header) : Number.NaN;
      if (!Number.isInteger(lastEventId) || lastEventId >= accepted.count) {
        sendJsonError(
          res,
          'invalid_last_event_id',
          `Last-Event-ID: must be an index from 0 to ${accepted.count - 1}, got ${JSON.stringify(header)}`,
        );
        return;
      }
    }
    const writer = new EventStreamWriter(res, this.#o.heartbeatMs);
    writer.open();
    writer.event('accepted', this.#acceptedEvent(accepted));
    const sequencer = new ResultSequencer<Delivery>({
      count: accepted.count,
      order: accepted.order,
      lastEventId,
    });
    const unwatch = accepted.keep ? undefined : this.#o.grace.watch(requestId);
    let end: StreamEnd;
    try {
      end = await this.#stream(requestId, sequencer, writer, res, Promise.resolve());
    } finally {
      unwatch?.();
    }
    if ((end === 'client_left' || end === 'failed') && !accepted.keep) this.#o.grace.left(requestId);
  }

  /**
   * Publishes every input as a task with at most PUBLISH_WINDOW acks outstanding. A publish
   * that fails (NATS restarting) is retried until the outage limit; msgID makes a retry of a
   * publish that did land harmless.
   */
  async #publishTasks(requestId: string, inputs: string[], signal: AbortSignal): Promise<void> {
    const prefix = this.#o.names.tasksOf(requestId);
    let next = 0;
    const lane = async () => {
      while (next < inputs.length && !signal.aborted) {
        const index = next++;
        await this.#publishWithRetry(
          `${prefix}.${index}`,
          inputs[index]!,
          taskMsgId(requestId, index),
          signal,
        );
      }
    };
    await Promise.all(Array.from({ length: Math.min(PUBLISH_WINDOW, inputs.length) }, lane));
  }

  async #publishWithRetry(subject: string, data: string, msgID: string, signal: AbortSignal): Promise<void> {
    const deadline = performance.now() + this.#o.outageMs;
    let waitMs = 100;
    for (;;) {
      try {
        await this.#o.publisher.publish(subject, data, msgID);
        return;
      } catch (err) {
        if (signal.aborted) return;
        if (performance.now() + waitMs > deadline) {
          throw new MapHaltedError(`could not queue the inputs: ${errorMessage(err)}`, { cause: err });
        }
        await sleep(waitMs);
        waitMs = Math.min(waitMs * 2, 2_000);
      }
    }
  }

  /**
   * Streams the request's records from the results stream (an ordered consumer: JetStream
   * replays from the start, so nothing published before it existed is missed) through the
   * sequencer to the caller, until every index was sent, the map is cancelled, the caller
   * leaves, or the map fails.
   */
  async #stream(
    requestId: string,
    sequencer: ResultSequencer<Delivery>,
    writer: EventStreamWriter,
    res: ServerResponse,
    published: Promise<void>,
  ): Promise<StreamEnd> {
    const { names, metrics, link, log } = this.#o;
    metrics.requestsActive.inc();
    let failure: Error | undefined;
    let outage: NodeJS.Timeout | undefined;
    let messages: ConsumerMessages | undefined;
    const fail = (err: Error) => {
      failure ??= err;
      void messages?.close();
    };
    const onDown = () => {
      outage ??= setTimeout(
        () =>
          fail(
            new MapHaltedError(
              `NATS unreachable for ${Math.round(this.#o.outageMs / 1000)} s (--map-ack-wait); results so far were sent`,
            ),
          ),
        this.#o.outageMs,
      );
    };
    let resubscribe = false;
    const onUp = () => {
      clearTimeout(outage);
      outage = undefined;
      // A restarted server lost the ephemeral consumer: start a new one after the last record
      // seen instead of waiting for missed heartbeats to notice.
      resubscribe = true;
      void messages?.close();
    };
    const onClientGone = () => void messages?.close();
    link.on('down', onDown);
    link.on('up', onUp);
    res.once('close', onClientGone);
    published.catch((err: Error) => fail(err));
    try {
      if (sequencer.complete) {
        this.#done(writer, requestId, sequencer);
        return 'done';
      }
      const kindAt = names.resultsOf(requestId).length + 1;
      // The last record read; its stream sequence (parsed from its reply subject) only matters on a resubscribe.
      let last: JsMsg | undefined;
      while (!failure && !res.destroyed) {
        const nextSeq = last ? last.seq + 1 : 1;
        messages = await this.#openResults(requestId, nextSeq, () => !!failure || res.destroyed);
        if (!messages) break;
        resubscribe = false;
        this.#restartWhenStalled(messages, () => {
          resubscribe = true;
        });
        for await (const msg of messages) {
          last = msg;
          const kind = msg.subject.slice(kindAt);
          if (kind === 'batch' || kind === 'result' || kind === 'error') {
            // `result` and `error`: one record each, as sidecars before batches stored them (a rollout).
            const lines = kind === 'batch' ? parseBatch(msg.string()) : [legacyLine(kind, msg.string())];
            for (const line of lines) {
              const delivery: Delivery = { kind: line.kind, index: line.index, data: line.text };
              for (const event of sequencer.accept(line.index, line.kind === 'error', delivery)) {
                writer.event(event.kind, event.data, event.index);
              }
            }
            if (sequencer.complete) {
              this.#done(writer, requestId, sequencer);
              return 'done';
            }
            if (writer.backedUp) await writer.drained();
          } else if (kind === 'cancelled') {
            // What arrived before the cancel is sent (held results too, in order); the rest is cancelled.
            for (const event of sequencer.flush()) writer.event(event.kind, event.data, event.index);
            this.#done(writer, requestId, sequencer, sequencer.outstanding);
            return 'cancelled';
          }
        }
        if (!resubscribe) break;
      }
      if (res.destroyed) return 'client_left';
      throw failure ?? new MapHaltedError('the results stream ended early');
    } catch (err) {
      if (res.destroyed) return 'client_left';
      // Only a map's own halt has a code of its own; anything else is reported as map_failed too.
      const code = err instanceof MapHaltedError ? err.wireCode : 'map_failed';
      log.warn({ requestId, err: errorMessage(err), outstanding: sequencer.outstanding }, 'map failed');
      writer.event('error', errorEventData(code, errorMessage(err)));
      writer.end();
      return 'failed';
    } finally {
      clearTimeout(outage);
      link.off('down', onDown);
      link.off('up', onUp);
      res.off('close', onClientGone);
      writer.close();
      await messages?.close();
      metrics.requestsActive.dec();
    }
  }

  /**
   * An ordered consumer on the request's records from stream sequence `startSeq`; retried
   * while NATS comes back (the outage timer bounds how long), undefined once `gaveUp()`.
   */
  async #openResults(requestId: string, startSeq: number, gaveUp: () => boolean) {
    const { js, names } = this.#o;
    let waitMs = 100;
    for (;;) {
      try {
        const consumer = await js.consumers.get(names.resultsStream, {
          filter_subjects: `${names.resultsOf(requestId)}.>`,
          opt_start_seq: startSeq,
          // Deleted by the server a minute after its request stops pulling.
          inactive_threshold: 60_000,
        });
        return await consumer.consume({ max_messages: 1024, expires: 5_000 });
      } catch (err) {
        if (gaveUp()) return undefined;
        this.#o.log.debug({ requestId, err: errorMessage(err) }, 'results consumer not ready; retrying');
        await sleep(waitMs);
        waitMs = Math.min(waitMs * 2, 2_000);
      }
    }
  }

  /**
   * nats.js does not always bring an ordered consumer back when the server holding it dies
   * without this connection breaking (a NATS cluster losing a server): after two missed
   * heartbeats the stream resubscribes itself, from the last record read.
   */
  #restartWhenStalled(messages: ConsumerMessages, restart: () => void): void {
    void (async () => {
      for await (const status of messages.status()) {
        if (status.type === 'heartbeats_missed' && status.count >= 2) {
          restart();
          await messages.close();
          return;
        }
      }
    })().catch(() => {});
  }

  #done(
    writer: EventStreamWriter,
    requestId: string,
    sequencer: ResultSequencer<Delivery>,
    cancelled?: number,
  ): void {
    const { count, failed } = sequencer;
    const summary =
      cancelled === undefined ? { requestId, count, failed } : { requestId, count, failed, cancelled };
    writer.event('done', JSON.stringify(summary));
    writer.end();
  }
}
