import { type Agent, type ClientRequest, request } from 'node:http';
import { errorMessage } from '../../common/errors.ts';
import type { TaskError } from './records.ts';

/** What one attempt of a task produced. */
export type CallOutcome =
  /** `outputJson`: the output as one line of JSON (the function's JSON answer, or its text as a JSON string). */
  | { kind: 'ok'; outputJson: string }
  /** The function refused the input (4xx): retrying cannot help. */
  | { kind: 'rejected'; error: TaskError }
  /** 5xx, a connection that broke mid-call, or a timeout: another attempt may succeed. */
  | { kind: 'failed'; error: TaskError }
  /** Nothing accepted the connection: the function is down, not the input's fault. */
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

/** Errors of the connect step: nothing listens (yet) where the function should. */
const CONNECT_FAILURES = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EADDRNOTAVAIL',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

function isConnectFailure(err: unknown): boolean {
  const { code, syscall } = err as { code?: string; syscall?: string };
  return syscall === 'connect' || (code !== undefined && CONNECT_FAILURES.has(code));
}

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
  agent: Agent;
  url: URL;
  /** Reading stops (and the outcome is too_large) past this many bytes. */
  maxBytes: () => number;
  /** For the message of a timeout (--max-duration); the worker's sweep calls abort('timeout'). */
  timeoutMs: number;
}

/**
 * POSTs map inputs (already JSON) to the function over kept-alive connections and classifies
 * the answers. Never rejects: an abort is an outcome too. No per-call timer or abort signal
 * (both cost more than the call itself at thousands of calls a second): the worker aborts.
 */
export class FunctionCaller {
  readonly #o: CallerOptions;
  readonly #target: { host: string; port: number; path: string };

  constructor(options: CallerOptions) {
    this.#o = options;
    const { url } = options;
    this.#target = {
      host: url.hostname.replace(/^\[|\]$/g, ''),
      port: Number(url.port || 80),
      path: `${url.pathname}${url.search}`,
    };
  }

  call(input: string): Call {
    let req: ClientRequest | undefined;
    let aborted: AbortReason | undefined;
    let settle: (outcome: CallOutcome) => void = () => {};
    const done = new Promise<CallOutcome>((resolve) => {
      let settled = false;
      settle = (outcome) => {
        if (settled) return;
        settled = true;
        resolve(outcome);
      };
    });
    const onAbort = () => {
      if (aborted === 'timeout') {
        const seconds = Math.round(this.#o.timeoutMs / 1000);
        settle({
          kind: 'failed',
          error: { status: 504, message: `no answer within ${seconds} s (--max-duration)` },
        });
      } else settle({ kind: 'aborted' });
    };
    req = request({
      ...this.#target,
      method: 'POST',
      agent: this.#o.agent,
      headers: {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(input),
        accept: 'application/json, text/plain;q=0.9, */*;q=0.5',
      },
    });
    req.on('error', (err) => {
      if (aborted) onAbort();
      else if (isConnectFailure(err))
        settle({ kind: 'unreachable', message: `function unreachable: ${errorMessage(err)}` });
      else
        settle({
          kind: 'failed',
          error: { status: 502, message: `function connection broke: ${errorMessage(err)}` },
        });
    });
    req.on('response', (res) => {
      const status = res.statusCode ?? 502;
      const maxBytes = this.#o.maxBytes();
      let first: Buffer | undefined;
      let chunks: Buffer[] | undefined;
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > maxBytes) {
          res.destroy();
          settle({ kind: 'too_large', bytes: size });
          return;
        }
        if (!first) first = chunk;
        else {
          chunks ??= [first];
          chunks.push(chunk);
        }
      });
      res.on('error', (err) => {
        if (aborted) onAbort();
        else
          settle({
            kind: 'failed',
            error: { status: 502, message: `function answer broke off: ${errorMessage(err)}` },
          });
      });
      res.on('end', () => {
        const body = chunks ? Buffer.concat(chunks, size).toString() : (first?.toString() ?? '');
        const contentType = res.headers['content-type'];
        if (status >= 200 && status < 300)
          settle({ kind: 'ok', outputJson: outputJsonOf(body, contentType) });
        else if (status >= 500) settle({ kind: 'failed', error: taskErrorOf(status, body, contentType) });
        else settle({ kind: 'rejected', error: taskErrorOf(status, body, contentType) });
      });
    });
    req.end(input);
    return {
      done,
      abort: (reason) => {
        if (aborted) return;
        aborted = reason;
        req?.destroy();
        req = undefined;
        onAbort();
      },
    };
  }
}
