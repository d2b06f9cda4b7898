import { SluiceError } from '../../common/errors.ts';

/** The function's chunked body breaks RFC 9112 §7.1 framing. */
export class ChunkFramingError extends SluiceError {
  constructor(message: string) {
    super('ERR_CHUNK_FRAMING', `the function's chunked body is malformed: ${message}`);
  }
}

/** Receives the data bytes of a chunked body: `buf[start, end)`, never empty. */
export interface ChunkDataSink {
  data(buf: Buffer, start: number, end: number): void;
}

const CR = 0x0d;
const LF = 0x0a;
const SEMICOLON = 0x3b;

// Where the scanner is in the framing (numbers: type stripping has no enums).
const SIZE = 0; // hex digits of a chunk-size line
const SIZE_REST = 1; // chunk extensions (`;name=value`), up to CR
const SIZE_LF = 2; // the LF of the size line
const DATA = 3; // chunk data, `#remaining` bytes to go
const DATA_CR = 4; // the CRLF after the data
const DATA_LF = 5;
const TRAILER = 6; // the start of a trailer line, or of the final CRLF
const TRAILER_LINE = 7; // inside a trailer field line, up to its LF
const TRAILER_LF = 8; // the final LF
const DONE = 9;

// A chunk larger than this is refused: sizes stay exact in a double.
const MAX_CHUNK = 2 ** 48;

/**
 * Follows `Transfer-Encoding: chunked` framing over raw socket reads, as strictly as Node's
 * llhttp (CRLF line ends, hex sizes), without copying: it reports where each chunk's data lies
 * in the read. Work per chunk is a few byte comparisons; data bytes are skipped, not visited.
 */
export class ChunkScanner {
  #state = SIZE;
  #digits = 0;
  /** In SIZE*: the size read so far; in DATA: data bytes still to come. */
  #remaining = 0;

  get done(): boolean {
    return this.#state === DONE;
  }

  /**
   * Scans `buf` from `start`, handing each data range to `sink`. Returns the index just past the
   * end of the body when this read completes it (bytes after it are not the body's), else -1.
   * Throws ChunkFramingError on bytes that break the framing.
   */
  scan(buf: Buffer, start: number, sink: ChunkDataSink): number {
    const length = buf.length;
    let i = start;
    while (i < length) {
      switch (this.#state) {
        case DATA: {
          const end = Math.min(length, i + this.#remaining);
          sink.data(buf, i, end);
          this.#remaining -= end - i;
          i = end;
          if (this.#remaining === 0) this.#state = DATA_CR;
          continue;
        }
        case SIZE: {
          const byte = buf[i]!;
          const digit = hexValue(byte);
          if (digit >= 0) {
            this.#remaining = this.#remaining * 16 + digit;
            if (this.#remaining >= MAX_CHUNK) throw new ChunkFramingError('chunk size too large');
            this.#digits++;
          } else if (this.#digits === 0) {
            throw new ChunkFramingError(`expected a hex chunk size, got byte ${byte}`);
          } else if (byte === CR) {
            this.#state = SIZE_LF;
          } else if (byte === SEMICOLON) {
            this.#state = SIZE_REST;
          } else {
            throw new ChunkFramingError(`unexpected byte ${byte} after the chunk size`);
          }
          break;
        }
        case SIZE_REST: {
          // Extensions are rare and short: byte by byte.
          const byte = buf[i]!;
          if (byte === CR) this.#state = SIZE_LF;
          else if (byte === LF) throw new ChunkFramingError('bare LF in a size line');
          break;
        }
        case SIZE_LF:
          expect(buf[i]!, LF, 'the LF of a size line');
          this.#digits = 0;
          this.#state = this.#remaining === 0 ? TRAILER : DATA;
          break;
        case DATA_CR:
          expect(buf[i]!, CR, 'CRLF after chunk data');
          this.#state = DATA_LF;
          break;
        case DATA_LF:
          expect(buf[i]!, LF, 'CRLF after chunk data');
          this.#state = SIZE;
          break;
        case TRAILER:
          this.#state = buf[i] === CR ? TRAILER_LF : TRAILER_LINE;
          break;
        case TRAILER_LINE: {
          const lf = buf.indexOf(LF, i);
          if (lf === -1) return -1;
          i = lf;
          this.#state = TRAILER;
          break;
        }
        case TRAILER_LF:
          expect(buf[i]!, LF, 'the final CRLF');
          this.#state = DONE;
          return i + 1;
        default:
          return i; // DONE: nothing more belongs to this body
      }
      i++;
    }
    return this.#state === DONE ? i : -1;
  }
}

/** One chunk holding `data` (which must not be empty), framed. */
export function chunk(data: string | Buffer): Buffer {
  const body = typeof data === 'string' ? Buffer.from(data) : data;
  return Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from('\r\n')]);
}

/** The last chunk of a body, with no trailers. */
export const LAST_CHUNK = Buffer.from('0\r\n\r\n');

function hexValue(byte: number): number {
  if (byte >= 0x30 && byte <= 0x39) return byte - 0x30;
  const lower = byte | 0x20;
  if (lower >= 0x61 && lower <= 0x66) return lower - 0x61 + 10;
  return -1;
}

function expect(byte: number, wanted: number, what: string): void {
  if (byte !== wanted) throw new ChunkFramingError(`expected ${what}, got byte ${byte}`);
}
