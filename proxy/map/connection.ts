import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect, credsAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import type { Logger } from '../../common/log.ts';
import { splitNatsServers } from '../../common/nats-servers.ts';

/** Reconnect waits: 250 ms doubling to 5 s, with jitter so replicas do not reconnect in step. */
function backoff(): () => number {
  let attempt = 0;
  return () => {
    const base = Math.min(250 * 2 ** attempt++, 5_000);
    return base / 2 + Math.random() * (base / 2);
  };
}

/**
 * One connection per proxy, reconnecting forever: map requests wait out short outages. The
 * credentials file is read at every (re)connect, so rotated credentials (a Secret Kubernetes
 * updated in place) take over when the old ones expire, and an auth error is retried rather
 * than final while the new file is on its way.
 */
export function connectNats(
  servers: string,
  fn: string,
  replica: string,
  credentialsFile = '',
): Promise<NatsConnection> {
  return connect({
    servers: splitNatsServers(servers),
    name: `sluice-proxy ${fn} ${replica}`,
    ...(credentialsFile
      ? { authenticator: credsAuthenticator(() => readFileSync(credentialsFile)), ignoreAuthErrorAbort: true }
      : {}),
    reconnect: true,
    maxReconnectAttempts: -1,
    reconnectDelayHandler: backoff(),
    pingInterval: 10_000,
    maxPingOut: 2,
    // A stack trace captured per request (every JetStream publish) was the worker's top cost.
    noAsyncTraces: true,
  });
}

/**
 * Whether map can be served now. Emits `down` when the connection drops and `up` when it is
 * back, so map streams in flight can wait for NATS (MapRequests) instead of failing at once.
 */
export class NatsLink extends EventEmitter {
  #connected = false;
  readonly #log: Logger;

  constructor(log: Logger) {
    super();
    this.#log = log;
  }

  get connected(): boolean {
    return this.#connected;
  }

  /** Set once the topology exists and the worker runs: from then on status changes decide. */
  up(): void {
    this.#connected = true;
  }

  /** Follows the connection's status until it closes. */
  async watch(conn: NatsConnection): Promise<void> {
    for await (const status of conn.status()) {
      if (status.type === 'disconnect') {
        this.#connected = false;
        this.#log.warn({ server: status.server }, 'NATS disconnected; map requests get 503 until it is back');
        this.emit('down');
      } else if (status.type === 'reconnect') {
        this.#connected = true;
        this.#log.info({ server: status.server }, 'NATS reconnected');
        this.emit('up');
      }
    }
  }
}
