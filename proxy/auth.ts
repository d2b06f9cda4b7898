import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync, type StatsListener, unwatchFile, watchFile } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import type { Logger } from '../common/log.ts';

function digest(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}

/** One token a line; blank lines and `#` comments ignored. */
export function parseTokens(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'));
}

/** The token of an `Authorization: Bearer <token>` header, if it has that form. */
export function bearerToken(req: IncomingMessage): string | undefined {
  const match = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(req.headers.authorization ?? '');
  return match?.[1];
}

/**
 * The accepted bearer tokens, read from --auth-tokens-file and re-read when it changes.
 * Kubernetes updates a mounted Secret by swapping a symlink, which inotify on the file misses,
 * so the path is polled by stat (following the link) instead.
 */
export class TokenFile {
  readonly path: string;
  #digests: Buffer[] = [];
  #log: Logger;
  #listener: StatsListener;

  constructor(path: string, log: Logger, pollMs = 1000) {
    this.path = path;
    this.#log = log;
    this.#load(true);
    this.#listener = (current, previous) => {
      if (
        current.mtimeMs !== previous.mtimeMs ||
        current.ino !== previous.ino ||
        current.size !== previous.size
      ) {
        this.#load(false);
      }
    };
    watchFile(path, { interval: pollMs, persistent: false }, this.#listener);
  }

  /**
   * Compares SHA-256 digests with timingSafeEqual against every token (no early exit), so the
   * time taken says nothing about how much of a token matched or which one did.
   */
  accepts(token: string | undefined): boolean {
    if (token === undefined) return false;
    const candidate = digest(token);
    let accepted = false;
    for (const known of this.#digests) accepted = timingSafeEqual(candidate, known) || accepted;
    return accepted;
  }

  close(): void {
    unwatchFile(this.path, this.#listener);
  }

  #load(initial: boolean): void {
    try {
      this.#digests = parseTokens(readFileSync(this.path, 'utf8')).map(digest);
      this.#log.info({ path: this.path, tokens: this.#digests.length }, 'auth tokens loaded');
    } catch (err) {
      // At start-up a missing file is a configuration error; later, a half-updated mount keeps
      // the last good tokens rather than locking everyone out.
      if (initial) throw err;
      this.#log.warn({ path: this.path, err }, 'auth tokens file unreadable; keeping the previous tokens');
    }
  }
}
