import { type JetStreamManager, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mapNames } from '../common/map-streams.ts';
import { configCovers, deleteMapTopology, ensureMapTopology } from '../common/map-topology.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';

const settings = { ackWaitSeconds: 30, maxDeliver: 3, retentionSeconds: 600 };
const NANOS = 1_000_000_000;

describe('configCovers', () => {
  it.each([
    ['same fields', { a: 1, s: ['x'] }, { a: 1, s: ['x'], extra: 2 }, true],
    ['a value differs', { a: 1 }, { a: 2 }, false],
    ['an array differs', { s: ['x'] }, { s: ['y'] }, false],
    ['a field missing', { a: 1 }, {}, false],
  ])('%s', (_what, want, have, expected) => {
    expect(configCovers(want, have)).toBe(expected);
  });
});

describe('ensureMapTopology (real nats-server -js)', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let jsm: JetStreamManager;
  beforeAll(async () => {
    nats = await startNats();
    nc = await connect({ servers: nats.url });
    jsm = await jetstreamManager(nc);
  });
  afterAll(async () => {
    await nc?.close();
    await nats?.stop();
  });

  const looks = async (fn: string) => {
    const names = mapNames(fn);
    const results = await jsm.streams.info(names.resultsStream);
    const consumer = await jsm.consumers.info(names.tasksStream, names.workerConsumer);
    return {
      maxAge: results.config.max_age / NANOS,
      ackWait: (consumer.config.ack_wait ?? 0) / NANOS,
      maxDeliver: consumer.config.max_deliver,
    };
  };

  it('the owner creates everything once; a second call writes nothing', async () => {
    expect(await ensureMapTopology(jsm, 'team-a/owner', settings, 'owner')).toBe(true);
    expect(await ensureMapTopology(jsm, 'team-a/owner', settings, 'owner')).toBe(false);
    expect(await looks('team-a/owner')).toEqual({ maxAge: 600, ackWait: 30, maxDeliver: 4 });
  });

  it('the owner makes streams and consumer follow changed settings', async () => {
    const changed = { ackWaitSeconds: 10, maxDeliver: 5, retentionSeconds: 120 };
    expect(await ensureMapTopology(jsm, 'team-a/owner', changed, 'owner')).toBe(true);
    expect(await looks('team-a/owner')).toEqual({ maxAge: 120, ackWait: 10, maxDeliver: 6 });
  });

  it("a guest creates what is missing, then changes only the consumer's delivery settings", async () => {
    expect(await ensureMapTopology(jsm, 'team-a/guest', settings, 'guest')).toBe(true);
    expect(await ensureMapTopology(jsm, 'team-a/guest', settings, 'guest')).toBe(false);
    const other = { ackWaitSeconds: 5, maxDeliver: 2, retentionSeconds: 60 };
    expect(await ensureMapTopology(jsm, 'team-a/guest', other, 'guest')).toBe(true);
    // Retention is the owner's to change; the worker's own ack wait and attempts follow the guest.
    expect(await looks('team-a/guest')).toEqual({ maxAge: 600, ackWait: 5, maxDeliver: 3 });
  });

  it('two parties creating at once both succeed', async () => {
    const both = await Promise.all([
      ensureMapTopology(jsm, 'team-a/race', settings, 'guest'),
      ensureMapTopology(jsm, 'team-a/race', settings, 'owner'),
    ]);
    expect(both).toContain(true);
    expect(await looks('team-a/race')).toEqual({ maxAge: 600, ackWait: 30, maxDeliver: 4 });
  });

  it('deleteMapTopology removes both streams; deleting again is fine', async () => {
    await deleteMapTopology(jsm, 'team-a/owner');
    await deleteMapTopology(jsm, 'team-a/owner');
    const names = (await jsm.streams.names().next()).filter((n) => n.endsWith('_team-a_owner'));
    expect(names).toEqual([]);
  });
});
