import { type Agent, request } from 'node:http';
import { errorMessage } from '../../common/errors.ts';

/** What one attempt of a task produced. */
export type CallOutcome =
  | { kind: 'ok'; output: unknown }
  /** The function refused the input (4xx): retrying cannot help. */
  | { kind: 'rejected'; status: number; message: string }
  /**
   * 5xx, a broken connection or a timeout: another attempt may succeed. `unreachable`: no
   * answer began at all (the function is not listening: it exited, or is restarting).
   */
  | { kind: 'failed'; status: number; message: string; unreachable?: boolean }
  /** The answer is larger than a NATS message can carry. */
  | { kind: 'too_large'; bytes: number };

export interface CallOptions {
  signal: AbortSignal;
  /** Reading stops (and the outcome is too_large) past this many bytes. */
  maxBytes: number;
  timeoutMs: number;
}

const MESSAGE_LIMIT = 1000;

function describeBody(body: Buffer, status: number): string {
  const text = body.toString('utf8').trim();
  if (!text) return `the function answered ${status}`;
  return text.length > MESSAGE_LIMIT ? `${text.slice(0, MESSAGE_LIMIT)}…` : text;
}

/** JSON answers become JSON outputs; anything else is passed on as text. */
function outputOf(body: Buffer, contentType: string | undefined): unknown {
  const text = body.toString('utf8');
  if (contentType && /\bjson\b/i.test(contentType)) {
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }
  return text;
}

/**
 * POSTs one map input (already JSON) to the function over a kept-alive connection and
 * classifies the answer. Rejects only when `signal` aborts (the request was cancelled).
 */
export function callFunction(
  agent: Agent,
  url: URL,
  input: string,
  options: CallOptions,
): Promise<CallOutcome> {
  return new Promise((resolve, reject) => {
    const started = request(url, {
      method: 'POST',
      agent,
      signal: options.signal,
      timeout: options.timeoutMs,
      headers: {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(input),
        accept: 'application/json, text/plain;q=0.9, */*;q=0.5',
      },
    });
    let timedOut = false;
    started.on('timeout', () => {
      timedOut = true;
      started.destroy(new Error(`no answer within ${Math.round(options.timeoutMs / 1000)} s`));
    });
    started.on('error', (err) => {
      if (options.signal.aborted) reject(options.signal.reason);
      else
        resolve({
          kind: 'failed',
          status: 502,
          message: `function unreachable: ${errorMessage(err)}`,
          unreachable: !timedOut,
        });
    });
    started.on('response', (res) => {
      const status = res.statusCode ?? 502;
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > options.maxBytes) {
          res.destroy();
          resolve({ kind: 'too_large', bytes: size });
          return;
        }
        chunks.push(chunk);
      });
      res.on('error', (err) => {
        if (options.signal.aborted) reject(options.signal.reason);
        else
          resolve({
            kind: 'failed',
            status: 502,
            message: `function answer broke off: ${errorMessage(err)}`,
          });
      });
      res.on('end', () => {
        const body = Buffer.concat(chunks, size);
        if (status >= 200 && status < 300)
          resolve({ kind: 'ok', output: outputOf(body, res.headers['content-type']) });
        else if (status >= 500) resolve({ kind: 'failed', status, message: describeBody(body, status) });
        else resolve({ kind: 'rejected', status, message: describeBody(body, status) });
      });
    });
    started.end(input);
  });
}
