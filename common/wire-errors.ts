/**
 * The one code space clients see (as undici's lib/core/errors.js and nats.js's errors.ts keep
 * one): the `code` of a JSON error body `{"error":{"code","message"}}` and of the data of an
 * `event: error`. Internal errors keep their ERR_* codes (common/errors.ts) and reach the wire
 * only as a code from this table, chosen where they are answered. README.md's error list is this
 * table (test/wire-errors.test.ts checks it).
 */
import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { Http2ServerResponse } from 'node:http2';
import { SluiceError } from './errors.ts';
import { encodeGrpcMessage, GRPC_STATUS, type GrpcStatusName, isGrpcContentType } from './grpc.ts';
import { MAX_JSON_DEPTH } from './limits.ts';

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
  deadline_exceeded: { status: 504, meaning: "a gRPC call ran past its client's grpc-timeout" },
  // The request
  bad_request_target: { status: 400, meaning: 'absolute-form target, CONNECT or //path: not an open proxy' },
  unauthorized: {
    status: 401,
    meaning:
      "no accepted Authorization: Bearer token (--auth-tokens-file; the operator's /metrics: a Kubernetes token)",
  },
  forbidden: {
    status: 403,
    meaning: "the operator's /metrics: the token's user may not get /metrics (RBAC)",
  },
  not_found: { status: 404, meaning: 'no such path (under /_sluice/ or on an admin port)' },
  method_not_allowed: { status: 405, meaning: 'the path does not take this method' },
  body_too_large: { status: 413, meaning: 'the body is over --max-body bytes, declared or chunked' },
  headers_timeout: { status: 408, meaning: 'the request headers took longer than --headers-timeout seconds' },
  body_timeout: {
    status: 408,
    meaning: 'the request body sent nothing for --body-timeout seconds (silence, not length)',
  },
  // Capacity and lifecycle
  queue_timeout: { status: 503, meaning: 'every --concurrency slot stayed busy for --queue-timeout seconds' },
  shutting_down: {
    status: 503,
    meaning: 'a new request reached a draining proxy; another replica will take it',
  },
  shutdown: { status: 503, meaning: 'the drain period ended while the request was queued or streaming' },
  internal: { status: 500, meaning: 'a bug in the proxy; the log line of the request id has the stack' },
  cold_start_timeout: {
    status: 503,
    meaning:
      'no replica became ready within coldStartTimeoutSeconds; the body names the function and the wait',
  },
  // Map (SPEC §2)
  map_disabled: { status: 503, meaning: '/_sluice/map on a proxy without --nats' },
  nats_unavailable: { status: 503, meaning: 'map needs NATS, which is not connected now; retry' },
  invalid_json: { status: 400, meaning: 'the map body is not JSON' },
  json_too_deep: {
    status: 400,
    meaning: `the map body nests arrays and objects deeper than ${MAX_JSON_DEPTH} levels`,
  },
  invalid_map_body: { status: 400, meaning: 'the map body breaks its schema; the message names the field' },
  invalid_last_event_id: { status: 400, meaning: 'Last-Event-ID of a resume is not an index of the map' },
  too_many_inputs: { status: 413, meaning: 'more inputs than --max-map-inputs' },
  input_too_large: { status: 413, meaning: 'one input is larger than a NATS message can carry' },
  map_not_found: {
    status: 404,
    meaning: 'no map with this request id in the results kept (--map-retention)',
  },
  map_failed: {
    status: undefined,
    meaning: 'the whole map ended early (NATS gone too long; a cancelled map ends with done instead)',
  },
  // `sluice serve`'s front port
  replica_unavailable: { status: 502, meaning: 'sluice serve: the chosen replica did not answer' },
  function_crashed: {
    status: 503,
    meaning: "sluice serve: every replica's function keeps exiting; the message has its exit and last line",
  },
  map_unavailable: {
    status: 503,
    meaning: 'sluice serve: map needs a local nats-server, which was not found',
  },
} as const satisfies Record<string, WireErrorSpec>;

export type WireCode = keyof typeof WIRE_ERRORS;

/**
 * What a gRPC client gets for each code, as `grpc-status` (with the message as `grpc-message`):
 * a trailers-only response before the call started, the call's trailers after. Never an HTTP
 * error page: a gRPC client reads only the status. README.md lists this mapping too.
 */
