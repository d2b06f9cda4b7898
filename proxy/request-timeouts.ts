import type { IncomingMessage, ServerOptions, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { jsonErrorBody, wireStatus } from '../common/wire-errors.ts';
import type { SilenceWatch } from './silence-watch.ts';

/**
 * Public-port server options: a request's headers must arrive within `headersSeconds` (from
 * its first byte; an idle kept-alive connection waits for keepAliveTimeout instead). Node
 * checks on an interval (30 s by default), so the interval is made a small part of the bound.
 */
export function headersTimeoutOptions(headersSeconds: number): ServerOptions {
  const headersTimeout = Math.round(headersSeconds * 1000);
  return {
    headersTimeout,
    connectionsCheckingInterval: Math.max(50, Math.min(1000, Math.floor(headersTimeout / 4))),
    requestTimeout: 0, // streams are bounded by --idle-timeout and --max-duration instead
  };
}

function rawJsonResponse(status: number, reason: string, body: string): string {
  return (
    `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json; charset=utf-8\r\nconnection: close\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
  );
}

const HEADERS_TIMEOUT = rawJsonResponse(
  wireStatus('headers_timeout'),
  'Request Timeout',
  jsonErrorBody('headers_timeout', 'the request headers did not arrive in time (--headers-timeout)'),
);

/**
 * The public server's 'clientError' handler: a headers timeout gets a JSON 408 like every
 * other error; anything else gets what Node answers by default (400, 431).
 */
export function answerClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (socket.writable && (socket as { bytesWritten?: number }).bytesWritten === 0) {
    if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') socket.write(HEADERS_TIMEOUT);
    else if (err.code === 'HPE_HEADER_OVERFLOW')
      socket.write('HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n');
    else socket.write('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
  }
  socket.destroy(err);
}

/**
 * Watches an HTTP/1.1 request body while it is incomplete and unanswered: `onSilent` runs when
 * the client sent no byte for the watch's idle time. Silence while the reader is behind (bytes
 * are buffered, unread) is not the client's. Returns the function that stops watching.
 */
export function watchRequestBody(
  watch: SilenceWatch,
  req: IncomingMessage,
  res: ServerResponse,
  onSilent: () => void,
): () => void {
  return watch.add({
    progress: () => req.socket.bytesRead,
    excused: () => req.complete || res.headersSent || req.readableLength > 0,
    onSilent,
  });
}
