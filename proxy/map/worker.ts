import { Agent } from 'node:http';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Consumer, ConsumerMessages, JetStreamClient, JsMsg } from '@nats-io/jetstream';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { errorMessage } from '../../common/errors.ts';
import type { Logger } from '../../common/log.ts';
import type { MapNames } from '../../common/map-streams.ts';
import type { ConcurrencyLimiter, Release } from '../limiter.ts';
import { type CallOutcome, callFunction } from './call-function.ts';
import type { MapMetrics, TaskOutcome } from './metrics.ts';
import { type ErrorRecord, encodeRecord, maxRecordBytes, type ResultRecord, resultMsgId } from './records.ts';

export interface WorkerOptions {
  nc: NatsConnection;
  js: JetStreamClient;
  names: MapNames;
  /** Looks the shared durable consumer up again (creating it if it went missing). */
  consumer: () => Promise<Consumer>;
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
  /** How long cancelled request ids are remembered (--map-retention). */
  retentionMs: number;
}

interface Task {
  msg: JsMsg;
  requestId: string;
  index: number;
}

/**
 * Takes this replica's share of the function's map tasks from the shared durable pull
 * consumer: one limiter slot per task (the same slots plain streams use), the input POSTed to
 * the function, the result published to the request's results subject, then the task acked.
 * While a task waits for a slot or runs, in-progress acks keep it from being redelivered; a
 * replica that dies stops sending them, so its tasks go to another replica after ack wait.
 */
export class MapWorker {
  readonly #o: WorkerOptions;
  readonly #agent: Agent;
  readonly #stopping = new AbortController();
  /** Request ids whose client left, and when (so the set can be pruned). */
  readonly #cancelled = new Map<string, number>();
  readonly #running = new Map<string, Set<AbortController>>();
  readonly #tasks = new Set<Promise<void>>();
  #messages: ConsumerMessages | undefined;
  #cancelSub: Subscription | undefined;
  #loop: Promise<void> | undefined;
  /**
   * Set while the function does not accept connections (it exited and is restarting): this
   * replica takes no new tasks, so the ones it handed back go to replicas that can run them
   * instead of spending their attempts here.
   */
  #functionDown: Promise<void> | undefined;

  constructor(options: WorkerOptions) {
    this.#o = options;
    this.#agent = new Agent({ keepAlive: true, maxSockets: options.concurrency });
  }

