import type { Server as HttpServer, IncomingMessage, ServerResponse } from 'node:http';
import { createServer as createHttp2Server, type Http2Server, type ServerHttp2Session } from 'node:http2';
import { createServer, type Server, type Socket } from 'node:net';
import { MAX_HEADER_BLOCK_BYTES } from './forwarder.ts';

/** What a client with prior knowledge sends first on an HTTP/2 cleartext connection (RFC 9113 §3.4). */
export const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

/**
 * The protocol of a connection from its first bytes: `h2` once all 24 preface bytes match,
 * `http1` at the first byte that differs (no HTTP/1.1 request starts with `PRI * HTTP/2.0`),
 * undefined while the bytes so far could still be either.
 */
export function sniffProtocol(seen: Buffer): 'http1' | 'h2' | undefined {
  const n = Math.min(seen.length, H2_PREFACE.length);
  if (!seen.subarray(0, n).equals(H2_PREFACE.subarray(0, n))) return 'http1';
  return n === H2_PREFACE.length ? 'h2' : undefined;
}

export interface PublicPort {
  /** The listening socket; HTTP/1.1 and HTTP/2 connections both arrive here. */
  server: Server;
  /** Stops accepting and closes every connection of both protocols. */
  close: () => Promise<void>;
}

/**
 * One port for HTTP/1.1 and h2c with prior knowledge. Node serves cleartext HTTP/2 only on a
 * server of its own (`allowHTTP1` exists for TLS alone, where ALPN decides), so this port reads
 * the first bytes of each connection itself, puts them back, and hands the socket to the
 * HTTP/1.1 server or to the HTTP/2 server, each of which then owns it exactly as if it had
 * accepted it. A connection that sends nothing is closed after `firstBytesTimeoutMs`.
 */
export function createPublicPort(options: {
  http1: HttpServer;
  http2: Http2Server;
  firstBytesTimeoutMs: number;
}): PublicPort {
  const { http1, http2, firstBytesTimeoutMs } = options;
  const sessions = new Set<ServerHttp2Session>();
  const waiting = new Set<Socket>();
  http2.on('session', (session: ServerHttp2Session) => {
    sessions.add(session);
    session.on('error', () => {}); // a client's broken connection; its requests see their streams close
    session.once('close', () => sessions.delete(session));
  });

  const server = createServer({ noDelay: true, pauseOnConnect: false }, (socket) => {
    waiting.add(socket);
    let seen: Buffer = Buffer.alloc(0);
    const timer = setTimeout(() => socket.destroy(), firstBytesTimeoutMs);
    // Every listener goes: nothing on the socket keeps this closure (its buffer, its timer)
    // alive for the connection's life, which for an idle stream is most of what it costs.
    const handOver = (protocol: 'http1' | 'h2') => {
      clearTimeout(timer);
      waiting.delete(socket);
      socket.off('readable', onReadable);
      socket.off('error', onError);
      socket.off('end', onEnd);
      socket.unshift(seen);
      (protocol === 'h2' ? http2 : http1).emit('connection', socket);
    };
    const onReadable = () => {
      for (
        let chunk = socket.read() as Buffer | null;
        chunk !== null;
        chunk = socket.read() as Buffer | null
      ) {
        seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
        const protocol = sniffProtocol(seen);
        if (protocol) {
          handOver(protocol);
          return;
        }
      }
    };
    const onError = () => {
      clearTimeout(timer);
      waiting.delete(socket);
    };
    // Closed before deciding: nothing to serve.
    const onEnd = () => socket.destroy();
    socket.on('readable', onReadable);
    socket.on('error', onError);
    socket.once('end', onEnd);
  });
  // The HTTP/1.1 server never listens itself; 'listening' starts its header and request timeout checks.
  server.once('listening', () => http1.emit('listening'));

  return {
    server,
    close: async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of waiting) socket.destroy();
        http1.close(() => {}); // not listening: this only stops its timeout checks
        http1.closeAllConnections();
        for (const session of sessions) session.destroy();
      });
    },
  };
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