export const WIRE_GRPC_STATUS = {
  upstream_unavailable: 'UNAVAILABLE',
  upstream_failed: 'UNAVAILABLE',
  upstream_closed: 'UNAVAILABLE',
  idle_timeout: 'DEADLINE_EXCEEDED',
  max_duration: 'DEADLINE_EXCEEDED',
  deadline_exceeded: 'DEADLINE_EXCEEDED',
  bad_request_target: 'INVALID_ARGUMENT',
  unauthorized: 'UNAUTHENTICATED',
  forbidden: 'PERMISSION_DENIED',
  not_found: 'UNIMPLEMENTED',
  method_not_allowed: 'UNIMPLEMENTED',
  body_too_large: 'RESOURCE_EXHAUSTED',
  headers_timeout: 'DEADLINE_EXCEEDED',
  body_timeout: 'DEADLINE_EXCEEDED',
  queue_timeout: 'RESOURCE_EXHAUSTED',
  shutting_down: 'UNAVAILABLE',
  shutdown: 'UNAVAILABLE',
  internal: 'INTERNAL',
  cold_start_timeout: 'UNAVAILABLE',
  map_disabled: 'UNIMPLEMENTED',
  nats_unavailable: 'UNAVAILABLE',
  invalid_json: 'INVALID_ARGUMENT',
  json_too_deep: 'INVALID_ARGUMENT',
  invalid_map_body: 'INVALID_ARGUMENT',
  invalid_last_event_id: 'INVALID_ARGUMENT',
  too_many_inputs: 'RESOURCE_EXHAUSTED',
  input_too_large: 'RESOURCE_EXHAUSTED',
  map_not_found: 'NOT_FOUND',
  map_failed: 'ABORTED',
  replica_unavailable: 'UNAVAILABLE',
  function_crashed: 'UNAVAILABLE',
  map_unavailable: 'UNAVAILABLE',
} as const satisfies Record<WireCode, GrpcStatusName>;

/** The `grpc-status` and `grpc-message` fields of a code: the trailers of a call the proxy ends. */
export function grpcErrorTrailers(code: WireCode, message: string): Record<string, string> {
  return {
    'grpc-status': String(GRPC_STATUS[WIRE_GRPC_STATUS[code]]),
    'grpc-message': encodeGrpcMessage(message),
    'sluice-error-code': code,
  };
}

/** A gRPC call over HTTP/2: its errors go out as gRPC statuses, not as JSON pages. */
export function isGrpcCall(res: ServerResponse | Http2ServerResponse): res is Http2ServerResponse {
  return res instanceof Http2ServerResponse && isGrpcContentType(res.req.headers['content-type']);
}
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

/**
 * Answers `{"error":{"code","message"}}` with the code's status, unless a response already
 * started (`details` add fields beside them: `"function"`, `"waitedSeconds"`). A gRPC call gets a
 * trailers-only response with the code's gRPC status instead.
 */
export function sendJsonError(
  res: ServerResponse | Http2ServerResponse,
  code: ResponseCode,
  message: string,
  headers: OutgoingHttpHeaders = {},
  details?: Record<string, unknown>,
): void {
  if (res.headersSent) {
    // Too late for a status line: the caller decides how to end a started response.
    return;
  }
  // The request id the client sent (or the proxy gave it) answers with it.
  const requestId = res.req?.headers['x-request-id'];
  if (isGrpcCall(res)) {
    sendGrpcError(
      res,
      code,
      message,
      typeof requestId === 'string' ? { 'x-request-id': requestId, ...headers } : headers,
    );
    return;
  }
  // HTTP/2 has no connection-specific fields (Node would drop them with a warning).
  if (res instanceof Http2ServerResponse) delete headers.connection;
  const body = jsonErrorBody(code, message, details);
  res.writeHead(wireStatus(code), {
    ...(typeof requestId === 'string' ? { 'x-request-id': requestId } : {}),
    ...headers,
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
  });
  res.end(body);
}

/**
 * A trailers-only gRPC response (one HEADERS frame that ends the stream: the form gRPC clients
 * expect for a call that failed before it started). Node's compatibility layer would add an
 * empty DATA frame after the headers, so this goes through the stream itself.
 */
export function sendGrpcError(
  res: Http2ServerResponse,
  code: WireCode,
  message: string,
  headers: OutgoingHttpHeaders = {},
): void {
  if (res.headersSent || res.stream.destroyed) return;
  const { connection: _hopByHop, ...metadata } = headers;
  const requestId = res.getHeader('x-request-id');
  if (requestId !== undefined) metadata['x-request-id'] = requestId;
  const trailers = grpcErrorTrailers(code, message);
  // Kept on the response too (never sent from there), so whoever logs the call can read it back.
  res.setHeader('grpc-status', trailers['grpc-status']!);
  res.stream.respond(
    { ...metadata, ':status': 200, 'content-type': 'application/grpc', ...trailers },
    { endStream: true },
  );
}

/** `{"error":{"code","message"}}`: a JSON error body, and the data of an `event: error` that ends a stream. */
export function jsonErrorBody(code: WireCode, message: string, details?: Record<string, unknown>): string {
  return JSON.stringify({ error: { code, message, ...details } });
}

export const errorEventData = jsonErrorBody;
