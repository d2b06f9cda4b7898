import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../common/net.ts';
import { indices, type MapEvent, postMap, type Replica, startReplicas } from '../harness/map-replicas.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { metricValue } from './support/proxy-harness.ts';

// A function that crashes behind a live sidecar, and a sidecar told to stop (SIGTERM): real
// nats-server, real `sluice proxy` and function processes per replica, real sockets.

const range = (n: number) => [...Array(n).keys()];
const monotonicMs = () => Number(process.hrtime.bigint()) / 1e6;

function expectEachIndexOnce(events: MapEvent[], count: number): void {
  expect([...indices(events)].sort((a, b) => a - b)).toEqual(range(count));
  expect(events[0]?.event).toBe('accepted');
  expect(events.at(-1)?.event).toBe('done');
}

const resultsOf = (events: MapEvent[], replica: string) =>
  events.filter((e) => e.event === 'result' && e.json.replica === replica);

async function metric(replica: Replica, name: string): Promise<number> {
  return metricValue(await (await fetch(`${replica.adminUrl}/metrics`)).text(), name) ?? 0;
}

async function readiness(replica: Replica): Promise<{ status: number; reason?: string }> {
  const res = await fetch(`${replica.adminUrl}/readyz`);
  return { status: res.status, reason: ((await res.json()) as { reason?: string }).reason };
}

let nats: NatsServer;
const groups: Replica[][] = [];

beforeAll(async () => {
  nats = await startNats();
});

afterAll(async () => {
  await Promise.all(groups.flat().map((r) => r.stop()));
  await nats?.stop();
});

async function group(count: number, fn: string, flags: string[]): Promise<Replica[]> {
  const replicas = await startReplicas(count, { nats: nats.url, fn, flags });
  groups.push(replicas);
  return replicas;
}

describe('a function that crashes behind a live sidecar', () => {
  const CONCURRENCY = 4;

  it('loses no input: the orphaned sidecar stops taking tasks and hands back what it held', async () => {
    const replicas = await group(2, 'default/crash', [
      '--concurrency',
      String(CONCURRENCY),
      '--map-ack-wait',
      '5',
    ]);
    const [healthy, orphan] = replicas as [Replica, Replica];
    const inputs = range(400).map((i) => ({ sleep: 20, i }));
    let killed: Promise<void> | undefined;
    const { events } = await postMap(
      healthy,
      { inputs, order: 'completion' },
      {
        onEvent: (_e, all) => {
          // About 0.4 s in: 400 inputs of 20 ms over 8 slots take about 1 s.
          if (!killed && resultsOf(all, orphan.name).length >= 60) killed = orphan.killFunction('SIGKILL');
        },
      },
    );
    await killed;
    expect(killed).toBeDefined();
    expectEachIndexOnce(events, 400);
    expect(events.filter((e) => e.event === 'error')).toEqual([]);
    expect(events.at(-1)?.json).toMatchObject({ count: 400, failed: 0 });
    // The healthy replica did the rest.
    expect(resultsOf(events, healthy.name).length).toBeGreaterThan(400 / 2);
    // The orphan took no task after it found its function gone: what it gave back or retried is
    // at most what it held then (its slots and one pull's worth), not hundreds.
    const givenBack =
      (await metric(orphan, 'sluice_map_tasks_total{outcome="handed_back"}')) +
      (await metric(orphan, 'sluice_map_tasks_total{outcome="retried"}'));
    expect(givenBack).toBeLessThanOrEqual(2 * CONCURRENCY);
    expect(await metric(orphan, 'sluice_map_tasks_total{outcome="failed"}')).toBe(0);
    // Unready while its function is down.
    expect(await readiness(orphan)).toMatchObject({
      status: 503,
      reason: expect.stringMatching(/refuses connections/),
    });
  });

  it('takes tasks again when its function comes back', async () => {
    const replicas = await group(2, 'default/restart-fn', [
      '--concurrency',
      String(CONCURRENCY),
      '--map-ack-wait',
      '5',
    ]);
    const [healthy, orphan] = replicas as [Replica, Replica];
    // 400 × 50 ms over 8 slots: about 2.5 s with both replicas, longer than the 2 s outage.
    const inputs = range(400).map((i) => ({ sleep: 50, back: i }));
    let outage: Promise<void> | undefined;
    const { events } = await postMap(
      healthy,
      { inputs, order: 'completion' },
      {
        onEvent: (_e, all) => {
          if (!outage && resultsOf(all, orphan.name).length >= 20) {
            outage = (async () => {
              await orphan.killFunction('SIGKILL');
              await waitFor(async () => (await readiness(orphan)).status === 503, {
                what: 'the orphan unready',
              });
              await sleep(2_000); // the container's restart delay, as the kubelet's backoff
              await orphan.restartFunction();
            })();
          }
        },
      },
    );
    await outage;
    expectEachIndexOnce(events, 400);
    expect(events.at(-1)?.json).toMatchObject({ count: 400, failed: 0 });
    // The new function process got tasks: the replica rejoined.
    const calls = await orphan.calls();
    expect(calls.length).toBeGreaterThan(0);
    expect((await readiness(orphan)).status).toBe(200);
  });
});

