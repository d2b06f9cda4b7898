import { type JetStreamManager, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { mapNames } from '../common/map-streams.ts';

/**
 * Map tasks of the local function that are load: waiting in its JetStream consumer or running
 * on a replica (the front sees neither: they reach the replicas over NATS).
 */
export class PendingTasks {
  readonly #url: string;
  readonly #fn: string;
  #connection: Promise<{ nc: NatsConnection; jsm: JetStreamManager }> | undefined;

  constructor(url: string, fn: string) {
    this.#url = url;
    this.#fn = fn;
  }

  async count(): Promise<number> {
    try {
      this.#connection ??= (async () => {
        const nc = await connect({ servers: this.#url, name: 'sluice serve autoscaler' });
        return { nc, jsm: await jetstreamManager(nc) };
      })();
      const { jsm } = await this.#connection;
      const names = mapNames(this.#fn);
      const info = await jsm.consumers.info(names.tasksStream, names.workerConsumer);
      return info.num_pending + info.num_ack_pending;
    } catch {
      // No consumer yet (no map call so far), or NATS restarting: no tasks known now.
      const connection = await this.#connection?.catch(() => undefined);
      if (!connection || connection.nc.isClosed()) this.#connection = undefined;
      return 0;
    }
  }

  async close(): Promise<void> {
    const connection = await this.#connection?.catch(() => undefined);
    await connection?.nc.close();
  }
}