  start(): void {
    this.#cancelSub = this.#o.nc.subscribe(this.#o.names.cancelSubject, {
      callback: (err, msg) => {
        if (!err) this.cancel(msg.string());
      },
    });
    this.#loop = this.#consumeForever();
  }

  /** Skips the request's queued tasks on this replica and aborts the ones running. */
  cancel(requestId: string): void {
    const now = Date.now();
    this.#cancelled.set(requestId, now);
    for (const [id, at] of this.#cancelled) {
      if (now - at <= this.#o.retentionMs) break; // insertion order: the rest are newer
      this.#cancelled.delete(id);
    }
    for (const controller of this.#running.get(requestId) ?? []) controller.abort(new Error('map cancelled'));
  }

  /**
   * Stops taking tasks and hands the running ones back at once (nak), so another replica
   * starts them without waiting for ack wait.
   */
  async close(): Promise<void> {
    this.#stopping.abort(new Error('shutting down'));
    this.#cancelSub?.unsubscribe();
    await this.#messages?.close();
    for (const set of this.#running.values()) for (const c of set) c.abort(new Error('shutting down'));
    await Promise.allSettled([this.#loop, ...this.#tasks]);
    this.#agent.destroy();
  }

  /**
   * Asks the shared consumer for as many tasks as this replica can hold now (--concurrency
   * less the tasks it holds), so a replica never hoards work another one could start, and
   * every task it holds gets in-progress acks from the moment it arrives.
   */
  async #consumeForever(): Promise<void> {
    const { log, concurrency } = this.#o;
    let backoffMs = 100;
    let consumer: Consumer | undefined;
    while (!this.#stopping.signal.aborted) {
      try {
        if (this.#functionDown) {
          await this.#functionDown;
          continue;
        }
        consumer ??= await this.#o.consumer();
        if (this.#tasks.size >= concurrency) {
          await Promise.race(this.#tasks);
          continue;
        }
        this.#messages = await consumer.fetch({
          max_messages: concurrency - this.#tasks.size,
          expires: 5_000,
        });
        for await (const msg of this.#messages) this.#take(msg);
        backoffMs = 100;
      } catch (err) {
        if (this.#stopping.signal.aborted) break;
        consumer = undefined;
        log.warn({ err: errorMessage(err), retryMs: backoffMs }, 'map worker cannot fetch tasks; retrying');
        await sleep(backoffMs, undefined, { signal: this.#stopping.signal }).catch(() => {});
        backoffMs = Math.min(backoffMs * 2, 5_000);
      }
    }
  }

  #markFunctionDown(): void {
    if (this.#functionDown) return;
    this.#o.log.warn(
      { upstream: this.#o.upstream.origin },
      'function not answering: no map tasks taken until it does',
    );
    this.#functionDown = this.#untilFunctionAnswers().finally(() => {
      this.#functionDown = undefined;
    });
  }

  async #untilFunctionAnswers(): Promise<void> {
    const { hostname, port } = this.#o.upstream;
    while (!this.#stopping.signal.aborted) {
      if (await accepts(hostname, Number(port) || 80)) return;
      await sleep(100, undefined, { signal: this.#stopping.signal }).catch(() => {});
    }
  }

  #take(msg: JsMsg): void {
    const task = (async () => {
      const release = await this.#slotFor(msg);
      if (!release) {
        msg.nak(); // shutting down: someone else takes it now
        return;
      }
      await this.#run(msg, release);
    })().catch((err) => this.#o.log.error({ err, subject: msg.subject }, 'map task failed unexpectedly'));
    this.#tasks.add(task);
    void task.finally(() => this.#tasks.delete(task));
  }

  /** Waits (FIFO, with plain streams) for a slot, keeping the task ours meanwhile. */
  async #slotFor(msg: JsMsg): Promise<Release | undefined> {
    const heartbeat = setInterval(() => msg.working(), this.#heartbeatMs());
    try {
      return await this.#o.limiter.acquire(2 ** 31 - 1, this.#stopping.signal);
    } catch {
      return undefined;
    } finally {
      clearInterval(heartbeat);
    }
  }

  #heartbeatMs(): number {
    return Math.max(100, Math.floor(this.#o.ackWaitMs / 4));
  }

  #parse(msg: JsMsg): Task | undefined {
    const prefix = this.#o.names.tasksSubjects.slice(0, -1); // `sluice.<ns>.<name>.tasks.`
    const [requestId, indexText, ...rest] = msg.subject.slice(prefix.length).split('.');
    const index = Number(indexText);
    if (!msg.subject.startsWith(prefix) || !requestId || rest.length > 0 || !Number.isInteger(index)) {
      return undefined;
    }
    return { msg, requestId, index };
  }

  async #run(msg: JsMsg, release: Release): Promise<void> {
    const { metrics, log, maxDeliver } = this.#o;
    const started = performance.now();
    let outcome: TaskOutcome = 'failed';
    const task = this.#parse(msg);
    try {
      if (!task) {
        log.error({ subject: msg.subject }, 'map task with a malformed subject; dropping it');
        msg.term('malformed subject');
        return;
      }
      const attempt = msg.info.deliveryCount;
      if (attempt > 1) metrics.redeliveries.inc();
      if (this.#cancelled.has(task.requestId)) {
        outcome = 'cancelled';
        msg.ack();
        return;
      }
      if (attempt > maxDeliver) {
        // The consumer allows one delivery more than maxDeliver so that an input whose last
        // attempt died with its replica is reported instead of silently dropped.
        outcome = 'failed';
        await this.#finish(task, {
          index: task.index,
          error: {
            status: 504,
            message: `no result after ${maxDeliver} attempts: the replica running the last one stopped answering (no ack within ${this.#o.ackWaitMs / 1000} s)`,
          },
          attempts: maxDeliver,
        });
        return;
      }
      outcome = await this.#attempt(task, attempt);
    } finally {
      release();
      metrics.tasks.inc({ outcome });
      metrics.taskDuration.observe({ outcome }, (performance.now() - started) / 1000);
    }
  }

  async #attempt(task: Task, attempt: number): Promise<TaskOutcome> {
    const { msg, requestId, index } = task;
    const controller = new AbortController();
    const abort = () => controller.abort(this.#stopping.signal.reason);
    this.#stopping.signal.addEventListener('abort', abort);
    const running = this.#running.get(requestId) ?? new Set<AbortController>();
    this.#running.set(requestId, running);
    running.add(controller);
    const heartbeat = setInterval(() => msg.working(), this.#heartbeatMs());
    try {
      const callStarted = performance.now();
      let result: CallOutcome;
      try {
        result = await callFunction(this.#agent, this.#o.upstream, msg.string(), {
          signal: controller.signal,
          maxBytes: this.#maxPayload(),
          timeoutMs: this.#o.taskTimeoutMs,
        });
      } catch {
        // Aborted: cancelled (drop it) or shutting down (hand it to another replica now).
        if (this.#stopping.signal.aborted) {
          msg.nak();
          return 'retried';
        }
        msg.ack();
        return 'cancelled';
      }
      const ms = Math.round(performance.now() - callStarted);
      switch (result.kind) {
        case 'ok':
          return await this.#finish(task, { index, output: result.output, replica: this.#o.replica, ms });
        case 'too_large':
          return await this.#finish(task, this.#tooLarge(index, result.bytes, attempt));
        case 'rejected': // 4xx: the input itself is wrong, another attempt cannot help
          return await this.#finish(task, {
            index,
            error: { status: result.status, message: result.message },
            attempts: attempt,
          });
      }
      if (result.unreachable) this.#markFunctionDown();
      if (attempt < this.#o.maxDeliver) {
        // 5xx or no answer: back off a little, then any replica may retry it.
        msg.nak(Math.min(250 * 2 ** (attempt - 1), 5_000));
        return 'retried';
      }
      return await this.#finish(task, {
        index,
        error: { status: result.status, message: result.message },
        attempts: attempt,
      });
    } finally {
      clearInterval(heartbeat);
      this.#stopping.signal.removeEventListener('abort', abort);
      running.delete(controller);
      if (running.size === 0) this.#running.delete(requestId);
    }
  }

  #maxPayload(): number {
    return maxRecordBytes(this.#o.nc);
  }

  #tooLarge(index: number, bytes: number, attempt: number): ErrorRecord {
    return {
      index,
      error: {
        status: 413,
        message: `result is ${bytes} bytes or more, larger than the ${this.#maxPayload()} bytes a NATS message can carry`,
      },
      attempts: attempt,
    };
  }

  /**
   * Stores the record (msgID dedupes a task that ran twice), then acks the task. A record
   * that cannot be stored is not acked, so the task runs again after ack wait.
   */
  async #finish(task: Task, record: ResultRecord | ErrorRecord): Promise<TaskOutcome> {
    const kind = 'error' in record ? 'error' : 'result';
    let data = encodeRecord(record);
    if (Buffer.byteLength(data) > this.#maxPayload()) {
      data = encodeRecord(this.#tooLarge(task.index, Buffer.byteLength(data), task.msg.info.deliveryCount));
    }
    const subject = `${this.#o.names.resultsOf(task.requestId)}.${kind}`;
    const deadline = performance.now() + this.#o.ackWaitMs;
    let waitMs = 100;
    for (;;) {
      try {
        await this.#o.js.publish(subject, data, { msgID: resultMsgId(task.requestId, task.index) });
        break;
      } catch (err) {
        if (this.#stopping.signal.aborted || performance.now() + waitMs > deadline) {
          this.#o.log.warn(
            { err: errorMessage(err), requestId: task.requestId, index: task.index },
            'could not store a map result; the task will run again',
          );
          return 'retried';
        }
        await sleep(waitMs);
        waitMs = Math.min(waitMs * 2, 2_000);
      }
    }
    task.msg.ack();
    return kind === 'error' ? 'failed' : 'ok';
  }
}

/** Something accepts TCP connections at host:port. */
function accepts(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