describe('a replica told to stop (SIGTERM)', () => {
  it('takes no task from then on and lets the running ones finish within --drain', async () => {
    const replicas = await group(2, 'default/drain', [
      '--concurrency',
      '2',
      '--drain',
      '20',
      '--map-ack-wait',
      '5',
    ]);
    const [stays, stops] = replicas as [Replica, Replica];
    const inputs = range(16).map((i) => ({ sleep: 800, drain: i }));
    const posting = postMap(stays, { inputs, order: 'completion' });
    // Two tasks running on the replica that stops, then SIGTERM to its proxy alone.
    await waitFor(async () => (await stops.calls()).filter((c) => c.end === undefined).length === 2, {
      what: 'two tasks running on the replica that stops',
    });
    const stoppedAt = monotonicMs();
    const stopping = new Promise((resolve) => stops.proxy.child.once('exit', resolve));
    stops.proxy.child.kill('SIGTERM');
    const { events } = await posting;
    await stopping;
    expectEachIndexOnce(events, 16);
    expect(events.at(-1)?.json).toMatchObject({ count: 16, failed: 0 });
    const calls = await stops.calls();
    // Nothing new started there after SIGTERM, and what ran then finished (not aborted) ...
    expect(calls.filter((c) => c.start > stoppedAt)).toEqual([]);
    const running = calls.filter(
      (c) => c.start <= stoppedAt && (c.end ?? Number.POSITIVE_INFINITY) > stoppedAt,
    );
    expect(running).toHaveLength(2);
    expect(running.every((c) => c.closed !== true)).toBe(true);
    // ... and its results reached the caller.
    expect(resultsOf(events, stops.name).length).toBeGreaterThanOrEqual(2);
    expect(Object.keys(await stays.attempts())).not.toContain(running[0]!.input);
  });

  it('hands back what still runs when --drain ends, without counting it as an attempt', async () => {
    // --map-max-deliver 1: a hand-back that counted would be reported failed, not run again.
    const replicas = await group(2, 'default/drain-end', [
      '--concurrency',
      '2',
      '--drain',
      '1',
      '--map-ack-wait',
      '30',
      '--map-max-deliver',
      '1',
    ]);
    const [stays, stops] = replicas as [Replica, Replica];
    const inputs = range(4).map((i) => ({ sleep: 4_000, long: i }));
    const posting = postMap(stays, { inputs, order: 'completion' });
    await waitFor(async () => (await stops.calls()).filter((c) => c.end === undefined).length === 2, {
      what: 'two long tasks running on the replica that stops',
    });
    const stoppedAt = monotonicMs();
    stops.proxy.child.kill('SIGTERM');
    const { events } = await posting;
    expectEachIndexOnce(events, 4);
    expect(events.at(-1)?.json).toMatchObject({ count: 4, failed: 0 });
    // Its two calls were cut when the drain ended (the function saw the connection close) ...
    const cut = (await stops.calls()).filter((c) => c.closed);
    expect(cut).toHaveLength(2);
    for (const call of cut) expect(call.end! - stoppedAt).toBeGreaterThanOrEqual(1_000 - 50);
    // ... and ran again, to the end, on the replica that stays, well before ack wait (30 s).
    const attempts = await stays.attempts();
    for (const call of cut) expect(attempts[call.input]).toBe(1);
    expect(resultsOf(events, stays.name)).toHaveLength(4);
  });
});
