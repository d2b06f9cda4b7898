import { setTimeout as sleep } from 'node:timers/promises';
import {
  ClientUsageError,
  ConnectionError,
  HttpStatusError,
  MapFailedError,
  MapProtocolError,
  NotEventStreamError,
} from './errors.ts';
import { readEvents, type StreamEvent } from './events.ts';

export { WIRE_ERRORS, type WireCode } from '../common/wire-errors.ts';
export {
  ClientUsageError,
  ConnectionError,
  HttpStatusError,
  MapFailedError,
  MapProtocolError,
  NotEventStreamError,
  type ServerErrorCode,
} from './errors.ts';
export { readEvents, type StreamEvent } from './events.ts';

/** Whatever `new Headers()` takes: a record, pairs, or a Headers. */
export type RequestHeaders = ConstructorParameters<typeof Headers>[0];

export interface StreamOptions {
  /** A string or bytes are sent as they are; anything else as JSON. A body makes the default method POST. */
  body?: unknown;
  method?: string;
  headers?: RequestHeaders;
  signal?: AbortSignal;
  /** Reconnections in a row without an event in between before giving up (default 5). */
  maxReconnects?: number;
  /** First wait before reconnecting, doubled each try; a server's `retry:` field replaces it (default 1000). */
  retryMs?: number;
  /**
   * What a response that is not `text/event-stream` does: `throw` (default) a NotEventStreamError,
   * or `chunks`: yield each piece of the body as it arrives as a `chunk` event (for text/plain streams).
   */
  otherContent?: 'throw' | 'chunks';
}

const MAX_BACKOFF_MS = 30_000;

/**
 * Streams the events of `url` as they arrive. When the connection drops mid-stream after the
 * server has sent event ids, it reconnects with `Last-Event-ID` (the server decides where to
 * resume); without ids there is nothing to resume from, and the drop is a ConnectionError.
 * A stream that ends cleanly ends the iteration: function streams are finite.
 */
export async function* stream(url: string | URL, options: StreamOptions = {}): AsyncGenerator<StreamEvent> {
  const { signal, maxReconnects = 5 } = options;
  httpUrl(url);
  let retryMs = options.retryMs ?? 1000;
  const body = encodeBody(options.body);
  const method = options.method ?? (body === undefined ? 'GET' : 'POST');
  let lastEventId: string | undefined;
  let failures = 0;
  for (;;) {
    const headers = new Headers(options.headers);
    headers.set('accept', 'text/event-stream');
    if (body !== undefined && typeof options.body !== 'string' && !(options.body instanceof Uint8Array)) {
      if (!headers.has('content-type')) headers.set('content-type', 'application/json');
    }
    if (lastEventId !== undefined) headers.set('last-event-id', lastEventId);
    let broke: unknown;
    try {
      const response = await open(url, { method, headers, body, signal });
      const contentType = response.headers.get('content-type') ?? '';
      if (!contentType.startsWith('text/event-stream')) {
        if (options.otherContent !== 'chunks') {
          await response.body!.cancel();
          throw new NotEventStreamError(String(url), contentType);
        }
        yield* readChunks(response.body!);
        return;
      }
      for await (const event of readEvents(response.body!, (ms) => {
        retryMs = ms;
      })) {
        failures = 0;
        if (event.id !== undefined) lastEventId = event.id;
        yield event;
      }
      return;
    } catch (err) {
      if (signal?.aborted) throw signal.reason;
      if (!(err instanceof ConnectionError) && !isNetworkError(err)) throw err;
      broke = err;
    }
    if (lastEventId === undefined) {
      throw new ConnectionError(`${url}: connection lost and the server sent no event id to resume from`, {
        cause: broke,
      });
    }
    if (failures >= maxReconnects) {
      throw new ConnectionError(`${url}: gave up after ${failures} reconnections`, { cause: broke });
    }
    failures += 1;
    await sleep(Math.min(retryMs * 2 ** (failures - 1), MAX_BACKOFF_MS), undefined, { signal });
  }
}

export type MapOrder = 'input' | 'completion';

export interface MapOptions {
  /** `input` (default) yields results in input order; `completion` as they finish. */
  order?: MapOrder;
  headers?: RequestHeaders;
  signal?: AbortSignal;
  /**
   * Keep the map running, whatever happens to this caller, for as long as the proxy keeps
   * results (default false). Without it, a broken connection is resumed within the proxy's
   * `cancelAfterDisconnectSeconds` (the map is cancelled after that), and a caller that stops
   * early (an aborted `signal`, leaving the loop) cancels the map at once (DELETE).
   */
  keep?: boolean;
  /** Called once, when the proxy has queued the inputs. */
  onAccepted?: (accepted: MapAccepted) => void;
  /** Resume attempts in a row without a result in between before giving up (default 5). */
  maxReconnects?: number;
  retryMs?: number;
}

export interface MapAccepted {
  requestId: string;
  count: number;
  /** How long the proxy waits for a broken stream to resume before cancelling; null when kept. */
  cancelAfterDisconnectSeconds?: number | null;
}

