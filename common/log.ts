import pino, { type Logger } from 'pino';

export type { Logger };

/**
 * pino writes JSON lines to stdout synchronously per line, so nothing about logging holds
 * back a stream; level comes from SLUICE_LOG_LEVEL (default info).
 */
export function createLogger(component: string, level = process.env.SLUICE_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { component }, timestamp: pino.stdTimeFunctions.isoTime });
}
