import { setTimeout as sleep } from 'node:timers/promises';
import { type JetStreamManager, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { map } from '../client/index.ts';
import { mapNames } from '../common/map-streams.ts';
import { waitFor } from '../common/net.ts';
import {
  type FunctionCall,
  indices,
  type MapEvent,
  postMap,
  type Replica,
  readMap,
  startReplicas,
} from '../harness/map-replicas.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { startTcpRelay } from './support/tcp-relay.ts';

// Cancelling a map through the fan-out (SPEC §2): DELETE on any replica, a caller gone past
// its grace, a caller back within it. Real nats-server, three replicas of a real `sluice
// proxy` and function process each, clients over real sockets. Times are CLOCK_MONOTONIC ms,
// which this process and the functions share.

const FN = 'default/cancel';
const GRACE_S = 2;
/** How soon a cancel must reach every function (SPEC §2 via issue 16). */
const ABORT_WITHIN_MS = 500;
const range = (n: number) => [...Array(n).keys()];
const monotonicMs = () => Number(process.hrtime.bigint()) / 1e6;

let nats: NatsServer;
let nc: NatsConnection;
let jsm: JetStreamManager;
let replicas: Replica[];

beforeAll(async () => {
  nats = await startNats();
  nc = await connect({ servers: nats.url });
  jsm = await jetstreamManager(nc);
  replicas = await startReplicas(3, {
    nats: nats.url,
    fn: FN,
    flags: ['--concurrency', '2', '--map-ack-wait', '10', '--map-cancel-after-disconnect', String(GRACE_S)],
  });
});

afterAll(async () => {
  await Promise.all((replicas ?? []).map((r) => r.stop()));
  await nc?.close();
  await nats?.stop();
});

/** Every call any function saw of inputs tagged `tag`. */
async function callsOf(tag: string): Promise<FunctionCall[]> {
  const all = await Promise.all(replicas.map((r) => r.calls()));
  return all.flat().filter((call) => (JSON.parse(call.input) as { tag?: string }).tag === tag);
}

/** The calls of `tag`, once each function has seen every one of them end (answered or cut). */
async function everyCallEnded(tag: string): Promise<FunctionCall[]> {
  return waitFor(
    async () => {
      const calls = await callsOf(tag);
      return calls.every((call) => call.end !== undefined) ? calls : undefined;
    },
    { what: `every call of ${tag} ended, as the functions saw it` },
  );
}

async function cancelledRecord(requestId: string): Promise<{ reason: string } | undefined> {
  const names = mapNames(FN);
  const stored = await jsm.streams
    .getMessage(names.resultsStream, { last_by_subj: `${names.resultsOf(requestId)}.cancelled` })
    .catch(() => undefined);
  return stored?.json<{ reason: string }>();
}

async function nothingQueuedOrRunning(): Promise<boolean> {
  const names = mapNames(FN);
  const info = await jsm.consumers.info(names.tasksStream, names.workerConsumer);
  return info.num_pending === 0 && info.num_ack_pending === 0;
}

const sortedIndices = (events: MapEvent[]) => indices(events).sort((a, b) => a - b);

describe('cancelling a map', () => {
  it('DELETE on another replica drops the queued inputs and aborts the running calls everywhere', async () => {
    // 60 inputs of 2 s over 6 slots: about 20 s if nothing cancels them.
    const inputs = range(60).map((i) => ({ sleep: 2_000, tag: 'delete', i }));
    let deleted: Promise<Response> | undefined;
    let deletedAt = 0;
    const { events } = await postMap(
      replicas[0]!,
      { inputs, order: 'completion' },
      {
        onEvent: (_event, all) => {
          if (deleted || indices(all).length < 6) return;
          deletedAt = monotonicMs();
          deleted = fetch(`${replicas[2]!.url}/_sluice/map/${all[0]!.json.requestId}`, { method: 'DELETE' });
        },
      },
    );
    const answer = await deleted!;
    const requestId = events[0]!.json.requestId as string;
    expect([answer.status, await answer.json()]).toEqual([200, { requestId, cancelled: true }]);
    // The stream still being read ends with done, counting what was cancelled.
    const done = events.at(-1)!;
    const got = indices(events);
    expect(new Set(got).size).toBe(got.length);
    expect(done).toMatchObject({ event: 'done', json: { requestId, count: 60, failed: 0 } });
    expect(done.json.cancelled).toBe(60 - got.length);
    expect(done.json.cancelled).toBeGreaterThan(0);
    await waitFor(nothingQueuedOrRunning, { what: 'no task of the cancelled map left' });
    // Every call the functions saw ended within the bound of the DELETE: the running ones were
    // cut (the function saw its connection close), and no queued input was called later.
    const calls = await everyCallEnded('delete');
    expect(calls.length).toBeLessThan(60);
    for (const call of calls) {
      expect(call.start).toBeLessThan(deletedAt + ABORT_WITHIN_MS);
      expect(call.end! - deletedAt).toBeLessThan(ABORT_WITHIN_MS);
    }
    expect(calls.filter((c) => c.closed).length).toBeGreaterThan(0);
    expect(await cancelledRecord(requestId)).toEqual({ reason: 'deleted' });
    // A resume replays what was stored and ends the same way.
    const resumed = await readMap(`${replicas[1]!.url}/_sluice/map/${requestId}`);
    expect(sortedIndices(resumed.events)).toEqual([...got].sort((a, b) => a - b));
    expect(resumed.events.at(-1)).toMatchObject({ event: 'done', json: { cancelled: done.json.cancelled } });
    // DELETE of a map nobody knows is a 404.
    const unknown = await fetch(`${replicas[0]!.url}/_sluice/map/no-such-map`, { method: 'DELETE' });
    expect(unknown.status).toBe(404);
  });

  it('cancels a map whose caller left and did not come back within the grace', async () => {
    // 60 inputs of 1 s over 6 slots: about 10 s, far longer than the 2 s grace.
    const inputs = range(60).map((i) => ({ sleep: 1_000, tag: 'gone', i }));
    const leave = new AbortController();
    let leftAt = 0;
    const first = await postMap(
      replicas[1]!,
      { inputs, order: 'completion' },
      {
        signal: leave.signal,
        onEvent: (_e, all) => {
          if (indices(all).length >= 6 && !leave.signal.aborted) {
            leftAt = monotonicMs();
            leave.abort();
          }
        },
      },
    );
    const requestId = first.events[0]!.json.requestId as string;
    expect(first.events[0]!.json.cancelAfterDisconnectSeconds).toBe(GRACE_S);
    await waitFor(() => cancelledRecord(requestId), { what: 'the map cancelled', timeoutMs: 15_000 });
    await waitFor(nothingQueuedOrRunning, { what: 'no task of the cancelled map left' });
    expect(await cancelledRecord(requestId)).toEqual({ reason: 'disconnected' });
    const calls = await everyCallEnded('gone');
    const cutoff = leftAt + GRACE_S * 1000 + ABORT_WITHIN_MS;
    // The map ran on during the grace ...
    expect(calls.filter((c) => c.start > leftAt + 500).length).toBeGreaterThan(0);
    // ... and nothing reached any function after the grace (plus the bound), nor ran on past it.
    for (const call of calls) {
      expect(call.start).toBeLessThan(cutoff);
      expect(call.end!).toBeLessThan(cutoff);
    }
    expect(calls.length).toBeLessThan(60);
  });

  it('keeps a map whose caller comes back within the grace: every index exactly once', async () => {
    // 60 inputs of 400 ms over 6 slots: about 4 s, longer than the 2 s grace.
    const inputs = range(60).map((i) => ({ sleep: 400, tag: 'back', i }));
    const leave = new AbortController();
    const first = await postMap(
      replicas[0]!,
      { inputs },
      {
        signal: leave.signal,
        onEvent: (_e, all) => {
          if (indices(all).length >= 6) leave.abort();
        },
      },
    );
    const requestId = first.events[0]!.json.requestId as string;
    const seen = indices(first.events);
    await sleep(1_000); // the caller's network is out for a second, well inside the grace
    const resumed = await readMap(`${replicas[2]!.url}/_sluice/map/${requestId}`, {
      headers: { 'last-event-id': String(seen.at(-1)) },
    });
    expect([...seen, ...indices(resumed.events)]).toEqual(range(60));
    expect(resumed.events.at(-1)).toEqual(
      expect.objectContaining({ event: 'done', json: { requestId, count: 60, failed: 0 } }),
    );
    expect(await cancelledRecord(requestId)).toBeUndefined();
    expect((await callsOf('back')).length).toBe(60);
  });

  it('never cancels a kept map: it runs to the end with nobody reading', async () => {
    // 30 inputs of 600 ms over 6 slots: about 3 s, past the 2 s grace.
    const inputs = range(30).map((i) => ({ sleep: 600, tag: 'kept', i }));
    const leave = new AbortController();
    const first = await postMap(
      replicas[1]!,
      { inputs, keep: true },
      {
        signal: leave.signal,
        onEvent: (event) => {
          if (event.event === 'accepted') leave.abort();
        },
      },
    );
    const requestId = first.events[0]!.json.requestId as string;
    expect(first.events[0]!.json.cancelAfterDisconnectSeconds).toBeNull();
    await waitFor(async () => (await callsOf('kept')).filter((c) => c.end !== undefined).length === 30, {
      what: 'every input of the kept map answered',
      timeoutMs: 20_000,
    });
    const replay = await readMap(`${replicas[2]!.url}/_sluice/map/${requestId}`);
    expect(indices(replay.events)).toEqual(range(30));
    expect(replay.events.at(-1)?.json).toEqual({ requestId, count: 30, failed: 0 });
  });
});

describe('the TypeScript client (client/) against real replicas', () => {
  it('resumes a broken stream within the grace and yields every index once', async () => {
    const relay = await startTcpRelay(replicas[0]!.url);
    try {
      const inputs = range(40).map((i) => ({ sleep: 300, tag: 'client', i }));
      const seen: number[] = [];
      const results = map(relay.url, inputs, { order: 'completion', retryMs: 200 });
      let next = await results.next();
      while (!next.done) {
        seen.push(next.value.index);
        if (seen.length === 8) relay.cut(); // the network drops the stream mid-map
        next = await results.next();
      }
      expect(seen.sort((a, b) => a - b)).toEqual(range(40));
      expect(next.value).toEqual({ requestId: expect.any(String), count: 40, failed: 0 });
      expect(await cancelledRecord(next.value.requestId)).toBeUndefined();
    } finally {
      await relay.close();
    }
  });

  it('cancels the map at once when the caller stops reading', async () => {
    const inputs = range(40).map((i) => ({ sleep: 1_000, tag: 'client-break', i }));
    let requestId = '';
    for await (const result of map(replicas[1]!.url, inputs, {
      order: 'completion',
      onAccepted: (a) => {
        requestId = a.requestId;
      },
    })) {
      if (result.index >= 0) break;
    }
    expect(await cancelledRecord(requestId)).toEqual({ reason: 'deleted' });
    await waitFor(nothingQueuedOrRunning, { what: 'no task of the abandoned map left' });
    expect((await callsOf('client-break')).length).toBeLessThan(40);
  });
});
