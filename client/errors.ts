import { SluiceError } from '../common/errors.ts';
import type { WireCode } from '../common/wire-errors.ts';

/** A code of the proxy's table (WIRE_ERRORS), or one a newer proxy added. */
export type ServerErrorCode = WireCode | (string & {});

/** The server answered with a non-2xx status; `errorCode` is the JSON body's `error.code` when there is one. */
export class HttpStatusError extends SluiceError {
  readonly status: number;
  readonly errorCode: ServerErrorCode | undefined;
  readonly body: string;

  constructor(url: string, status: number, body: string) {
    const parsed = parseErrorBody(body);
    super(
      'ERR_HTTP_STATUS',
      `${url} answered ${status}${parsed?.message ? `: ${parsed.message}` : body ? `: ${body.slice(0, 200)}` : ''}`,
    );
    this.status = status;
    this.errorCode = parsed?.code;
    this.body = body;
  }
}

/** The connection could not be made, or broke and could not be resumed. */
export class ConnectionError extends SluiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_CONNECTION', message, options);
  }
}

/** `stream()` expected `text/event-stream` and got something else. */
export class NotEventStreamError extends SluiceError {
  readonly contentType: string;

  constructor(url: string, contentType: string) {
    super(
      'ERR_NOT_EVENT_STREAM',
      `${url} answered ${contentType || 'no content type'}, not text/event-stream`,
    );
    this.contentType = contentType;
  }
}

/** A map stream broke the SPEC §2 format (bad JSON, an index out of range, no requestId to resume with). */
export class MapProtocolError extends SluiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_MAP_PROTOCOL', message, options);
  }
}

/** The proxy ended the whole map with an `error` event that names no input (e.g. it was cancelled). */
export class MapFailedError extends SluiceError {
  readonly errorCode: ServerErrorCode | undefined;

  constructor(message: string, errorCode: ServerErrorCode | undefined) {
    super('ERR_MAP_FAILED', message);
    this.errorCode = errorCode;
  }
}

/** Bad arguments to a client function (inputs not an array, a bad URL). */
export class ClientUsageError extends SluiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_CLIENT_USAGE', message, options);
  }
}

function parseErrorBody(body: string): { code?: string; message?: string } | undefined {
  try {
    const parsed = JSON.parse(body) as { error?: { code?: unknown; message?: unknown } };
    const error = parsed?.error;
    if (!error || typeof error !== 'object') return undefined;
    return {
      code: typeof error.code === 'string' ? error.code : undefined,
      message: typeof error.message === 'string' ? error.message : undefined,
    };
  } catch {
    return undefined;
  }
}