/** What failed for one input: the function's JSON error `body`, or a text `message`. */
export interface MapItemError {
  status?: number;
  message?: string;
  body?: unknown;
}

export type MapResult =
  | { index: number; ok: true; output: unknown; replica?: string; ms?: number }
  | { index: number; ok: false; error: MapItemError; attempts?: number };

export interface MapSummary {
  requestId: string;
  count: number;
  failed: number;
  /** Inputs that got no result because the map was cancelled (DELETE, or its caller gone too long). */
  cancelled?: number;
}

/** Resume waits end this long before the proxy's grace does, so the last try still counts. */
const GRACE_MARGIN_MS = 500;

/**
 * Fans `inputs` out over the function's replicas (`POST <url>/_sluice/map`) and yields each
 * result (or per-input failure) once, as the stream delivers them. If the connection breaks
 * after the proxy accepted the inputs, it resumes from `GET <url>/_sluice/map/<requestId>`
 * with `Last-Event-ID` within the proxy's grace (`cancelAfterDisconnectSeconds`); indices
 * already yielded are never yielded twice. The return value is the `done` summary. Stopping
 * early (an aborted signal, `break`) cancels the map unless `keep` is set.
 */
export async function* map(
  url: string | URL,
  inputs: readonly unknown[],
  options: MapOptions = {},
): AsyncGenerator<MapResult, MapSummary> {
  if (!Array.isArray(inputs)) throw new ClientUsageError('map inputs must be an array');
  const { signal, maxReconnects = 5, order = 'input', keep = false } = options;
  let retryMs = options.retryMs ?? 1000;
  const base = functionBase(url);
  let accepted: MapAccepted | undefined;
  let lastEventId: string | undefined;
  const seen = new Set<number>();
  let failures = 0;
  let finished = false;
  /** When the stream first broke since the last event: the proxy's grace runs from about then. */
  let brokeAt: number | undefined;
  try {
    for (;;) {
      const headers = new Headers(options.headers);
      headers.set('accept', 'text/event-stream');
      let target: URL;
      let init: RequestInit;
      if (accepted) {
        target = new URL(`_sluice/map/${encodeURIComponent(accepted.requestId)}`, base);
        if (lastEventId !== undefined) headers.set('last-event-id', lastEventId);
        init = { method: 'GET', headers, signal };
      } else {
        target = new URL('_sluice/map', base);
        headers.set('content-type', 'application/json');
        init = { method: 'POST', headers, body: JSON.stringify({ inputs, order, keep }), signal };
      }
      let broke: unknown;
      try {
        const response = await open(target, init);
        for await (const event of readEvents(response.body!, (ms) => {
          retryMs = ms;
        })) {
          if (event.event === 'accepted') {
            const data = parseData<MapAccepted>(event);
            if (typeof data.requestId !== 'string' || !Number.isInteger(data.count)) {
              throw new MapProtocolError(`accepted event without requestId and count: ${event.data}`);
            }
            if (!accepted) {
              accepted = {
                requestId: data.requestId,
                count: data.count as number,
                cancelAfterDisconnectSeconds: data.cancelAfterDisconnectSeconds ?? null,
              };
              options.onAccepted?.(accepted);
            }
          } else if (event.event === 'result' || event.event === 'error') {
            const data = parseData<{ index: unknown; error: { code?: string; message?: string } }>(event);
            if (event.event === 'error' && data.index === undefined) {
              // An error that names no input ends the whole map (its results lost, NATS gone).
              throw new MapFailedError(
                `map ${accepted?.requestId ?? ''} failed: ${data.error?.message ?? event.data}`,
                data.error?.code,
              );
            }
            const result = toResult(event, accepted?.count);
            failures = 0;
            brokeAt = undefined;
            if (event.id !== undefined) lastEventId = event.id;
            if (seen.has(result.index)) continue;
            seen.add(result.index);
            yield result;
          } else if (event.event === 'done') {
            const done = parseData<MapSummary>(event);
            finished = true;
            const summary: MapSummary = {
              requestId: done.requestId ?? accepted?.requestId ?? '',
              count: done.count ?? seen.size,
              failed: done.failed ?? 0,
            };
            if (typeof done.cancelled === 'number') summary.cancelled = done.cancelled;
            return summary;
          }
          // Other event names are left for later protocol versions.
        }
        broke = new ConnectionError(`${target}: map stream ended before its done event`);
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        if (!(err instanceof ConnectionError) && !isNetworkError(err)) throw err;
        broke = err;
      }
      if (!accepted) {
        // Re-posting could run every input twice, so a map that broke before `accepted` is not retried.
        throw new ConnectionError(`${target}: map broke before the proxy accepted the inputs`, {
          cause: broke,
        });
      }
      if (failures >= maxReconnects) {
        throw new ConnectionError(`map ${accepted.requestId}: gave up after ${failures} resume attempts`, {
          cause: broke,
        });
      }
      brokeAt ??= Date.now();
      failures += 1;
      let waitMs = Math.min(retryMs * 2 ** (failures - 1), MAX_BACKOFF_MS);
      const grace = accepted.cancelAfterDisconnectSeconds;
      if (typeof grace === 'number') {
        // Past the grace the proxy has cancelled the map: try while it still counts.
        const left = brokeAt + grace * 1000 - GRACE_MARGIN_MS - Date.now();
        if (left <= 0 && failures > 1) {
          throw new ConnectionError(
            `map ${accepted.requestId}: could not resume within its ${grace} s grace (cancelAfterDisconnectSeconds)`,
            { cause: broke },
          );
        }
        waitMs = Math.max(0, Math.min(waitMs, left / 2));
      }
      await sleep(waitMs, undefined, { signal });
    }
  } finally {
    // A caller that stops early cancels the work it no longer wants (unless it asked to keep it).
    if (accepted && !finished && !keep) await cancelMap(base, accepted.requestId, options.headers);
  }
}

