import { connect, type Socket } from 'node:net';
import { errorMessage } from '../../common/errors.ts';
import { type FeedResult, type ParsedResponse, ResponseParser } from './http-response.ts';
import type { TaskError } from './records.ts';

/** What one attempt of a task produced. */
export type CallOutcome =
  /** `outputJson`: the output as one line of JSON (the function's JSON answer, or its text as a JSON string). */
  | { kind: 'ok'; outputJson: string }
  /** The function refused the input (4xx): retrying cannot help. */
  | { kind: 'rejected'; error: TaskError }
  /** 5xx, a connection that broke mid-call, or a timeout: another attempt may succeed. */
  | { kind: 'failed'; error: TaskError }
  /** Nothing accepted a connection: the function is down, not the input's fault. */
  | { kind: 'unreachable'; message: string }
  /** The answer is larger than a NATS message can carry. */
  | { kind: 'too_large'; bytes: number }
  /** Stopped by abort('cancelled' | 'shutdown'). */
  | { kind: 'aborted' };

export type AbortReason = 'cancelled' | 'shutdown' | 'timeout';

export interface Call {
  done: Promise<CallOutcome>;
  /** Closes the connection to the function at once; `timeout` makes the outcome a failure. */
  abort(reason: AbortReason): void;
}

/** Longest function error text kept in a record, and largest JSON error body kept as JSON. */
const MESSAGE_LIMIT = 1000;
const ERROR_BODY_LIMIT = 16 * 1024;

const isJsonType = (contentType: string | undefined) => !!contentType && /\bjson\b/i.test(contentType);

/** JSON text as one line (SSE data may not break lines), or undefined when it is not JSON. */
export function singleLineJson(text: string): string | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  const trimmed = text.trim();
  return trimmed.includes('\n') || trimmed.includes('\r') ? JSON.stringify(value) : trimmed;
}

/** A function's error answer: its JSON body as JSON, its text as text (SPEC §2). */
export function taskErrorOf(status: number, body: string, contentType: string | undefined): TaskError {
  if (isJsonType(contentType) && body.length <= ERROR_BODY_LIMIT) {
    try {
      return { status, body: JSON.parse(body) };
    } catch {
      // Not JSON after all: passed on as text.
    }
  }
  const text = body.trim();
  if (!text) return { status, message: `the function answered ${status}` };
  return { status, message: text.length > MESSAGE_LIMIT ? `${text.slice(0, MESSAGE_LIMIT)}…` : text };
}

/** The output of a 2xx answer: JSON answers stay JSON, anything else becomes a JSON string. */
export function outputJsonOf(body: string, contentType: string | undefined): string {
  return (isJsonType(contentType) && singleLineJson(body)) || JSON.stringify(body);
}

export interface CallerOptions {
  url: URL;
  /** Connections kept to the function at most (--concurrency). */
  maxSockets: number;
  /** Reading stops (and the outcome is too_large) past this many bytes. */
  maxBytes: () => number;
  /** For the message of a timeout (--max-duration); the worker's sweep calls abort('timeout'). */
  timeoutMs: number;
}

/** A kept-alive connection to the function, and the call it serves now. */
interface Connection {
  socket: Socket;
  /** Served a call before: a close before any answer may be the function's idle timeout. */
  reused: boolean;
  call: Attempt | undefined;
}

/** One call on one connection. */
interface Attempt {
  parser: ResponseParser;
  settle: (outcome: CallOutcome) => void;
  retry: () => void;
}

/**
 * POSTs map inputs (already JSON) to the function over kept-alive HTTP/1.1 connections and
 * classifies the answers. Never rejects: an abort is an outcome too.
 *
 * Not node:http: its client costs about as much CPU per call as the rest of a map task
 * together (a ClientRequest, an IncomingMessage, agent bookkeeping and an event listener or
 * two per call). Here a call is one prebuilt write and a small parser (http-response.ts); no
 * per-call timer or abort signal either (the worker's sweep aborts calls past --max-duration).
 */
export class FunctionCaller {
  readonly #o: CallerOptions;
  readonly #host: string;
  readonly #port: number;
  readonly #head: string;
  readonly #idle: Connection[] = [];
  readonly #waiting: Array<(connection: Connection | Error) => void> = [];
  #open = 0;
  #closed = false;

  constructor(options: CallerOptions) {
    this.#o = options;
    const { url } = options;
    this.#host = url.hostname.replace(/^\[|\]$/g, '');
    this.#port = Number(url.port || 80);
    this.#head =
      `POST ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n` +
      'Content-Type: application/json\r\nAccept: application/json, text/plain;q=0.9, */*;q=0.5\r\nContent-Length: ';
  }

