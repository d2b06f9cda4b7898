import { connect, credsAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { errorMessage } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import { type NatsAuthority, pushAccount } from '../common/nats-auth.ts';
import { splitNatsServers } from '../common/nats-servers.ts';

const encode = (creds: string) => new TextEncoder().encode(creds);

/**
 * The operator's way into a locked-down NATS: it pushes each function's account through the
 * system account (once per process, and again for all of them when the server comes back, in
 * case it lost its resolver directory), and works in a function's account (its streams) over a
 * short connection with credentials it mints for itself.
 */
export class NatsAccounts {
  readonly #url: string;
  readonly #authority: NatsAuthority;
  readonly #log: Logger;
  readonly #pushed = new Set<string>();
  #system: Promise<NatsConnection> | undefined;

  constructor(url: string, authority: NatsAuthority, log: Logger) {
    this.#url = url;
    this.#authority = authority;
    this.#log = log;
  }

  /** Makes sure the server knows the account of `fn` (`namespace/name`). */
  async ensureAccount(fn: string): Promise<void> {
    if (this.#pushed.has(fn)) return;
    await pushAccount(await this.#systemConnection(), await this.#authority.functionAccountJwt(fn));
    this.#pushed.add(fn);
  }

  /** Runs `op` on a connection in the account of `fn`, which it makes sure exists first. */
  async inAccount<T>(fn: string, op: (nc: NatsConnection) => Promise<T>): Promise<T> {
    await this.ensureAccount(fn);
    const nc = await connect({
      servers: splitNatsServers(this.#url),
      name: `sluice-operator ${fn}`,
      authenticator: credsAuthenticator(encode((await this.#authority.functionAdminCredentials(fn)).creds)),
      reconnect: false,
    });
    try {
      return await op(nc);
    } finally {
      await nc.close();
    }
  }

  async close(): Promise<void> {
    const system = await this.#system?.catch(() => undefined);
    await system?.close();
  }

  #systemConnection(): Promise<NatsConnection> {
    this.#system ??= (async () => {
      const nc = await connect({
        servers: splitNatsServers(this.#url),
        name: 'sluice-operator $SYS',
        authenticator: credsAuthenticator(encode((await this.#authority.systemCredentials()).creds)),
        maxReconnectAttempts: -1,
      });
      void this.#repushOnReconnect(nc);
      return nc;
    })().catch((err) => {
      this.#system = undefined;
      throw err;
    });
    return this.#system;
  }

  async #repushOnReconnect(nc: NatsConnection): Promise<void> {
    for await (const status of nc.status()) {
      if (status.type !== 'reconnect') continue;
      for (const fn of this.#pushed) {
        try {
          await pushAccount(nc, await this.#authority.functionAccountJwt(fn));
        } catch (err) {
          this.#pushed.delete(fn); // the next reconcile of fn pushes it again
          this.#log.warn({ function: fn, err: errorMessage(err) }, 'could not push a NATS account again');
        }
      }
    }
  }
}