/**
 * Cancels a map (`DELETE <url>/_sluice/map/<requestId>`): its queued inputs are dropped and
 * its running calls aborted on every replica. Best effort: false when the proxy could not be told.
 */
export async function cancelMap(
  url: string | URL,
  requestId: string,
  headers?: RequestHeaders,
): Promise<boolean> {
  const target = new URL(`_sluice/map/${encodeURIComponent(requestId)}`, functionBase(url));
  try {
    const response = await fetch(target, {
      method: 'DELETE',
      headers: new Headers(headers),
      signal: AbortSignal.timeout(5_000),
    });
    await response.body?.cancel();
    return response.ok;
  } catch {
    return false;
  }
}

/** The function's base URL with a trailing slash, so `_sluice/map` resolves under its ingress path. */
export function functionBase(url: string | URL): URL {
  const base = httpUrl(url);
  base.pathname = base.pathname.replace(/\/_sluice\/map\/?$/, '');
  if (!base.pathname.endsWith('/')) base.pathname += '/';
  base.search = '';
  base.hash = '';
  return base;
}

/** `localhost:8080` parses as a URL with scheme `localhost:`; only http(s) URLs are accepted. */
function httpUrl(url: string | URL): URL {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch (err) {
    throw new ClientUsageError(`not a URL: ${String(url)} (expected http://host:port/...)`, { cause: err });
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new ClientUsageError(`not an http(s) URL: ${String(url)} (expected http://host:port/...)`);
  }
  return parsed;
}

/** fetch that turns network failures into ConnectionError and non-2xx answers into HttpStatusError. */
async function open(url: string | URL, init: RequestInit): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(url, init);
  } catch (err) {
    if (init.signal?.aborted) throw init.signal.reason;
    throw new ConnectionError(`${url}: ${describeNetworkError(err)}`, { cause: err });
  }
  if (!response.ok) throw new HttpStatusError(String(url), response.status, await response.text());
  if (!response.body) throw new ConnectionError(`${url}: response has no body`);
  return response;
}

async function* readChunks(body: ReadableStream<Uint8Array>): AsyncGenerator<StreamEvent> {
  const decoder = new TextDecoder();
  for await (const chunk of body) {
    const data = decoder.decode(chunk, { stream: true });
    if (data) yield { event: 'chunk', data, id: undefined };
  }
  const rest = decoder.decode();
  if (rest) yield { event: 'chunk', data: rest, id: undefined };
}

function encodeBody(body: unknown): string | Uint8Array | undefined {
  if (body === undefined) return undefined;
  if (typeof body === 'string' || body instanceof Uint8Array) return body;
  return JSON.stringify(body);
}

function parseData<T>(event: StreamEvent): Partial<T> {
  try {
    const value: unknown = JSON.parse(event.data);
    if (value && typeof value === 'object') return value as Partial<T>;
  } catch (err) {
    throw new MapProtocolError(`${event.event} event data is not JSON: ${event.data.slice(0, 200)}`, {
      cause: err,
    });
  }
  throw new MapProtocolError(`${event.event} event data is not an object: ${event.data.slice(0, 200)}`);
}

function toResult(event: StreamEvent, count: number | undefined): MapResult {
  const data = parseData<{
    index: number;
    output: unknown;
    replica: string;
    ms: number;
    error: MapItemError;
    attempts: number;
  }>(event);
  const index = data.index;
  if (!Number.isInteger(index) || index! < 0 || (count !== undefined && index! >= count)) {
    throw new MapProtocolError(`${event.event} event with a bad index: ${event.data.slice(0, 200)}`);
  }
  if (event.event === 'result') {
    return { index: index!, ok: true, output: data.output, replica: data.replica, ms: data.ms };
  }
  return {
    index: index!,
    ok: false,
    error: data.error ?? { message: 'unknown error' },
    attempts: data.attempts,
  };
}

/** undici reports a dropped body as a TypeError ("terminated") whose cause is the socket error. */
function isNetworkError(err: unknown): boolean {
  return err instanceof TypeError && (err.message === 'terminated' || err.message === 'fetch failed');
}

function describeNetworkError(err: unknown): string {
  const cause =
    err instanceof Error ? (err.cause as { code?: string; message?: string } | undefined) : undefined;
  if (cause?.code) return `${cause.code}${cause.message ? ` (${cause.message})` : ''}`;
  return err instanceof Error ? err.message : String(err);
}
