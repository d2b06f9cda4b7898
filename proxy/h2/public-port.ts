import type { Server as HttpServer, IncomingMessage, ServerResponse } from 'node:http';
import { createServer as createHttp2Server, type Http2Server, type ServerHttp2Session } from 'node:http2';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { MAX_HEADER_BLOCK_BYTES } from './forwarder.ts';

/** What a client with prior knowledge sends first on an HTTP/2 cleartext connection (RFC 9113 §3.4). */
export const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

/** llhttp's verdict on a connection that opens with the whole HTTP/2 preface. */
const H2_PREFACE_SEEN = 'HPE_PAUSED_H2_UPGRADE';

export interface PublicPort {
  /** The listening socket; HTTP/1.1 and HTTP/2 connections both arrive here. */
  server: HttpServer;
  /** Stops accepting and closes every connection of both protocols. */
  close: () => Promise<void>;
}

type ClientErrorHandler = (err: NodeJS.ErrnoException, socket: Duplex) => void;

/** What Node's HTTP/1.1 server answers a broken request with when no one else does. */
export const answerAsNode: ClientErrorHandler = (err, socket) => {
  if (socket.writable && (socket as { bytesWritten?: number }).bytesWritten === 0) {
    const status =
      err.code === 'HPE_HEADER_OVERFLOW'
        ? '431 Request Header Fields Too Large'
        : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? '408 Request Timeout'
          : '400 Bad Request';
    socket.write(`HTTP/1.1 ${status}\r\nConnection: close\r\n\r\n`);
  }
  socket.destroy(err);
};

/**
 * One port for HTTP/1.1 and h2c with prior knowledge. Node serves cleartext HTTP/2 only on a
 * server of its own (`allowHTTP1` exists for TLS alone, where ALPN decides), so the HTTP/1.1
 * server accepts every connection and owns it from the first byte, as if it were alone: an
 * HTTP/1.1 connection costs nothing more. llhttp recognises the HTTP/2 preface and stops with
 * HPE_PAUSED_H2_UPGRADE; that connection is then taken from the HTTP/1.1 server (its
 * listeners and its parser, which had consumed the socket natively) and given to the HTTP/2
 * server with the preface put back, which owns it exactly as if it had accepted it. A
 * connection that sends nothing meets the HTTP/1.1 server's headers timeout.
 */
export function createPublicPort(options: {
  http1: HttpServer;
  http2: Http2Server;
  /** Every other request llhttp refuses (default: Node's own answers). */
  onClientError?: ClientErrorHandler;
}): PublicPort {
  const { http1, http2, onClientError = answerAsNode } = options;
  const sessions = new Set<ServerHttp2Session>();
  http2.on('session', (session: ServerHttp2Session) => {
    sessions.add(session);
    session.on('error', () => {}); // a client's broken connection; its requests see their streams close
    session.once('close', () => sessions.delete(session));
  });
  http1.on(
    'clientError',
    (err: NodeJS.ErrnoException & { rawPacket?: Buffer; bytesParsed?: number }, socket: Duplex) => {
      if (err.code !== H2_PREFACE_SEEN || !err.rawPacket) return onClientError(err, socket);
      // The preface may have come in pieces; the last piece holds its end and what followed it.
      const after = err.rawPacket.subarray(err.bytesParsed ?? err.rawPacket.length);
      detachFromHttp1(socket as Socket);
      socket.unshift(after.length > 0 ? Buffer.concat([H2_PREFACE, after]) : H2_PREFACE);
      http2.emit('connection', socket);
    },
  );

  return {
    server: http1,
    close: async () => {
      await new Promise<void>((resolve) => {
        http1.close(() => resolve());
        http1.closeAllConnections();
        for (const session of sessions) session.destroy();
      });
    },
  };
}

/** Node's HTTP/1.1 server's hold on a connection: what its connection listener set up. */
interface Http1Socket extends Socket {
  parser?: {
    _consumed?: boolean;
    unconsume(): void;
    remove(): void;
    socket: unknown;
  } | null;
}

/**
 * Undoes what node:http's connectionListener did to a socket, as its own upgrade path does:
 * its listeners go, its parser stops consuming the socket and leaves the server's connection
 * list (whose header timeout would otherwise cut the HTTP/2 connection), and the socket stops
 * flowing so that nothing read before the HTTP/2 session takes over is emitted to no one, and
 * it ends on the client's FIN as a socket the HTTP/2 server accepted itself would.
 * Only 'close' keeps the HTTP/1.1 listener (it tolerates a socket without parser) beside any
 * that the server's owner added on 'connection'.
 */
function detachFromHttp1(socket: Http1Socket): void {
  for (const event of ['data', 'end', 'drain', 'timeout', 'pause', 'resume'] as const)
    socket.removeAllListeners(event);
  const parser = socket.parser;
  if (parser) {
    if (parser._consumed) parser.unconsume();
    parser._consumed = false;
    parser.remove();
    parser.socket = null;
    socket.parser = null;
  }
  // Node's own upgrade path does this: readableFlowing's setter puts a stream back to no mode.
  (socket as { readableFlowing: boolean | null }).readableFlowing = null;
  // node:http accepts half-open and ends a socket itself on the client's FIN (the 'end'
  // listener that just went); a net.Server's socket, which the HTTP/2 server expects, ends on
  // it by itself. Without this a client that leaves would leave its session and streams open.
  socket.allowHalfOpen = false;
}

/**
 * The HTTP/2 side of the public port. Its requests go to the same handler as HTTP/1.1 ones
 * through Node's compatibility API: Http2ServerRequest/Response offer what the handler uses
 * (headers, url, method, the body stream; writeHead, write and drain, addTrailers, end,
 * close), so admission, auth, the queue, map and both forwarding paths are one code path.
 * Where HTTP/2 differs (a trailers-only gRPC answer, RST_STREAM) the code reaches the stream.
 */
export function createH2PublicServer(
  handle: (req: IncomingMessage, res: ServerResponse) => void,
): Http2Server {
  const server = createHttp2Server({
    maxSendHeaderBlockLength: MAX_HEADER_BLOCK_BYTES,
    settings: { enablePush: false, maxHeaderListSize: MAX_HEADER_BLOCK_BYTES },
  });
  server.on('request', handle as unknown as Parameters<Http2Server['on']>[1]);
  return server;
}
