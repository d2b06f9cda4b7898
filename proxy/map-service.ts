import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';
import type { Logger } from '../common/log.ts';
import type { ProxyConfig } from './config.ts';
import type { ConcurrencyLimiter } from './limiter.ts';

/** What proxy/map/index.ts exports: the fan-out service behind `/_sluice/map` (SPEC §2). */
export interface MapService {
  /** `path` is the request path after --path-prefix stripping: `/_sluice/map` or below it. */
  handle(req: IncomingMessage, res: ServerResponse, path: string): Promise<void>;
  /** False while NATS is disconnected; /readyz reports it. */
  ready(): boolean;
  /**
   * SIGTERM: takes no more map tasks at once (those waiting for a slot go back to the queue);
   * the running ones get up to `drainMs` to finish, and what still runs then goes back too.
   */
  drain(drainMs: number): Promise<void>;
  close(): Promise<void>;
}

export interface MapDependencies {
  config: ProxyConfig;
  /** The proxy's one limiter: map tasks and plain streams share --concurrency. */
  limiter: ConcurrencyLimiter;
  registry: Registry;
  log: Logger;
}

export function isMapPath(path: string): boolean {
  return path === '/_sluice/map' || path.startsWith('/_sluice/map/');
}
