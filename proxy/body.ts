import type { IncomingMessage } from 'node:http';
import { Transform, type TransformCallback } from 'node:stream';
import { WireError } from '../common/wire-errors.ts';

export class BodyTooLargeError extends WireError<'body_too_large'> {
  readonly limit: number;

  constructor(limit: number) {
    super(
      'ERR_BODY_TOO_LARGE',
      'body_too_large',
      `request body is larger than the limit of ${limit} bytes (--max-body)`,
    );
    this.limit = limit;
  }
}

/** The declared Content-Length, when there is one and it can be trusted as a number. */
export function declaredLength(req: IncomingMessage): number | undefined {
  const header = req.headers['content-length'];
  if (header === undefined || !/^\d+$/.test(header)) return undefined;
  return Number(header);
}

/** An HTTP/1.1 request with a body to come: a non-zero length, or chunked (RFC 9112 §6.3). */
export function hasBody(req: IncomingMessage): boolean {
  if (req.headers['transfer-encoding'] !== undefined) return true;
  return (declaredLength(req) ?? 0) > 0;
}

/**
 * Reads a whole request body, refusing (before reading) a declared length over `limit` and
 * (while reading) a chunked body that grows past it. For handlers that need the body at once.
 */
export async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = declaredLength(req);
  if (declared !== undefined && declared > limit) throw new BodyTooLargeError(limit);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) throw new BodyTooLargeError(limit);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

/**
 * Passes a streamed body through unchanged and errors with BodyTooLargeError once more than
 * `limit` bytes went by, so a forwarded chunked upload cannot exceed --max-body either.
 */
export class BodyLimit extends Transform {
  readonly limit: number;
  #seen = 0;

  constructor(limit: number) {
    super();
    this.limit = limit;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#seen += chunk.length;
    if (this.#seen > this.limit) callback(new BodyTooLargeError(this.limit));
    else callback(null, chunk);
  }
}
