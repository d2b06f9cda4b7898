import { setTimeout as sleep } from 'node:timers/promises';
import type { Msg, NatsConnection } from '@nats-io/transport-node';
import { errorMessage } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import type { MapNames } from '../../common/map-streams.ts';
import { functionAccepts } from '../admin.ts';
import type { ConcurrencyLimiter, Release } from '../limiter.ts';
import { type Call, type CallOutcome, FunctionCaller } from './call-function.ts';
import type { Cancellations } from './cancellations.ts';
import type { JetStreamPublisher } from './js-publisher.ts';
import type { MapMetrics, TaskOutcome } from './metrics.ts';
import {
  type ErrorRecord,
  encodeRecord,
  maxRecordBytes,
  requeuedTaskMsgId,
  resultRecordText,
  type TaskError,
} from './records.ts';
import { ResultWriter } from './result-writer.ts';
import { attemptOf, parseTask, requeueSubject, type TaskInfo } from './task.ts';
import { TaskPuller } from './task-puller.ts';

export interface WorkerOptions {
  nc: NatsConnection;
  publisher: JetStreamPublisher;
  cancellations: Cancellations;
  names: MapNames;
  /** Makes the shared durable consumer exist (again); retried until it works. */
  ensureConsumer: () => Promise<void>;
  limiter: ConcurrencyLimiter;
  metrics: MapMetrics;
  log: Logger;
  replica: string;
  upstream: URL;
  concurrency: number;
  ackWaitMs: number;
  maxDeliver: number;
  /** Hard cap on one attempt (--max-duration). */
  taskTimeoutMs: number;
}

const ACK = Uint8Array.of(43, 65, 67, 75); // +ACK
const NAK = Uint8Array.of(45, 78, 65, 75); // -NAK
const WPI = Uint8Array.of(43, 87, 80, 73); // +WPI: in progress, restart the ack wait

type Stage = 'waiting' | 'running' | 'finishing';

/** A task this replica holds: from delivery until it is acked, nakked or handed back. */
interface Held {
  msg: Msg;
  info: TaskInfo;
  stage: Stage;
  /** When its ack wait last restarted (delivery or an in-progress ack). */
  touched: number;
  started: number;
  call?: Call;
}

/** Function down: probe every 100 ms doubling to 1 s until it accepts connections again. */
const PROBE_FIRST_MS = 100;
const PROBE_MAX_MS = 1_000;

/**
 * Takes this replica's share of the function's map tasks from the shared durable consumer:
 * one limiter slot per task (the slots plain streams use too), the input POSTed to the
 * function, the result stored in the results stream, then the task acked. While it holds a
 * task, in-progress acks keep it from going to another replica; a replica that dies stops
 * sending them, so its tasks go elsewhere after ack wait.
 *
 * A function that refuses connections (crashed, restarting, not started) stops this replica
 * from taking tasks until it accepts them again; the tasks it holds go back to the queue at
 * once without counting as an attempt (task.ts), so the other replicas take them.
 */
export class MapWorker {
  readonly #o: WorkerOptions;
  readonly #caller: FunctionCaller;
  readonly #puller: TaskPuller;
  readonly #results: ResultWriter;
  readonly #taskPrefix: string;
  readonly #replicaJson: string;
  readonly #held = new Set<Held>();
  /** Held tasks not yet finishing (waiting for a slot or running). */
  #busyCount = 0;
  /** Aborted when held tasks waiting for a slot must go back (function down, draining). */
  #holdBack = new AbortController();
  #functionDown = false;
  #draining = false;
  #stopped = false;
  #sweep: NodeJS.Timeout | undefined;
  #probe: Promise<void> | undefined;
  #ensuring: Promise<void> | undefined;
  #onIdle: (() => void) | undefined;
  #emptied: (() => void) | undefined;