  /** `input` is the task's JSON as bytes, sent as they are. */
  call(input: Uint8Array): Call {
    let aborted: AbortReason | undefined;
    let connection: Connection | undefined;
    let settled = false;
    let resolve!: (outcome: CallOutcome) => void;
    const done = new Promise<CallOutcome>((r) => {
      resolve = r;
    });
    const settle = (outcome: CallOutcome) => {
      if (settled) return;
      settled = true;
      resolve(outcome);
    };
    const request = this.#request(input);
    const send = (c: Connection, retried: boolean) => {
      connection = c;
      c.call = {
        parser: new ResponseParser(this.#o.maxBytes()),
        settle: (outcome) => {
          connection = undefined;
          settle(outcome);
        },
        // A reused connection that closed before any answer: the function's idle timeout won
        // the race with this write. Once, on a fresh connection.
        retry: () => {
          connection = undefined;
          if (retried || aborted) settle(this.#broke(new Error('the connection closed before an answer')));
          else
            this.#fresh().then((fresh) =>
              fresh instanceof Error ? settle(this.#refused(fresh)) : send(fresh, true),
            );
        },
      };
      c.socket.write(request);
    };
    this.#acquire().then((c) => {
      if (c instanceof Error) settle(this.#refused(c));
      else if (aborted) this.#release(c, true);
      else send(c, false);
    });
    return {
      done,
      abort: (reason) => {
        if (aborted || settled) return;
        aborted = reason;
        if (connection) {
          connection.call = undefined;
          connection.socket.destroy(); // the function sees its connection close
          connection = undefined;
        }
        if (reason === 'timeout') {
          const seconds = Math.round(this.#o.timeoutMs / 1000);
          settle({
            kind: 'failed',
            error: { status: 504, message: `no answer within ${seconds} s (--max-duration)` },
          });
        } else settle({ kind: 'aborted' });
      },
    };
  }

  /** Closes every connection; calls in flight break. */
  destroy(): void {
    this.#closed = true;
    for (const c of this.#idle.splice(0)) c.socket.destroy();
    for (const waiter of this.#waiting.splice(0)) waiter(new Error('closed'));
  }

  #request(input: Uint8Array): Buffer {
    const head = `${this.#head}${input.byteLength}\r\n\r\n`;
    const headBytes = Buffer.byteLength(head, 'latin1');
    const request = Buffer.allocUnsafe(headBytes + input.byteLength);
    request.write(head, 0, 'latin1');
    request.set(input, headBytes);
    return request;
  }

  #refused(err: Error): CallOutcome {
    return { kind: 'unreachable', message: `function unreachable: ${errorMessage(err)}` };
  }

  #broke(err: Error): CallOutcome {
    return {
      kind: 'failed',
      error: { status: 502, message: `function connection broke: ${errorMessage(err)}` },
    };
  }

  /** An idle connection, a new one, or the next one freed when --concurrency are open. */
  #acquire(): Promise<Connection | Error> {
    const idle = this.#idle.pop();
    if (idle) return Promise.resolve(idle);
    if (this.#open < this.#o.maxSockets) return this.#fresh();
    return new Promise((resolve) => this.#waiting.push(resolve));
  }

  #fresh(): Promise<Connection | Error> {
    this.#open++;
    return new Promise((resolve) => {
      const socket = connect({ host: this.#host, port: this.#port, noDelay: true });
      const connection: Connection = { socket, reused: false, call: undefined };
      const refused = (err: Error) => {
        this.#open--;
        resolve(err);
      };
      socket.once('error', refused);
      socket.once('connect', () => {
        socket.off('error', refused);
        this.#wire(connection);
        resolve(connection);
      });
    });
  }

  #wire(c: Connection): void {
    const { socket } = c;
    socket.on('data', (chunk: Buffer) => {
      const call = c.call;
      if (!call) {
        socket.destroy(); // bytes nobody asked for: the connection is unusable
        return;
      }
      let result: FeedResult;
      try {
        result = call.parser.feed(chunk);
      } catch (err) {
        c.call = undefined;
        socket.destroy();
        call.settle(this.#broke(err as Error));
        return;
      }
      if (result.kind === 'more') return;
      c.call = undefined;
      if (result.kind === 'too_large') {
        socket.destroy();
        call.settle({ kind: 'too_large', bytes: result.bytes });
        return;
      }
      const { response } = result;
      this.#release(c, response.keepAlive && result.rest === undefined);
      call.settle(outcomeOf(response));
    });
    socket.on('error', () => {}); // 'close' follows and decides
    socket.on('close', () => {
      this.#open--;
      const idleAt = this.#idle.indexOf(c);
      if (idleAt !== -1) this.#idle.splice(idleAt, 1);
      const call = c.call;
      c.call = undefined;
      if (call) {
        const ended = call.parser.end();
        if (ended) call.settle(outcomeOf(ended));
        else if (c.reused && !call.parser.started) call.retry();
        else call.settle(this.#broke(new Error('the connection closed mid-answer')));
      }
      this.#handOn();
    });
  }

  #release(c: Connection, reusable: boolean): void {
    if (!reusable || this.#closed) {
      c.socket.destroy(); // 'close' hands the slot on
      return;
    }
    c.reused = true;
    const waiter = this.#waiting.shift();
    if (waiter) waiter(c);
    else this.#idle.push(c);
  }

  /** A connection closed: a call waiting for one gets a new one. */
  #handOn(): void {
    if (this.#closed || this.#waiting.length === 0 || this.#open >= this.#o.maxSockets) return;
    const waiter = this.#waiting.shift()!;
    void this.#fresh().then(waiter);
  }
}

function outcomeOf(response: ParsedResponse): CallOutcome {
  const { status, body, contentType } = response;
  const text = body.toString();
  if (status >= 200 && status < 300) return { kind: 'ok', outputJson: outputJsonOf(text, contentType) };
  if (status >= 500) return { kind: 'failed', error: taskErrorOf(status, text, contentType) };
  return { kind: 'rejected', error: taskErrorOf(status, text, contentType) };
}
