import {
  createServer,
  type IncomingHttpHeaders,
  type SecureServerOptions,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from 'node:http2';
import type { AddressInfo } from 'node:net';

/** One request the HTTP/2 function holds open for the test to answer frame by frame. */
export interface HeldH2Stream {
  stream: ServerHttp2Stream;
  headers: IncomingHttpHeaders;
  /** Resolves when the function sees the stream closed; `rstCode` says how (8 = CANCEL). */
  closed: Promise<number>;
  isClosed: () => boolean;
  /** Writes and waits until the bytes are handed to the connection (or the stream is gone). */
  write: (data: string | Buffer) => Promise<void>;
}

export interface H2Function {
  port: number;
  url: string;
  nextStream: () => Promise<HeldH2Stream>;
  /** Streams opened so far. */
  count: () => number;
  close: () => Promise<void>;
}

/** A gRPC message: the 5-byte prefix (uncompressed, big-endian length), then the bytes. */
export function grpcFrame(message: string | Buffer): Buffer {
  const body = Buffer.isBuffer(message) ? message : Buffer.from(message);
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(body.length, 1);
  return Buffer.concat([prefix, body]);
}

/**
 * A raw HTTP/2 cleartext "function" (node:http2, no gRPC library) whose every stream the test
 * drives: what a gRPC server that misbehaves, ignores deadlines, sends trailers of any size
 * or floods a slow reader looks like on the wire.
 */
export async function startH2Function(options: SecureServerOptions = {}): Promise<H2Function> {
  const held: HeldH2Stream[] = [];
  const waiters: ((s: HeldH2Stream) => void)[] = [];
  let seen = 0;
  const server = createServer(options);
  server.on('stream', (stream, headers) => {
    seen++;
    let isClosed = false;
    const entry: HeldH2Stream = {
      stream,
      headers,
      // Not events.once: that rejects on 'error', and a reset stream emits one.
      closed: new Promise<number>((resolve) =>
        stream.once('close', () => {
          isClosed = true;
          resolve(stream.rstCode ?? 0);
        }),
      ),
      isClosed: () => isClosed,
      write: (data) =>
        new Promise<void>((resolve) => {
          if (stream.destroyed) resolve();
          else stream.write(data, () => resolve());
        }),
    };
    stream.on('error', () => {});
    const waiter = waiters.shift();
    if (waiter) waiter(entry);
    else held.push(entry);
  });
  const sessions = new Set<ServerHttp2Session>();
  server.on('session', (session) => {
    sessions.add(session);
    session.on('error', () => {});
    session.once('close', () => sessions.delete(session));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    nextStream: () => {
      const ready = held.shift();
      return ready ? Promise.resolve(ready) : new Promise((resolve) => waiters.push(resolve));
    },
    count: () => seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Sessions still open would keep close() waiting.
        for (const session of sessions) session.destroy();
      }),
  };
}
