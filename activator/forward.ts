import {
  type Agent,
  type ClientRequest,
  type IncomingMessage,
  request,
  type ServerResponse,
} from 'node:http';
import { errorEventData, WIRE_ERRORS, type WireCode } from '../common/wire-errors.ts';
import { endToEndHeaders, http1RequestHeaders } from '../proxy/headers.ts';

export interface ForwardTarget {
  host: string;
  port: number;
}

export interface ForwardOptions {
  agent: Agent;
  /** The response already started while the request was held (event-stream headers and comments). */
  started: boolean;
  /** Added to the request (X-Forwarded-For from the activator). */
  headers?: Record<string, string>;
  /** The target did not answer (refused, reset) before any response; called once. */
  unavailable: (err: NodeJS.ErrnoException) => void;
  /** The first byte of the answer's body went to the client. */
  firstByte?: () => void;
}

/**
 * Forwards one request to a replica's proxy and pipes the answer back as it comes (headers
 * flushed at once, Nagle off, no buffering); a client that leaves aborts the request upstream.
 * When the response already started while the request was held, the answer continues it: an
 * event stream's body is passed on, and an answer that is not one (the function failed before
 * its headers: a 502 from the proxy) becomes an `event: error`.
 */
export function forwardTo(
  req: IncomingMessage,
  res: ServerResponse,
  target: ForwardTarget,
  options: ForwardOptions,
): ClientRequest {
  const upstream = request({
    host: target.host,
    port: target.port,
    method: req.method,
    path: req.url,
    headers: { ...http1RequestHeaders(req.headers), ...options.headers },
    agent: options.agent,
  });
  upstream.on('socket', (socket) => socket.setNoDelay(true));
  let answered = false;
  upstream.on('response', (response: IncomingMessage) => {
    answered = true;
    if (options.firstByte) response.once('data', () => options.firstByte?.());
    if (options.started) return continueStream(res, response);
    res.writeHead(response.statusCode ?? 502, endToEndHeaders(response.headers));
    res.flushHeaders();
    response.pipe(res);
    // The proxy ended the stream abruptly: end the client's the same way rather than cleanly.
    response.on('aborted', () => res.destroy());
    response.on('error', () => res.destroy());
  });
  upstream.on('error', (err: NodeJS.ErrnoException) => {
    if (answered || res.destroyed) {
      res.destroy();
      return;
    }
    answered = true;
    if (options.started) {
      endWithError(res, 'upstream_unavailable', `the replica did not answer (${err.code ?? err.message})`);
    } else {
      options.unavailable(err);
    }
  });
  res.on('close', () => {
    if (!res.writableFinished) upstream.destroy();
  });
  req.pipe(upstream);
  return upstream;
}

/** The held stream's headers are out: pass an event stream on, turn anything else into `event: error`. */
function continueStream(res: ServerResponse, response: IncomingMessage): void {
  const status = response.statusCode ?? 502;
  const type = String(response.headers['content-type'] ?? '');
  if (status >= 200 && status < 300 && type.startsWith('text/event-stream')) {
    response.pipe(res);
    response.on('aborted', () => res.destroy());
    response.on('error', () => res.destroy());
    return;
  }
  const chunks: Buffer[] = [];
  response.on('data', (chunk: Buffer) => {
    if (chunks.length < 64) chunks.push(chunk);
  });
  response.on('end', () => {
    const text = Buffer.concat(chunks).toString('utf8').slice(0, 4096);
    const { code, message, body } = errorOf(text, status, type);
    endWithError(res, code, message, { status, ...(body === undefined ? {} : { body }) });
  });
  response.on('error', () => res.destroy());
}

/**
 * The proxy's own JSON error (a wire code: the function did not answer), or the function's
 * answer, kept as it was (JSON stays JSON, as map's `event: error` keeps it).
 */
function errorOf(
  text: string,
  status: number,
  type: string,
): { code: WireCode; message: string; body?: unknown } {
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: kept as text
  }
  const error = (body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  if (typeof error?.code === 'string' && error.code in WIRE_ERRORS && typeof error.message === 'string') {
    return { code: error.code as WireCode, message: error.message };
  }
  if (status >= 200 && status < 300) {
    return {
      code: 'upstream_failed',
      message: `the function answered ${type || 'a body'}, not an event stream`,
    };
  }
  // The function failed before its headers, as far as the held stream is concerned.
  return { code: 'upstream_unavailable', message: `the function answered ${status} before any event`, body };
}

function endWithError(
  res: ServerResponse,
  code: WireCode,
  message: string,
  details?: Record<string, unknown>,
): void {
  res.end(`event: error\ndata: ${errorEventData(code, message, details)}\n\n`);
}
