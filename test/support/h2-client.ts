import {
  type ClientHttp2Session,
  connect,
  constants,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
} from 'node:http2';

/** What a raw HTTP/2 client saw of one response, frame by frame as node:http2 reports it. */
export interface H2Response {
  headers: IncomingHttpHeaders;
  /** The response headers ended the stream (a trailers-only gRPC answer is one such frame). */
  headersEndedStream: boolean;
  body: Buffer;
  trailers: IncomingHttpHeaders | undefined;
  /** RST_STREAM code the stream closed with (0: closed cleanly). */
  rstCode: number;
}

/** A raw HTTP/2 request on `session` (h2c with prior knowledge), read to the end. */
export async function h2Request(
  session: ClientHttp2Session,
  headers: OutgoingHttpHeaders,
  body?: Buffer | string,
): Promise<H2Response> {
  const stream = session.request(headers, { endStream: body === undefined });
  if (body !== undefined) stream.end(body);
  const chunks: Buffer[] = [];
  let responseHeaders: IncomingHttpHeaders = {};
  let headersEndedStream = false;
  let trailers: IncomingHttpHeaders | undefined;
  stream.on('response', (h, flags) => {
    responseHeaders = h;
    headersEndedStream = (flags & constants.NGHTTP2_FLAG_END_STREAM) !== 0;
  });
  stream.on('trailers', (t) => {
    trailers = t;
  });
  stream.on('data', (chunk: Buffer) => chunks.push(chunk));
  stream.on('error', () => {});
  await new Promise((resolve) => stream.once('close', resolve));
  return {
    headers: responseHeaders,
    headersEndedStream,
    body: Buffer.concat(chunks),
    trailers,
    rstCode: stream.rstCode ?? 0,
  };
}

/** An h2c session to `url` (prior knowledge, as gRPC clients connect). */
export function h2Session(url: string): ClientHttp2Session {
  const session = connect(url);
  session.on('error', () => {});
  return session;
}

/** gRPC request headers for `path`. */
export function grpcHeaders(path: string, extra: OutgoingHttpHeaders = {}): OutgoingHttpHeaders {
  return {
    ':method': 'POST',
    ':path': path,
    'content-type': 'application/grpc',
    te: 'trailers',
    ...extra,
  };
}
