import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { styleText } from 'node:util';

type Colour = Parameters<typeof styleText>[0];
const COLOURS: Colour[] = [
  'cyan',
  'magenta',
  'yellow',
  'green',
  'blue',
  'redBright',
  'cyanBright',
  'magentaBright',
];

/** Writes lines with a `[label]` prefix, coloured only when stdout is a terminal (styleText checks). */
export class PrefixedLog {
  readonly #label: string;
  readonly #colour: Colour;

  constructor(label: string, colourIndex: number) {
    this.#label = label;
    this.#colour = COLOURS[colourIndex % COLOURS.length]!;
  }

  line(text: string): void {
    process.stdout.write(
      `${styleText(this.#colour, `[${this.#label}]`, { stream: process.stdout })} ${text}\n`,
    );
  }

  /** Prints each line of `stream` through `format`; a line formatted to undefined is left out. */
  follow(
    stream: Readable | null,
    format: (line: string) => string | undefined = (l) => l,
    seen: (line: string) => void = () => {},
  ): void {
    if (!stream) return;
    createInterface({ input: stream, crlfDelay: Number.POSITIVE_INFINITY }).on('line', (l) => {
      seen(l);
      const text = format(l);
      if (text !== undefined) this.line(text);
    });
  }
}

/** nats-server's warnings and errors; its start-up banner and other [INF] lines only at debug level. */
export function formatNatsLine(
  line: string,
  level = process.env.SLUICE_LOG_LEVEL ?? 'info',
): string | undefined {
  if (level === 'debug' || level === 'trace') return line;
  return line.includes('[INF]') ? undefined : line;
}

/** pino's JSON lines (the proxy's) shortened to `level msg key=value ...` for a terminal. */
export function formatPinoLine(line: string): string {
  let record: Record<string, unknown>;
  try {
    record = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  if (typeof record !== 'object' || record === null || typeof record.msg !== 'string') return line;
  const { level, time: _time, pid: _pid, hostname: _hostname, component: _component, msg, ...rest } = record;
  const levels: Record<number, string> = {
    10: 'trace',
    20: 'debug',
    30: 'info',
    40: 'warn',
    50: 'error',
    60: 'fatal',
  };
  const fields = Object.entries(rest).map(
    ([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`,
  );
  return [levels[level as number] ?? String(level), msg, ...fields].join(' ');
}

export interface SupervisedOptions {
  label: string;
  command: string;
  args: string[];
  env: NodeJS.ProcessEnv;
  cwd: string;
  log: PrefixedLog;
  /** Serve's own messages (restarts), under its own prefix. */
  report: (message: string) => void;
  format?: (line: string) => string | undefined;
  /** Called on every exit, before any restart, so the front stops routing to a dead replica. */
  onExit?: () => void;
  /** Called with the spawn error when the command cannot be started at all (ENOENT, EACCES). */
  onSpawnError?: (err: NodeJS.ErrnoException) => void;
}

/** Exits in a row, each before HEALTHY_AFTER_MS, after which the process counts as crash-looping. */
const CRASH_LOOP_EXITS = 2;
const FIRST_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30_000;
// A process that stayed up this long counts as healthy again: the next crash restarts quickly.
const HEALTHY_AFTER_MS = 10_000;

/**
 * A child process kept running: when it exits on its own it is restarted after an exponential
 * backoff (0.5 s, 1 s, 2 s ... 30 s). Each child leads its own process group, so stop() also
 * ends what it spawned (torchrun's ranks) and a terminal's Ctrl-C reaches serve alone, which
 * then stops everything in order.
 */
export class Supervised {
  readonly #options: SupervisedOptions;
  #child: ChildProcess | undefined;
  #stopping = false;
  #crashes = 0;
  #restartTimer: NodeJS.Timeout | undefined;
  #lastExit = '';
  #lastLine = '';

  constructor(options: SupervisedOptions) {
    this.#options = options;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  get restarts(): number {
    return this.#crashes;
  }

  /**
   * Why the process keeps failing, once its first start and restart both ended within
   * HEALTHY_AFTER_MS: how it exited, how often, and the last line it printed.
   */
  get crashLoop(): string | undefined {
    if (this.#crashes < CRASH_LOOP_EXITS) return undefined;
    const last = this.#lastLine ? `; its last line: ${JSON.stringify(this.#lastLine.slice(0, 500))}` : '';
    return `${this.#options.label} ${this.#lastExit} (${this.#crashes} times in a row)${last}`;
  }

  start(): void {
    const { command, args, env, cwd, log, format } = this.#options;
    const startedAt = Date.now();
    const child = spawn(command, args, { env, cwd, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    this.#child = child;
    if (child.pid !== undefined) this.#options.report(`${this.#options.label} started (pid ${child.pid})`);
    const seen = (line: string) => {
      if (line.trim()) this.#lastLine = line.trim();
    };
    log.follow(child.stdout, format, seen);
    log.follow(child.stderr, format, seen);
    child.once('error', (err: NodeJS.ErrnoException) => {
      if (child.pid === undefined) {
        this.#options.onSpawnError?.(err);
        this.#scheduleRestart(`could not start ${command}: ${err.message}`, startedAt);
      }
    });
    child.once('exit', (code, signal) => {
      this.#options.onExit?.();
      if (this.#stopping) return;
      this.#scheduleRestart(signal ? `killed by ${signal}` : `exited with code ${code}`, startedAt);
    });
  }

  #scheduleRestart(why: string, startedAt: number): void {
    if (this.#stopping) return;
    this.#lastExit = why;
    if (Date.now() - startedAt >= HEALTHY_AFTER_MS) this.#crashes = 0;
    const delay = Math.min(FIRST_BACKOFF_MS * 2 ** this.#crashes, MAX_BACKOFF_MS);
    this.#crashes += 1;
    this.#options.report(
      `${this.#options.label} ${why}; restarting in ${(delay / 1000).toFixed(1)} s (restart ${this.#crashes})`,
    );
    this.#restartTimer = setTimeout(() => this.start(), delay);
  }

  /** SIGTERM to the process group, SIGKILL after `graceMs`; resolves once the process is gone. */
  async stop(graceMs: number): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#restartTimer);
    const child = this.#child;
    if (!child?.pid || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    signalGroup(child.pid, 'SIGTERM');
    const timer = setTimeout(() => signalGroup(child.pid!, 'SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
    // What the process left behind in its group (a rank that ignored SIGTERM) goes too.
    signalGroup(child.pid, 'SIGKILL');
  }

  /** Last resort when serve itself is exiting: no waiting, nothing left behind. */
  killNow(): void {
    this.#stopping = true;
    clearTimeout(this.#restartTimer);
    if (this.#child?.pid) signalGroup(this.#child.pid, 'SIGKILL');
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // ESRCH: the group is already gone.
  }
}
