import { type JetStreamManager, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mapNames } from '../common/map-streams.ts';
import { ensureMapTopology } from '../common/map-topology.ts';
import { waitFor } from '../common/net.ts';
import { indices, postMap, type Replica, startReplicas } from '../harness/map-replicas.ts';
import { type NatsCluster, startNatsCluster } from '../harness/nats-cluster.ts';

// Map over a NATS cluster (the chart's nats.replicas: 3): three real nats-server processes on
// loopback routed into one JetStream cluster, the function's streams made with 3 replicas as
// the operator does with --map-stream-replicas 3, two replicas of a real `sluice proxy` and
// function process given every server's URL. One server dies mid-map.

const FN = 'default/clustered';
const range = (n: number) => [...Array(n).keys()];

let cluster: NatsCluster;
let nc: NatsConnection;
let jsm: JetStreamManager;
let replicas: Replica[] = [];

beforeAll(async () => {
  cluster = await startNatsCluster(3);
  nc = await connect({ servers: cluster.urls.split(',') });
  jsm = await jetstreamManager(nc);
  await ensureMapTopology(
    jsm,
    FN,
    { ackWaitSeconds: 5, maxDeliver: 3, retentionSeconds: 600, replicas: 3 },
    'owner',
  );
  replicas = await startReplicas(2, {
    nats: cluster.urls,
    fn: FN,
    flags: ['--concurrency', '4', '--map-ack-wait', '5'],
  });
}, 60_000);

afterAll(async () => {
  await Promise.all(replicas.map((r) => r.stop()));
  await nc?.close();
  await cluster?.stop();
});

describe('map over a 3-server JetStream cluster', () => {
  it('keeps three copies of each stream', async () => {
    const names = mapNames(FN);
    for (const stream of [names.tasksStream, names.resultsStream]) {
      const info = await waitFor(
        async () => {
          const found = await jsm.streams.info(stream).catch(() => undefined);
          return found?.cluster?.leader ? found : undefined;
        },
        { what: `stream ${stream} with a leader` },
      );
      expect(info.config.num_replicas).toBe(3);
      expect(info.cluster?.leader).toMatch(/^n[012]$/);
      expect(info.cluster?.replicas).toHaveLength(2);
    }
  });

  it('loses nothing and sends nothing twice when the server leading the tasks stream dies mid-map', async () => {
    const leader = (await jsm.streams.info(mapNames(FN).tasksStream)).cluster!.leader!;
    const victim = cluster.servers.find((s) => s.name === leader)!;
    const inputs = range(400).map((i) => ({ sleep: 20, i }));
    let killed: Promise<void> | undefined;
    const { events } = await postMap(
      replicas[0]!,
      { inputs, order: 'completion' },
      {
        onEvent: (_e, all) => {
          if (!killed && indices(all).length >= 100) killed = victim.kill('SIGKILL');
        },
      },
    );
    await killed;
    expect(killed).toBeDefined();
    expect(victim.running()).toBe(false);
    const got = indices(events);
    expect(got.length).toBe(new Set(got).size); // nothing twice
    expect([...got].sort((a, b) => a - b)).toEqual(range(400)); // nothing lost
    expect(events.at(-1)).toMatchObject({ event: 'done', json: { count: 400, failed: 0 } }); // the map ends
    // The surviving servers elected a new leader for the stream.
    // (The client may still be reconnecting away from the killed server: ask until one answers.)
    const after = await waitFor(() => jsm.streams.info(mapNames(FN).tasksStream).catch(() => undefined), {
      timeoutMs: 30_000,
      what: 'the tasks stream info from a surviving server',
    });
    expect(after.cluster?.leader).toMatch(/^n[012]$/);
    expect(after.cluster?.leader).not.toBe(leader);
  }, 120_000);
});
