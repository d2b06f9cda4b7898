/**
 * The one code space clients see (as undici's lib/core/errors.js and nats.js's errors.ts keep
 * one): the `code` of a JSON error body `{"error":{"code","message"}}` and of the data of an
 * `event: error`. Internal errors keep their ERR_* codes (common/errors.ts) and reach the wire
 * only as a code from this table, chosen where they are answered. README.md's error list is this
 * table (test/wire-errors.test.ts checks it).
 */
import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { SluiceError } from './errors.ts';

interface WireErrorSpec {
  /** The status of a JSON error response; undefined: only ever sent as an `event: error`. */
  status: number | undefined;
  /** What happened, for the README and for whoever branches on the code. */
  meaning: string;
}

export const WIRE_ERRORS = {
  // The function
  upstream_unavailable: {
    status: 502,
    meaning: 'the function did not answer, or failed before sending headers',
  },
  upstream_failed: {
    status: 502,
    meaning: "the function's response broke off (a body that is not an event stream)",
  },
  upstream_closed: { status: 502, meaning: 'the function closed the connection mid-stream' },
  idle_timeout: { status: 504, meaning: 'no byte from the function for --idle-timeout seconds' },
  max_duration: { status: 504, meaning: 'the stream ran longer than --max-duration seconds' },
  // The request
  bad_request_target: { status: 400, meaning: 'absolute-form target, CONNECT or //path: not an open proxy' },
  unauthorized: { status: 401, meaning: 'no accepted Authorization: Bearer token (--auth-tokens-file)' },
  not_found: { status: 404, meaning: 'no such path (under /_sluice/ or on an admin port)' },
  method_not_allowed: { status: 405, meaning: 'the path does not take this method' },
  body_too_large: { status: 413, meaning: 'the body is over --max-body bytes, declared or chunked' },
  // Capacity and lifecycle
  queue_timeout: { status: 503, meaning: 'every --concurrency slot stayed busy for --queue-timeout seconds' },
  shutting_down: {
    status: 503,
    meaning: 'a new request reached a draining proxy; another replica will take it',
  },
  shutdown: { status: 503, meaning: 'the drain period ended while the request was queued or streaming' },
  internal: { status: 500, meaning: 'a bug in the proxy; the log line of the request id has the stack' },
  // Map (SPEC §2)
  map_disabled: { status: 503, meaning: '/_sluice/map on a proxy without --nats' },
  nats_unavailable: { status: 503, meaning: 'map needs NATS, which is not connected now; retry' },
  invalid_json: { status: 400, meaning: 'the map body is not JSON' },
  invalid_map_body: { status: 400, meaning: 'the map body breaks its schema; the message names the field' },
  invalid_last_event_id: { status: 400, meaning: 'Last-Event-ID of a resume is not an index of the map' },
  too_many_inputs: { status: 413, meaning: 'more inputs than --max-map-inputs' },
  input_too_large: { status: 413, meaning: 'one input is larger than a NATS message can carry' },
  map_not_found: {
    status: 404,
    meaning: 'no map with this request id in the results kept (--map-retention)',
  },
  map_failed: { status: undefined, meaning: 'the whole map ended early (cancelled, NATS gone too long)' },
  // `sluice serve`'s front port
  no_replica: { status: 503, meaning: 'sluice serve: no replica is running or became ready in time' },
  replica_unavailable: { status: 502, meaning: 'sluice serve: the chosen replica did not answer' },
  map_unavailable: {
    status: 503,
    meaning: 'sluice serve: map needs a local nats-server, which was not found',
  },
} as const satisfies Record<string, WireErrorSpec>;

export type WireCode = keyof typeof WIRE_ERRORS;
/** The codes that can be a response status (the rest travel only in `event: error`). */
export type ResponseCode = {
  [K in WireCode]: (typeof WIRE_ERRORS)[K]['status'] extends number ? K : never;
}[WireCode];

export function wireStatus(code: ResponseCode): number {
  return WIRE_ERRORS[code].status;
}

/**
 * An error a client may see: `code` stays the internal ERR_* one, `wireCode` is what the JSON
 * body or `event: error` carries.
 */
export class WireError<C extends WireCode = WireCode> extends SluiceError {
  readonly wireCode: C;

  constructor(code: string, wireCode: C, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.wireCode = wireCode;
  }
}

/** Answers `{"error":{"code","message"}}` with the code's status, unless a response already started. */
export function sendJsonError(
  res: ServerResponse,
  code: ResponseCode,
  message: string,
  headers: OutgoingHttpHeaders = {},
): void {
  if (res.headersSent) {
    // Too late for a status line: the caller decides how to end a started response.
    return;
  }
  const body = jsonErrorBody(code, message);
  // The request id the client sent (or the proxy gave it) answers with it.
  const requestId = res.req?.headers['x-request-id'];
  res.writeHead(wireStatus(code), {
    ...(typeof requestId === 'string' ? { 'x-request-id': requestId } : {}),
    ...headers,
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  res.end(body);
}

/** `{"error":{"code","message"}}`: a JSON error body, and the data of an `event: error` that ends a stream. */
export function jsonErrorBody(code: WireCode, message: string): string {
  return JSON.stringify({ error: { code, message } });
}

export const errorEventData = jsonErrorBody;
