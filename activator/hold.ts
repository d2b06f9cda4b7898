import type { IncomingMessage, ServerResponse } from 'node:http';
import { errorEventData, sendJsonError } from '../common/wire-errors.ts';
import type { WaitingRoom } from './waiting-room.ts';

/** SPEC §3: what a held request that accepts an event stream receives while it waits. */
export const WAITING_COMMENT = ': waiting for a replica\n\n';

export interface HoldSettings {
  /** `namespace/name`, named in the 503. */
  fn: string;
  /** spec.scaling.coldStartTimeoutSeconds. */
  timeoutMs: number;
  /** spec.streaming.heartbeatSeconds: when an event stream gets its headers and each comment after (0: never). */
  heartbeatMs: number;
}

export interface Held<T> {
  target: T;
  /** The `200` and event-stream headers were sent while waiting: the answer continues that stream. */
  started: boolean;
  heldMs: number;
}

class ColdStartTimeout extends Error {}

/** No replica is coming: every function process keeps exiting (`sluice serve`); the message says how. */
export class FunctionCrashed extends Error {}

/** The client asked for an event stream: it can take a `200` and comments before the function answers. */
export function acceptsEventStream(req: IncomingMessage): boolean {
  return String(req.headers.accept ?? '').includes('text/event-stream');
}

/**
 * Holds one request in `room` until a replica is offered (scale from zero: the first replica
 * starts while it waits). A request that accepts `text/event-stream` gets its `200` headers
 * after heartbeatSeconds and a `: waiting for a replica` comment then and every heartbeatSeconds,
 * so load balancers' idle timeouts do not cut a GPU cold start of minutes. After
 * coldStartTimeoutSeconds: `503` with Retry-After, or `event: error` once the stream started.
 * Undefined when the request was answered here or the client left.
 */
export async function holdRequest<T>(
  req: IncomingMessage,
  res: ServerResponse,
  room: WaitingRoom<T>,
  settings: HoldSettings,
): Promise<Held<T> | undefined> {
  const arrived = performance.now();
  const leave = new AbortController();
  const onClose = () => leave.abort(new Error('the client left'));
  res.once('close', onClose);
  const sse = acceptsEventStream(req) && settings.heartbeatMs > 0;
  let heartbeat: NodeJS.Timeout | undefined;
  if (sse) {
    heartbeat = setInterval(() => {
      if (!res.headersSent) {
        res.writeHead(200, {
          'content-type': 'text/event-stream',
          'cache-control': 'no-cache',
          'x-accel-buffering': 'no',
        });
      }
      res.write(WAITING_COMMENT);
    }, settings.heartbeatMs);
  }
  const timeout = setTimeout(() => leave.abort(new ColdStartTimeout()), settings.timeoutMs);
  try {
    const target = await room.wait(leave.signal);
    return { target, started: res.headersSent, heldMs: performance.now() - arrived };
  } catch (err) {
    if (err instanceof ColdStartTimeout) timedOut(res, settings, performance.now() - arrived);
    if (err instanceof FunctionCrashed) crashed(res, err.message);
    return undefined;
  } finally {
    clearInterval(heartbeat);
    clearTimeout(timeout);
    res.off('close', onClose);
  }
}

function timedOut(res: ServerResponse, settings: HoldSettings, waitedMs: number): void {
  const waitedSeconds = Math.round(waitedMs / 100) / 10;
  const message = `no replica of ${settings.fn} was ready after ${waitedSeconds} s (coldStartTimeoutSeconds)`;
  const details = { function: settings.fn, waitedSeconds };
  if (res.headersSent) {
    res.end(`event: error\ndata: ${errorEventData('cold_start_timeout', message, details)}\n\n`);
    return;
  }
  // The function may be up in a while (a GPU node joining): a retry is worth it, not at once.
  const retryAfter = String(Math.max(1, Math.min(30, Math.ceil(settings.timeoutMs / 10_000))));
  sendJsonError(res, 'cold_start_timeout', message, { 'retry-after': retryAfter }, details);
}

function crashed(res: ServerResponse, message: string): void {
  if (res.headersSent) {
    res.end(`event: error\ndata: ${errorEventData('function_crashed', message)}\n\n`);
    return;
  }
  sendJsonError(res, 'function_crashed', message, { 'retry-after': '1' });
}
