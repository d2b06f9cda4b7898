import { createRequire } from 'node:module';
import { SluiceError } from '../../common/errors.ts';

/**
 * Node's own HTTP parser (llhttp, the one node:http runs), used for response heads only: its
 * head callback answers "upgrade", which makes llhttp stop right after the head and report
 * where the body starts, so the body bytes stay in the read untouched. `_http_common` is
 * Node's module behind node:http; the `node` devDependency pins the Node it is tested on.
 */
interface NodeHttpParser {
  initialize(type: number, resource: object, maxHeaderSize: number, lenient: number): void;
  execute(data: Buffer): number | (Error & { code?: string; reason?: string });
  [callback: number]: unknown;
}

interface NodeHttpParserClass {
  new (): NodeHttpParser;
  RESPONSE: number;
  kOnHeaders: number;
  kOnHeadersComplete: number;
  kOnBody: number;
  kOnMessageComplete: number;
  kLenientNone: number;
}

const { HTTPParser } = createRequire(import.meta.url)('_http_common') as { HTTPParser: NodeHttpParserClass };

// What the head callback returns: no body here, stop after the head (llhttp's "upgrade").
const STOP_AFTER_HEAD = 2;

/** The function answered with something that is not an HTTP/1.x response head. */
export class ResponseHeadError extends SluiceError {
  constructor(reason: string) {
    super('ERR_RESPONSE_HEAD', `the function's response head is malformed: ${reason}`);
  }
}

export interface ResponseHead {
  statusCode: number;
  statusMessage: string;
  /** Names and values, alternating, as received. */
  rawHeaders: string[];
  /** llhttp's verdict: the connection may carry another exchange after this response. */
  keepAlive: boolean;
}

/**
 * Parses one response head at a time, across as many reads as it takes. One parser serves a
 * connection's whole life (reset between responses); 1xx interim heads are skipped.
 */
export class ResponseHeadParser {
  readonly #parser = new HTTPParser();
  readonly #maxHeaderSize: number;
  #head: ResponseHead | undefined;
  /** Header pairs llhttp flushed before the head was complete (more than 32 of them). */
  #early: string[] = [];

  constructor(maxHeaderSize = 0) {
    this.#maxHeaderSize = maxHeaderSize;
    const parser = this.#parser;
    parser[HTTPParser.kOnHeaders] = (headers: string[]) => {
      for (const item of headers) this.#early.push(item);
    };
    parser[HTTPParser.kOnHeadersComplete] = (
      _major: number,
      _minor: number,
      headers: string[] | undefined,
      _method: unknown,
      _url: unknown,
      statusCode: number,
      statusMessage: string,
      _upgrade: boolean,
      keepAlive: boolean,
    ) => {
      const rawHeaders = headers
        ? this.#early.length > 0
          ? [...this.#early, ...headers]
          : headers
        : this.#early;
      this.#early = [];
      this.#head = { statusCode, statusMessage, rawHeaders, keepAlive };
      return STOP_AFTER_HEAD;
    };
    parser[HTTPParser.kOnBody] = () => {};
    parser[HTTPParser.kOnMessageComplete] = () => {};
    this.reset();
  }

  /** Ready for the next response on the connection. */
  reset(): void {
    this.#parser.initialize(HTTPParser.RESPONSE, {}, this.#maxHeaderSize, HTTPParser.kLenientNone);
    this.#head = undefined;
    this.#early = [];
  }

  /**
   * Feeds `buf` from `start`. Returns the head and the index where its body starts once the
   * head is complete; undefined while more bytes are needed. Throws ResponseHeadError.
   */
  push(buf: Buffer, start = 0): { head: ResponseHead; bodyStart: number } | undefined {
    let offset = start;
    for (;;) {
      const parsed = this.#parser.execute(offset === 0 ? buf : buf.subarray(offset));
      if (typeof parsed !== 'number')
        throw new ResponseHeadError(parsed.reason ?? parsed.code ?? 'parse error');
      const head = this.#head;
      if (!head) return undefined;
      offset += parsed;
      // 1xx heads (103 Early Hints) come before the real one; 101 would switch protocols, which
      // nothing here asked for.
      if (head.statusCode >= 200 || head.statusCode === 101) return { head, bodyStart: offset };
      this.reset();
      if (offset >= buf.length) return undefined;
    }
  }
}

/** How a response's body is delimited (RFC 9112 §6.3), in the order the rules apply. */
export type BodyFraming =
  | { kind: 'none' }
  | { kind: 'chunked' }
  | { kind: 'length'; length: number }
  | { kind: 'close' };

export function bodyFraming(requestMethod: string, head: ResponseHead): BodyFraming {
  const status = head.statusCode;
  if (requestMethod === 'HEAD' || status < 200 || status === 204 || status === 304) return { kind: 'none' };
  let transferEncoding: string | undefined;
  let contentLength: string | undefined;
  const raw = head.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toLowerCase();
    if (name === 'transfer-encoding') transferEncoding = raw[i + 1];
    else if (name === 'content-length') contentLength = raw[i + 1];
  }
  if (transferEncoding !== undefined) {
    // Only a final `chunked` delimits the body; any other coding runs to the connection's end.
    return /(^|,)\s*chunked\s*$/i.test(transferEncoding) ? { kind: 'chunked' } : { kind: 'close' };
  }
  if (contentLength !== undefined) {
    const length = Number(contentLength);
    return length === 0 ? { kind: 'none' } : { kind: 'length', length };
  }
  return { kind: 'close' };
}

/**
 * How long the function keeps an idle connection open, from its `Keep-Alive: timeout=N`
 * (seconds), if it says; undefined if it does not.
 */
export function keepAliveTimeout(head: ResponseHead): number | undefined {
  const raw = head.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.toLowerCase() !== 'keep-alive') continue;
    const seconds = /(?:^|[,\s])timeout\s*=\s*(\d+)/i.exec(raw[i + 1]!)?.[1];
    return seconds === undefined ? undefined : Number(seconds);
  }
  return undefined;
}
