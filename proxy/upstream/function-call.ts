import type { IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { BodyTooLargeError, declaredLength } from '../body.ts';
import { endToEndRawHeaders } from '../headers.ts';
import type { StreamRelay, UpstreamFlow } from '../stream-relay.ts';
import { ChunkFramingError, LAST_CHUNK } from './chunked.ts';
import type { ConnectionOwner, UpstreamPool, UpstreamSocket } from './pool.ts';
import { requestHead } from './request-head.ts';
import {
  bodyFraming,
  keepAliveTimeout,
  type ResponseHeadError,
  ResponseHeadParser,
} from './response-head.ts';

export interface FunctionCallOptions {
  pool: UpstreamPool;
  /** The most bytes a chunked request body may carry (--max-body). */
  maxBody: number;
  /** The function's URL, for error messages. */
  upstream: string;
}

// Parsers wait here between heads, so an idle stream holds none (as node:http's FreeList).
const idleParsers: ResponseHeadParser[] = [];
const MAX_IDLE_PARSERS = 1000;

function takeParser(): ResponseHeadParser {
  return idleParsers.pop() ?? new ResponseHeadParser();
}

function returnParser(parser: ResponseHeadParser): void {
  parser.reset();
  if (idleParsers.length < MAX_IDLE_PARSERS) idleParsers.push(parser);
}

/**
 * One request to the function over a kept-alive connection from the pool: writes the request
 * (head, then the body as it arrives), has Node's parser read the response head, then hands
 * every read of the body to the relay untouched. The connection goes back to the pool when the
 * exchange ended cleanly on both sides; otherwise it is closed, which tells the function to stop.
 */
export class FunctionCall implements ConnectionOwner, UpstreamFlow {
  readonly #req: IncomingMessage;
  readonly #relay: StreamRelay;
  readonly #options: FunctionCallOptions;
  readonly #socket: UpstreamSocket;
  readonly #requestId: string;
  #parser: ResponseHeadParser | undefined;
  /** Set once the response head arrived: whether the connection may carry another exchange. */
  #keepAlive: boolean | undefined;
  /** The function's own idle timeout for this connection (Keep-Alive: timeout=N), in seconds. */
  #keepAliveSeconds: number | undefined;
  /** The whole request, body included, has been written. */
  #requestSent = false;
  #bodyPaused = false;
  #ended = false;

  constructor(req: IncomingMessage, requestId: string, relay: StreamRelay, options: FunctionCallOptions) {
    this.#req = req;
    this.#relay = relay;
    this.#options = options;
    this.#requestId = requestId;
    relay.connect(this);
    const length = declaredLength(req);
    // An HTTP/2 client's body has no framing of its own for HTTP/1.1: without a length, chunked.
    const chunked =
      length === undefined &&
      (req.headers['transfer-encoding'] !== undefined ||
        (req.httpVersionMajor === 2 && !/^(GET|HEAD)$/.test(req.method ?? 'GET')));
    const head = requestHead(
      {
        method: req.method ?? 'GET',
        url: req.url ?? '/',
        headers: req.headers,
        remoteAddress: req.socket.remoteAddress,
        encrypted: (req.socket as Socket & { encrypted?: boolean }).encrypted === true,
      },
      { requestId, defaultHost: options.pool.authority, chunked },
    );
    this.#socket = options.pool.take(this);
    this.#socket.write(head, 'latin1');
    if (chunked || (length !== undefined && length > 0)) this.#sendBody(chunked);
    else this.#requestSent = true;
  }

  /** Streams the request body on; a chunked one is re-framed and held to --max-body. */
  #sendBody(chunked: boolean): void {
    const req = this.#req;
    const socket = this.#socket;
    const limit = this.#options.maxBody;
    let seen = 0;
    req.on('data', (data: Buffer) => {
      if (this.#ended) return;
      let flowing: boolean;
      if (chunked) {
        seen += data.length;
        if (seen > limit) {
          req.pause();
          this.#relay.fail({ code: 'body_too_large', message: new BodyTooLargeError(limit).message });
          return;
        }
        socket.cork();
        socket.write(`${data.length.toString(16)}\r\n`, 'latin1');
        socket.write(data);
        flowing = socket.write('\r\n', 'latin1');
        socket.uncork();
      } else {
        flowing = socket.write(data);
      }
      if (!flowing) {
        this.#bodyPaused = true;
        req.pause();
      }
    });
    req.on('end', () => {
      if (this.#ended) return;
      if (chunked) socket.write(LAST_CHUNK);
      this.#requestSent = true;
    });
  }

  onData(chunk: Buffer): void {
    try {
      this.#read(chunk);
    } catch (err) {
      // A bug here ends this stream (outcome internal), not every stream of the pod.
      this.#relay.fail({ code: 'internal', message: `proxy error: ${(err as Error).message}` });
    }
  }

  #read(chunk: Buffer): void {
    const relay = this.#relay;
    let offset = 0;
    if (this.#keepAlive === undefined) {
      this.#parser ??= takeParser();
      const parser = this.#parser;
      let parsed: ReturnType<ResponseHeadParser['push']>;
      try {
        parsed = parser.push(chunk);
      } catch (err) {
        this.#failBeforeHead((err as ResponseHeadError).message);
        return;
      }
      if (!parsed) return;
      this.#parser = undefined;
      returnParser(parser);
      const head = parsed.head;
      if (head.statusCode === 101) {
        this.#failBeforeHead('it switched protocols, which no request asked for');
        return;
      }
      this.#keepAlive = head.keepAlive;
      this.#keepAliveSeconds = keepAliveTimeout(head);
      offset = parsed.bodyStart;
      const headers = endToEndRawHeaders(head.rawHeaders);
      headers['x-request-id'] = this.#requestId;
      relay.start({
        statusCode: head.statusCode,
        statusMessage: head.statusMessage,
        headers,
        framing: bodyFraming(this.#req.method ?? 'GET', head),
      });
    }
    // Where the response ended in this read (a body-less one ends with its head).
    let end = offset;
    if (!relay.done) {
      try {
        end = relay.body(chunk, offset);
      } catch (err) {
        if (!(err instanceof ChunkFramingError)) throw err;
        relay.fail({ code: 'upstream_failed', message: err.message });
        return;
      }
    }
    if (offset > 0) relay.flushHead();
    // Bytes after the end of the response: the connection cannot be trusted with another.
    if (relay.done) this.#end(end === chunk.length);
  }

  #failBeforeHead(why: string): void {
    this.#relay.fail({
      code: 'upstream_unavailable',
      message: `the function at ${this.#options.upstream} did not answer properly: ${why}`,
    });
  }

  onDrain(): void {
    if (!this.#bodyPaused) return;
    this.#bodyPaused = false;
    this.#req.resume();
  }

  onClose(error: Error | undefined): void {
    if (this.#ended) return;
    this.#ended = true;
    if (this.#keepAlive !== undefined) {
      this.#relay.upstreamEnded();
      return;
    }
    const code = (error as NodeJS.ErrnoException | undefined)?.code ?? 'connection closed';
    this.#relay.fail({
      code: 'upstream_unavailable',
      message: `the function at ${this.#options.upstream} did not answer (${code})`,
    });
  }

  pause(): void {
    if (!this.#ended) this.#socket.pause();
  }

  resume(): void {
    if (!this.#ended) this.#socket.resume();
  }

  /** The client left or the relay failed: the function sees its connection close now. */
  abort(): void {
    this.#end(false);
  }

  /** The exchange is over: the connection goes back to the pool if it can carry another. */
  #end(clean: boolean): void {
    if (this.#ended) return;
    this.#ended = true;
    const socket = this.#socket;
    if (this.#parser) {
      returnParser(this.#parser);
      this.#parser = undefined;
    }
    if (clean && this.#requestSent && this.#keepAlive) {
      socket.resume(); // a client that was slow may have left it paused
      this.#options.pool.give(socket, this.#keepAliveSeconds);
    } else {
      socket.owner = undefined;
      socket.destroy();
    }
  }
}
