import { type JetStreamManager, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { errorMessage, SluiceError } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import type { MapStreamSettings } from '../common/map-streams.ts';
import { deleteMapTopology, ensureMapTopology } from '../common/map-topology.ts';
import { splitNatsServers } from '../common/nats-servers.ts';
import type { FunctionView } from './function.ts';
import type { NatsAccounts } from './nats-accounts.ts';

/** NATS trouble: always worth a retry (the server restarts, a leader moves). */
export class StreamError extends SluiceError {
  readonly retryable = true;

  constructor(message: string, cause: unknown) {
    super('ERR_MAP_STREAMS', message, { cause });
  }
}

/** `replicas`: --map-stream-replicas, how many copies the NATS cluster keeps of each stream. */
export function streamSettings(fn: FunctionView, replicas = 1): MapStreamSettings {
  const { map } = fn.spec;
  return {
    ackWaitSeconds: map.ackWaitSeconds,
    maxDeliver: map.maxDeliver,
    retentionSeconds: map.resultRetentionSeconds,
    replicas,
  };
}

/**
 * Keeps each map-enabled function's JetStream streams (tasks, results) and shared worker
 * consumer equal to its spec.map (common/map-topology.ts, as their owner), and deletes them
 * when the function goes. A function whose streams were already made for its current
 * generation is not asked about again, so a steady state sends NATS nothing. With `accounts`
 * (locked-down NATS) each function's streams live in its own account, reached through it.
 */
export class StreamManager {
  private readonly url: string;
  private readonly replicas: number;
  private readonly log: Logger;
  private readonly accounts: NatsAccounts | undefined;
  private connection: Promise<{ nc: NatsConnection; jsm: JetStreamManager }> | undefined;
  private readonly ensured = new Map<string, string>();

  constructor(url: string, log: Logger, replicas = 1, accounts?: NatsAccounts) {
    this.url = url;
    this.replicas = replicas;
    this.log = log;
    this.accounts = accounts;
  }

  /** Runs `op` with a JetStream manager that sees the streams of `fn`. */
  private async withManager<T>(fn: string, op: (jsm: JetStreamManager) => Promise<T>): Promise<T> {
    if (this.accounts) return this.accounts.inAccount(fn, async (nc) => op(await jetstreamManager(nc)));
    return op(await this.manager());
  }

  private manager(): Promise<JetStreamManager> {
    this.connection ??= (async () => {
      const nc = await connect({
        servers: splitNatsServers(this.url),
        name: 'sluice-operator',
        maxReconnectAttempts: -1,
      });
      return { nc, jsm: await jetstreamManager(nc) };
    })().catch((err) => {
      this.connection = undefined;
      throw err;
    });
    return this.connection.then((c) => c.jsm);
  }

  private static fnName(fn: FunctionView): string {
    return `${fn.metadata.namespace}/${fn.metadata.name}`;
  }

  /** Creates or updates the streams and consumer; true when anything was written to NATS. */
  async ensure(fn: FunctionView): Promise<boolean> {
    const name = StreamManager.fnName(fn);
    const settings = streamSettings(fn, this.replicas);
    const stamp = `${fn.metadata.uid}/${JSON.stringify(settings)}`;
    if (this.ensured.get(name) === stamp) return false;
    let wrote: boolean;
    try {
      wrote = await this.withManager(name, (jsm) => ensureMapTopology(jsm, name, settings, 'owner'));
    } catch (err) {
      throw new StreamError(`cannot create the map streams of ${name}: ${errorMessage(err)}`, err);
    }
    this.ensured.set(name, stamp);
    if (wrote) this.log.info({ function: name }, 'map streams applied');
    return wrote;
  }

  /** Deletes both streams (the consumer goes with the tasks stream); missing ones are fine. */
  async remove(fn: FunctionView): Promise<void> {
    const name = StreamManager.fnName(fn);
    try {
      await this.withManager(name, (jsm) => deleteMapTopology(jsm, name));
    } catch (err) {
      throw new StreamError(`cannot delete the map streams of ${name}: ${errorMessage(err)}`, err);
    }
    this.ensured.delete(name);
  }

  async close(): Promise<void> {
    const connection = await this.connection?.catch(() => undefined);
    await connection?.nc.drain();
    await this.accounts?.close();
  }
}