  constructor(options: WorkerOptions) {
    this.#o = options;
    this.#caller = new FunctionCaller({
      url: options.upstream,
      maxSockets: options.concurrency,
      maxBytes: () => maxRecordBytes(options.nc),
      timeoutMs: options.taskTimeoutMs,
    });
    this.#taskPrefix = options.names.tasksSubjects.slice(0, -1); // `sluice.<ns>.<name>.tasks.`
    this.#replicaJson = JSON.stringify(options.replica);
    this.#results = new ResultWriter({
      publisher: options.publisher,
      names: options.names,
      maxBytes: () => maxRecordBytes(options.nc),
      giveUpMs: options.ackWaitMs,
      stopped: () => this.#stopped,
      log: options.log,
    });
    this.#puller = new TaskPuller({
      nc: options.nc,
      send: (subject, data, reply) => options.publisher.send(subject, data, reply),
      stream: options.names.tasksStream,
      consumer: options.names.workerConsumer,
      taskPrefix: this.#taskPrefix,
      free: () => this.#free(),
      minBatch: Math.max(1, Math.floor(options.concurrency / 4)),
      expiresMs: 5_000,
      onTask: (msg) => this.#receive(msg),
      onMissing: () => this.#ensureConsumer(),
    });
  }

  start(): void {
    this.#o.cancellations.onCancel((requestId) => this.#cancelled(requestId));
    const tick = Math.max(50, Math.min(1_000, Math.floor(this.#heartbeatMs() / 2)));
    this.#sweep = setInterval(() => this.#sweepHeld(), tick);
    this.#puller.start();
  }

  /** The NATS connection came back: pulls in flight died with the old one. */
  reconnected(): void {
    this.#puller.reset();
  }

  /**
   * SIGTERM: takes no more tasks at once and hands back those still waiting for a slot; the
   * running ones get until `drainMs` to finish; what still runs then goes back to the queue.
   */
  async drain(drainMs: number): Promise<void> {
    this.#draining = true;
    this.#puller.pause();
    this.#holdBack.abort();
    if (this.#busy() > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((resolve) => {
          this.#onIdle = resolve;
        }),
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, drainMs);
        }),
      ]);
      clearTimeout(timer);
      this.#onIdle = undefined;
    }
    for (const held of this.#held) held.call?.abort('shutdown');
  }

  /** Stops for good: hands back whatever is held and waits for its hand-backs. */
  async close(): Promise<void> {
    if (!this.#draining) await this.drain(0);
    this.#stopped = true;
    this.#puller.stop();
    await this.#whenEmpty(5_000);
    clearInterval(this.#sweep);
    this.#caller.destroy();
  }

  /** Tasks that hold or wait for the function (finishing ones only wait for NATS). */
  #busy(): number {
    return this.#busyCount;
  }

  /** Done with the function: only NATS is left to wait for. */
  #finishing(held: Held): void {
    if (held.stage !== 'finishing') this.#busyCount--;
    held.stage = 'finishing';
  }

  #free(): number {
    if (this.#functionDown || this.#draining) return 0;
    return this.#o.concurrency - this.#busy();
  }

  #heartbeatMs(): number {
    return Math.max(100, Math.floor(this.#o.ackWaitMs / 4));
  }

  #receive(msg: Msg): void {
    const info = parseTask(msg, this.#taskPrefix);
    if (!info) {
      this.#o.log.error({ subject: msg.subject }, 'map task with a malformed subject; dropping it');
      this.#o.publisher.send(msg.reply!, '+TERM malformed subject');
      return;
    }
    const now = performance.now();
    const held: Held = { msg, info, stage: 'waiting', touched: now, started: now };
    this.#held.add(held);
    this.#busyCount++;
    if (info.deliveryCount > 1) this.#o.metrics.redeliveries.inc();
    void this.#run(held).catch((err: unknown) => {
      this.#o.log.error({ err, subject: msg.subject }, 'map task failed unexpectedly');
      this.#release(held);
    });
  }

  async #run(held: Held): Promise<void> {
    const { info } = held;
    if (this.#o.cancellations.has(info.requestId)) return this.#end(held, 'cancelled', ACK);
    if (this.#functionDown || this.#draining) return this.#handBack(held);
    const release = this.#o.limiter.tryAcquire() ?? (await this.#slot());
    if (!release) return this.#handBack(held);
    let outcome: CallOutcome;
    try {
      if (this.#o.cancellations.has(info.requestId)) return this.#end(held, 'cancelled', ACK);
      if (this.#functionDown || this.#draining) return this.#handBack(held);
      const attempt = attemptOf(info);
      if (attempt > this.#o.maxDeliver) {
        // The consumer allows one delivery more than maxDeliver so that an input whose last
        // attempt died with its replica is reported instead of silently dropped.
        return await this.#finish(
          held,
          'error',
          this.#errorText(info.index, this.#lostError(), this.#o.maxDeliver),
        );
      }
      held.stage = 'running';
      held.call = this.#caller.call(held.msg.data);
      outcome = await held.call.done;
      held.call = undefined;
    } finally {
      release();
    }
    return this.#settle(held, outcome);
  }

  /** Waits (FIFO, with plain streams) for a slot; undefined when the task must go back instead. */
  async #slot(): Promise<Release | undefined> {
    try {
      return await this.#o.limiter.acquire(2 ** 31 - 1, this.#holdBack.signal);
    } catch {
      return undefined;
    }
  }

  async #settle(held: Held, outcome: CallOutcome): Promise<void> {
    const { info } = held;
    const attempt = attemptOf(info);
    const ms = Math.round(performance.now() - held.started);
    switch (outcome.kind) {
      case 'ok':
        return this.#finish(
          held,
          'result',
          resultRecordText(info.index, outcome.outputJson, this.#replicaJson, ms),
        );
      case 'rejected': // 4xx: the input itself is wrong, another attempt cannot help
        return this.#finish(held, 'error', this.#errorText(info.index, outcome.error, attempt));
      case 'too_large':
        return this.#finish(
          held,
          'error',
          this.#errorText(info.index, this.#tooLarge(outcome.bytes), attempt),
        );
      case 'unreachable':
        this.#down(outcome.message);
        return this.#handBack(held);
      case 'aborted':
        if (this.#o.cancellations.has(info.requestId)) return this.#end(held, 'cancelled', ACK);
        return this.#handBack(held);
      case 'failed':
        if (attempt < this.#o.maxDeliver) {
          // 5xx, a broken call or a timeout: back off a little, then any replica may retry it.
          const delayMs = Math.min(250 * 2 ** (attempt - 1), 5_000);
          return this.#end(
            held,
            'retried',
            new TextEncoder().encode(`-NAK {"delay":${delayMs * 1_000_000}}`),
          );
        }
        return this.#finish(held, 'error', this.#errorText(info.index, outcome.error, attempt));
    }
  }

  #errorText(index: number, error: TaskError, attempts: number): string {
    const record: ErrorRecord = { index, error, attempts };
    return encodeRecord(record);
  }

  #lostError(): TaskError {
    return {
      status: 504,
      message: `no result after ${this.#o.maxDeliver} attempts: the replica running the last one stopped answering (no ack within ${this.#o.ackWaitMs / 1000} s)`,
    };
  }

  #tooLarge(bytes: number): TaskError {
    return {
      status: 413,
      message: `result is ${bytes} bytes or more, larger than the ${maxRecordBytes(this.#o.nc)} bytes a NATS message can carry`,
    };
  }

  /**
   * Stores the record (ResultWriter: with the others of its request finishing now), then acks
   * the task. A record that cannot be stored is not acked, so the task runs again after ack
   * wait; a task that ran twice has two records, and the requester sends the first.
   */
  async #finish(held: Held, kind: 'result' | 'error', text: string): Promise<void> {
    const { info } = held;
    this.#finishing(held);
    this.#puller.fill();
    let record = text;
    const max = maxRecordBytes(this.#o.nc);
    if (record.length * 3 > max && Buffer.byteLength(record) > max) {
      kind = 'error';
      record = this.#errorText(info.index, this.#tooLarge(Buffer.byteLength(record)), attemptOf(info));
    }
    const stored = await this.#results.store(info.requestId, { kind, index: info.index, text: record });
    if (stored) this.#end(held, kind === 'error' ? 'failed' : 'ok', ACK);
    else this.#release(held, 'retried');
  }

  /**
   * Back to the queue without counting an attempt: published again with the attempts so far
   * in its subject, then the old message acked. If that cannot be stored, a plain nak (which
   * JetStream counts) still hands it on.
   */
  async #handBack(held: Held): Promise<void> {
    const { info, msg } = held;
    if (this.#o.cancellations.has(info.requestId)) return this.#end(held, 'cancelled', ACK);
    this.#finishing(held);
    try {
      await this.#o.publisher.publish(
        requeueSubject(this.#taskPrefix, info),
        msg.data,
        requeuedTaskMsgId(info.requestId, info.index, info.streamSeq),
      );
      this.#end(held, 'handed_back', ACK);
    } catch (err) {
      this.#o.log.warn(
        { err: errorMessage(err), requestId: info.requestId },
        'could not requeue a map task; nakking it',
      );
      this.#end(held, 'handed_back', NAK);
    }
  }

  #end(held: Held, outcome: TaskOutcome, reply: Uint8Array): void {
    this.#o.publisher.send(held.msg.reply!, reply);
    this.#release(held, outcome);
  }

  #release(held: Held, outcome?: TaskOutcome): void {
    if (!this.#held.delete(held)) return;
    if (held.stage !== 'finishing') this.#busyCount--;
    if (outcome) {
      const { tasks, taskDuration } = this.#o.metrics;
      tasks[outcome].inc();
      taskDuration[outcome].observe((performance.now() - held.started) / 1000);
    }
    if (this.#held.size === 0) this.#emptied?.();
    if (this.#onIdle && this.#busy() === 0) this.#onIdle();
    this.#puller.fill();
  }

  #whenEmpty(timeoutMs: number): Promise<void> {
    if (this.#held.size === 0) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.#emptied = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** Cancel heard: running calls of the request are aborted (the function sees the connection close). */
  #cancelled(requestId: string): void {
    for (const held of this.#held) if (held.info.requestId === requestId) held.call?.abort('cancelled');
  }

  /** In-progress acks for tasks held past a quarter of ack wait, and the --max-duration cap. */
  #sweepHeld(): void {
    const now = performance.now();
    const heartbeat = this.#heartbeatMs();
    for (const held of this.#held) {
      if (now - held.touched >= heartbeat) {
        held.touched = now;
        this.#o.publisher.send(held.msg.reply!, WPI);
      }
      if (held.call && now - held.started > this.#o.taskTimeoutMs) held.call.abort('timeout');
    }
  }

  /** The function refused a connection: take nothing until it accepts one again. */
  #down(reason: string): void {
    if (this.#functionDown) return;
    this.#functionDown = true;
    this.#puller.pause();
    this.#holdBack.abort();
    this.#o.log.warn({ reason }, 'function unreachable: taking no map tasks until it answers');
    this.#probe ??= this.#probeUntilUp().finally(() => {
      this.#probe = undefined;
    });
  }

  async #probeUntilUp(): Promise<void> {
    let waitMs = PROBE_FIRST_MS;
    while (!this.#stopped) {
      await sleep(waitMs);
      if (await functionAccepts(this.#o.upstream, 1_000)) break;
      waitMs = Math.min(waitMs * 2, PROBE_MAX_MS);
    }
    if (this.#stopped) return;
    this.#functionDown = false;
    this.#holdBack = new AbortController();
    this.#o.log.info('function answers again: taking map tasks');
    if (!this.#draining) this.#puller.resume();
  }

  #ensureConsumer(): void {
    this.#ensuring ??= (async () => {
      let waitMs = 250;
      while (!this.#stopped) {
        try {
          await this.#o.ensureConsumer();
          break;
        } catch (err) {
          this.#o.log.warn(
            { err: errorMessage(err), retryMs: waitMs },
            'map worker consumer missing; making it again',
          );
          await sleep(waitMs);
          waitMs = Math.min(waitMs * 2, 5_000);
        }
      }
      if (!this.#stopped && !this.#draining && !this.#functionDown) this.#puller.resume();
    })().finally(() => {
      this.#ensuring = undefined;
    });
  }
}
