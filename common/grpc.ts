/**
 * gRPC over HTTP/2 as the proxy sees it (grpc/doc/PROTOCOL-HTTP2.md): which requests are gRPC,
 * the status codes, `grpc-timeout` and `grpc-message` encodings, and message framing. Pure
 * functions; the proxy never decodes a message, it only counts them.
 */

/** The canonical status codes (grpc/doc/statuscodes.md). */
export const GRPC_STATUS = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

export type GrpcStatusName = keyof typeof GRPC_STATUS;

const NAMES = Object.fromEntries(Object.entries(GRPC_STATUS).map(([name, code]) => [code, name])) as Record<
  number,
  GrpcStatusName
>;

/** `0` -> `OK`; a code outside the table (servers may send any int) -> `UNKNOWN`. */
export function grpcStatusName(code: string | number | undefined): GrpcStatusName {
  return NAMES[Number(code)] ?? 'UNKNOWN';
}

/** `application/grpc`, `application/grpc+proto`, `application/grpc;...` (gRPC-Web is another protocol). */
export function isGrpcContentType(contentType: string | string[] | undefined): boolean {
  return /^application\/grpc(?:$|[+;])/i.test(String(contentType ?? ''));
}

const TIMEOUT_UNIT_MS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1000, m: 1, u: 1e-3, n: 1e-6 };

/** `grpc-timeout` (1-8 digits and a unit, H M S m u n) in milliseconds; undefined when absent or malformed. */
export function parseGrpcTimeout(value: string | string[] | undefined): number | undefined {
  const match = /^(\d{1,8})([HMSmun])$/.exec(String(value ?? ''));
  if (!match) return undefined;
  return Number(match[1]) * TIMEOUT_UNIT_MS[match[2]!]!;
}

/** Milliseconds as a `grpc-timeout` value: whole milliseconds, in the smallest unit whose count fits 8 digits. */
export function formatGrpcTimeout(ms: number): string {
  const whole = Math.max(0, Math.floor(ms));
  if (whole < 100_000_000) return `${whole}m`;
  const seconds = Math.floor(whole / 1000);
  if (seconds < 100_000_000) return `${seconds}S`;
  return `${Math.min(99_999_999, Math.floor(seconds / 3600))}H`;
}

/** Percent-encodes a `grpc-message` (everything outside printable ASCII, and `%`), as the spec asks. */
export function encodeGrpcMessage(message: string): string {
  let out = '';
  for (const byte of Buffer.from(message, 'utf8')) {
    out +=
      byte >= 0x20 && byte <= 0x7e && byte !== 0x25
        ? String.fromCharCode(byte)
        : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/**
 * Follows the length-prefixed messages of one direction of a call (1 flag byte, 4 length bytes,
 * the message) across DATA frames split anywhere, counting the messages that completed and the
 * largest one announced; the bytes themselves are never copied.
 */
export class GrpcMessageTracker {
  messages = 0;
  largest = 0;
  /** Bytes of the current message still to come; 0 between messages. */
  #remaining = 0;
  /** Prefix bytes read so far of the next message (0-5) and the length they spell. */
  #prefixRead = 0;
  #length = 0;

  /** Feeds one chunk; returns how many messages it completed. */
  push(chunk: Uint8Array): number {
    const before = this.messages;
    let pos = 0;
    while (pos < chunk.length) {
      if (this.#remaining > 0) {
        const take = Math.min(this.#remaining, chunk.length - pos);
        this.#remaining -= take;
        pos += take;
        if (this.#remaining === 0) this.messages++;
        continue;
      }
      // Prefix: byte 0 is the compressed flag, bytes 1-4 the big-endian length.
      if (this.#prefixRead > 0) this.#length = this.#length * 256 + chunk[pos]!;
      this.#prefixRead++;
      pos++;
      if (this.#prefixRead === 5) {
        this.#prefixRead = 0;
        this.largest = Math.max(this.largest, this.#length);
        if (this.#length === 0) this.messages++;
        else this.#remaining = this.#length;
        this.#length = 0;
      }
    }
    return this.messages - before;
  }

  /** True between messages: the bytes so far end exactly where a message ended. */
  get atBoundary(): boolean {
    return this.#remaining === 0 && this.#prefixRead === 0;
  }
}
