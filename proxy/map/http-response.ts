/**
 * An incremental parser of one HTTP/1.1 response (status line, headers, a body framed by
 * Content-Length, chunked transfer coding, or the connection's end), fed the bytes of a
 * socket as they arrive. Pure: no I/O. Only what a map call needs is kept: the status, the
 * content type, whether the connection may be reused, and the body, up to a limit.
 */

export interface ParsedResponse {
  status: number;
  contentType: string | undefined;
  body: Buffer;
  /** The server keeps the connection open for the next request. */
  keepAlive: boolean;
}

export class ResponseFormatError extends Error {}

/** What feed() found: more bytes needed, the response, or a body over the limit. */
export type FeedResult =
  | { kind: 'more' }
  | { kind: 'done'; response: ParsedResponse; rest: Buffer | undefined }
  | { kind: 'too_large'; bytes: number };

const CRLF = Buffer.from('\r\n');
const HEADERS_END = Buffer.from('\r\n\r\n');
/** Longest status line plus headers accepted (Node's default limit). */
const MAX_HEAD_BYTES = 16 * 1024;

type Framing = { by: 'length'; left: number } | { by: 'chunked' } | { by: 'close' };

export class ResponseParser {
  readonly #maxBytes: number;
  #buffer: Buffer | undefined;
  #head: Omit<ParsedResponse, 'body'> | undefined;
  #framing: Framing | undefined;
  #body: Buffer[] = [];
  #bodyBytes = 0;
  /** Chunked: bytes left in the current chunk's data (then its CRLF); -1 between chunks. */
  #chunkLeft = -1;
  #trailers = false;

  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  /** True once any byte of the response arrived (a connection that broke before that may be retried). */
  get started(): boolean {
    return this.#buffer !== undefined || this.#head !== undefined;
  }

  /** Consumes `chunk`; throws ResponseFormatError on bytes that are not an HTTP/1.1 response. */
  feed(chunk: Buffer): FeedResult {
    let data = this.#buffer ? Buffer.concat([this.#buffer, chunk]) : chunk;
    this.#buffer = undefined;
    while (!this.#head) {
      const end = data.indexOf(HEADERS_END);
      if (end === -1) {
        if (data.length > MAX_HEAD_BYTES) throw new ResponseFormatError('response headers too large');
        this.#buffer = data;
        return { kind: 'more' };
      }
      const { framing, ...head } = parseHead(data.toString('latin1', 0, end));
      data = data.subarray(end + HEADERS_END.length);
      if (head.status >= 100 && head.status < 200) continue; // 100 Continue, 103 Early Hints
      this.#head = head;
      this.#framing = framing;
    }
    return this.#feedBody(data);
  }

  /** The connection ended: a body framed by the close is complete now; anything else broke off. */
  end(): ParsedResponse | undefined {
    if (this.#head && this.#framing?.by === 'close') return this.#response();
    return undefined;
  }

  #feedBody(data: Buffer): FeedResult {
    const framing = this.#framing!;
    if (framing.by === 'length') {
      const take = Math.min(framing.left, data.length);
      const over = this.#add(data.subarray(0, take));
      if (over) return over;
      framing.left -= take;
      if (framing.left > 0) return { kind: 'more' };
      return this.#done(take < data.length ? data.subarray(take) : undefined);
    }
    if (framing.by === 'close') return this.#add(data) ?? { kind: 'more' };
    return this.#feedChunked(data);
  }

  #feedChunked(input: Buffer): FeedResult {
    let data = input;
    for (;;) {
      if (this.#chunkLeft > 0) {
        const take = Math.min(this.#chunkLeft, data.length);
        const over = this.#add(data.subarray(0, take));
        if (over) return over;
        this.#chunkLeft -= take;
        data = data.subarray(take);
        if (this.#chunkLeft > 0) return { kind: 'more' };
      }
      // At a line: the CRLF after a chunk's data, a size line, or a trailer line.
      const eol = data.indexOf(CRLF);
      if (eol === -1) {
        if (data.length > MAX_HEAD_BYTES) throw new ResponseFormatError('chunk line too long');
        this.#buffer = data.length > 0 ? data : undefined;
        return { kind: 'more' };
      }
      const line = data.toString('latin1', 0, eol);
      data = data.subarray(eol + 2);
      if (this.#chunkLeft === 0) {
        if (line !== '') throw new ResponseFormatError('chunk data longer than its size');
        this.#chunkLeft = -1;
        continue;
      }
      if (this.#trailers) {
        if (line === '') return this.#done(data.length > 0 ? data : undefined);
        continue;
      }
      const size = Number.parseInt(line.split(';', 1)[0]!.trim(), 16);
      if (!Number.isInteger(size) || size < 0)
        throw new ResponseFormatError(`bad chunk size line ${JSON.stringify(line)}`);
      if (size === 0) this.#trailers = true;
      else this.#chunkLeft = size;
    }
  }

  #add(piece: Buffer): FeedResult | undefined {
    if (piece.length === 0) return undefined;
    this.#bodyBytes += piece.length;
    if (this.#bodyBytes > this.#maxBytes) return { kind: 'too_large', bytes: this.#bodyBytes };
    this.#body.push(piece);
    return undefined;
  }

  #done(rest: Buffer | undefined): FeedResult {
    return { kind: 'done', response: this.#response(), rest };
  }

  #response(): ParsedResponse {
    const body = this.#body.length === 1 ? this.#body[0]! : Buffer.concat(this.#body, this.#bodyBytes);
    return { ...this.#head!, body };
  }
}

function parseHead(text: string): Omit<ParsedResponse, 'body'> & { framing: Framing } {
  const lines = text.split('\r\n');
  const statusLine = /^HTTP\/1\.([01]) (\d{3})(?: |$)/.exec(lines[0]!);
  if (!statusLine)
    throw new ResponseFormatError(`not an HTTP/1.x status line: ${JSON.stringify(lines[0]!.slice(0, 80))}`);
  const http10 = statusLine[1] === '0';
  const status = Number(statusLine[2]);
  let contentType: string | undefined;
  let length: number | undefined;
  let chunked = false;
  let connection = '';
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new ResponseFormatError(`bad header line ${JSON.stringify(line.slice(0, 80))}`);
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === 'content-type') contentType = value;
    else if (name === 'content-length') {
      if (!/^\d+$/.test(value) || (length !== undefined && length !== Number(value)))
        throw new ResponseFormatError(`bad content-length ${JSON.stringify(value)}`);
      length = Number(value);
    } else if (name === 'transfer-encoding') chunked = /(^|,)\s*chunked\s*$/i.test(value);
    else if (name === 'connection') connection = value.toLowerCase();
  }
  const noBody = status === 204 || status === 304 || (status >= 100 && status < 200);
  const framing: Framing = noBody
    ? { by: 'length', left: 0 }
    : chunked
      ? { by: 'chunked' }
      : length !== undefined
        ? { by: 'length', left: length }
        : { by: 'close' };
  const keepAlive =
    framing.by !== 'close' && (http10 ? /\bkeep-alive\b/.test(connection) : !/\bclose\b/.test(connection));
  return { status, contentType, keepAlive, framing };
}
