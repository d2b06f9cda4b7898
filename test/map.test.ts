import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mapNames } from '../common/map-streams.ts';
import { waitFor } from '../common/net.ts';
import {
  indices,
  type MapEvent,
  postMap,
  type Replica,
  readMap,
  startReplicas,
  totalAttempts,
} from '../harness/map-replicas.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { metricValue } from './support/proxy-harness.ts';

// Map fan-out end to end: a real `nats-server -js`, three replicas each made of a real
// function process and a real `sluice proxy`, clients over real sockets.

const range = (n: number) => [...Array(n).keys()];

function expectEachIndexOnce(events: MapEvent[], count: number): void {
  expect([...indices(events)].sort((a, b) => a - b)).toEqual(range(count));
  expect(events[0]?.event).toBe('accepted');
  expect(events.at(-1)?.event).toBe('done');
}

let nats: NatsServer;

beforeAll(async () => {
  nats = await startNats();
});

afterAll(async () => {
  await nats?.stop();
});

describe('map over three replicas', () => {
  let replicas: Replica[];

  beforeAll(async () => {
    replicas = await startReplicas(3, {
      nats: nats.url,
      fn: 'default/three',
      flags: [
        '--concurrency',
        '4',
        '--map-ack-wait',
        '5',
        '--map-max-deliver',
        '3',
        '--max-map-inputs',
        '2000',
      ],
    });
  });

  afterEach(({ task }) => {
    if (task.result?.state !== 'fail') return;
    // A replica that died says why in its own output.
    for (const r of replicas ?? []) {
      const { exitCode, signalCode } = r.proxy.child;
      if (exitCode !== null || signalCode !== null)
        console.error(
          `${r.name} proxy exited (${exitCode ?? signalCode}):\n${r.proxy.output().slice(-4000)}`,
        );
    }
  });

  afterAll(async () => {
    await Promise.all((replicas ?? []).map((r) => r.stop()));
  });

  it('answers 1,000 inputs correctly, in input order, spread over every replica', async () => {
    const { status, events } = await postMap(replicas[0]!, { inputs: range(1000) });
    expect(status).toBe(200);
    expect(events[0]).toMatchObject({ event: 'accepted', json: { count: 1000 } });
    const results = events.filter((e) => e.event === 'result');
    expect(results.map((e) => Number(e.id))).toEqual(range(1000));
    for (const e of results)
      expect(e.json).toMatchObject({ index: Number(e.id), output: { square: Number(e.id) ** 2 } });
    expect(new Set(results.map((e) => e.json.replica))).toEqual(new Set(replicas.map((r) => r.name)));
    expect(events.at(-1)).toMatchObject({
      event: 'done',
      json: { requestId: events[0]!.json.requestId, count: 1000, failed: 0 },
    });
  });

  it('streams results as they complete with order "completion", and holds them with "input"', async () => {
    // Index 0 is the slowest, index 3 the fastest; 12 slots run all four at once.
    const inputs = [{ sleep: 900 }, { sleep: 600 }, { sleep: 300 }, { sleep: 0 }];
    const completion = await postMap(replicas[1]!, { inputs, order: 'completion' });
    expect(indices(completion.events)).toEqual([3, 2, 1, 0]);
    const input = await postMap(replicas[1]!, { inputs, order: 'input' });
    expect(indices(input.events)).toEqual([0, 1, 2, 3]);
    expectEachIndexOnce(input.events, 4);
  });

  it('reports 4xx at once and 5xx after --map-max-deliver attempts as error events', async () => {
    const failing = { status: 500, tag: 'retried' };
    const refused = { status: 422, tag: 'refused' };
    const { events } = await postMap(replicas[2]!, { inputs: [7, failing, refused] });
    expectEachIndexOnce(events, 3);
    const byIndex = new Map(events.filter((e) => e.id).map((e) => [Number(e.id), e]));
    expect(byIndex.get(0)).toMatchObject({ event: 'result', json: { output: { square: 49 } } });
    expect(byIndex.get(1)).toMatchObject({
      event: 'error',
      json: { index: 1, error: { status: 500, message: 'failing on purpose' }, attempts: 3 },
    });
    expect(byIndex.get(2)).toMatchObject({
      event: 'error',
      json: { index: 2, error: { status: 422 }, attempts: 1 },
    });
    expect(events.at(-1)?.json).toMatchObject({ count: 3, failed: 2 });
    expect(await totalAttempts(replicas, failing)).toBe(3);
    expect(await totalAttempts(replicas, refused)).toBe(1);
  });

  it('turns a result larger than the NATS max payload into an error event', async () => {
    const { events } = await postMap(replicas[0]!, { inputs: [{ bytes: 2 * 1024 * 1024 }, 3] });
    expectEachIndexOnce(events, 2);
    const tooLarge = events.find((e) => e.id === '0')!;
    expect(tooLarge.event).toBe('error');
    expect((tooLarge.json.error as { message: string }).message).toMatch(
      /larger than the \d+ bytes a NATS message can carry/,
    );
  });

  it('resumes a kept map from Last-Event-ID with exactly the events the client missed', async () => {
    const inputs = range(40).map((i) => ({ sleep: 20, i }));
    const leave = new AbortController();
    const first = await postMap(
      replicas[0]!,
      { inputs, keep: true },
      {
        signal: leave.signal,
        onEvent: (e) => {
          if (e.id === '14') leave.abort();
        },
      },
    );
    const requestId = first.events[0]!.json.requestId as string;
    const seen = indices(first.events);
    expect(seen.slice(0, 15)).toEqual(range(15));
    const lastEventId = String(seen.at(-1));
    // Resume on another replica: the results live in JetStream, not in the first proxy.
    const resumed = await readMap(`${replicas[2]!.url}/_sluice/map/${requestId}`, {
      headers: { 'last-event-id': lastEventId },
    });
    expect(resumed.status).toBe(200);
    expect(indices(resumed.events)).toEqual(range(40).slice(Number(lastEventId) + 1));
    expect(resumed.events.at(-1)).toMatchObject({ event: 'done', json: { requestId, count: 40, failed: 0 } });
    // A resume without Last-Event-ID replays everything.
    const replay = await readMap(`${replicas[1]!.url}/_sluice/map/${requestId}`);
    expect(indices(replay.events)).toEqual(range(40));
  });

  it('cancels the outstanding tasks of a map whose client leaves', async () => {
    const inputs = range(60).map((i) => ({ sleep: 100, cancel: i }));
    const leave = new AbortController();
    const first = await postMap(
      replicas[1]!,
      { inputs, order: 'completion' },
      {
        signal: leave.signal,
        onEvent: (e) => {
          if (e.event === 'result') leave.abort();
        },
      },
    );
    const requestId = first.events[0]!.json.requestId as string;
    const resumed = await readMap(`${replicas[0]!.url}/_sluice/map/${requestId}`);
    expect(resumed.events.at(-1)).toMatchObject({ event: 'error', json: { error: { code: 'map_failed' } } });
    expect((resumed.events.at(-1)!.json.error as { message: string }).message).toMatch(/cancelled/);
    // The queued tasks were purged from the work queue, and no replica still holds one.
    const nc = await connect({ servers: nats.url });
    try {
      const jsm = await jetstreamManager(nc);
      const names = mapNames('default/three');
      await waitFor(
        async () => {
          const info = await jsm.consumers.info(names.tasksStream, names.workerConsumer);
          return info.num_pending === 0 && info.num_ack_pending === 0;
        },
        { what: 'no task of the cancelled map left' },
      );
    } finally {
      await nc.close();
    }
    let ran = 0;
    for (const input of inputs) ran += await totalAttempts(replicas, input);
    expect(ran).toBeLessThan(60);
  });

  it('refuses bad requests with 4xx JSON naming the problem', async () => {
    const cases: [unknown, number, string, RegExp][] = [
      ['{"inputs": [1,', 400, 'invalid_json', /not JSON/],
      [{ order: 'input' }, 400, 'invalid_map_body', /^inputs:/],
      [{ inputs: 'abc' }, 400, 'invalid_map_body', /^inputs:/],
      [{ inputs: [], order: 'random' }, 400, 'invalid_map_body', /^order:/],
      [{ inputs: range(2001) }, 413, 'too_many_inputs', /--max-map-inputs/],
      [{ inputs: ['x'.repeat(2 * 1024 * 1024)] }, 413, 'input_too_large', /^inputs\[0\]/],
      [{ inputs: ['x'.repeat(11 * 1024 * 1024)] }, 413, 'body_too_large', /--max-body/],
    ];
    for (const [body, status, code, message] of cases) {
      const answer = await postMap(replicas[0]!, body);
      expect([answer.status, answer.body?.error?.code]).toEqual([status, code]);
      expect(answer.body?.error?.message).toMatch(message);
    }
    const unknown = await readMap(`${replicas[0]!.url}/_sluice/map/no-such-request`);
    expect([unknown.status, unknown.body?.error?.code]).toEqual([404, 'map_not_found']);
    const done = await postMap(replicas[0]!, { inputs: [1] });
    const requestId = done.events[0]!.json.requestId as string;
    const badId = await readMap(`${replicas[0]!.url}/_sluice/map/${requestId}`, {
      headers: { 'last-event-id': '5' },
    });
    expect([badId.status, badId.body?.error?.code]).toEqual([400, 'invalid_last_event_id']);
    const wrongMethod = await readMap(`${replicas[0]!.url}/_sluice/map`);
    expect(wrongMethod.status).toBe(405);
  });

  it('counts tasks by outcome in sluice_map_tasks_total', async () => {
    let ok = 0;
    for (const r of replicas) {
      ok +=
        metricValue(
          await (await fetch(`${r.adminUrl}/metrics`)).text(),
          'sluice_map_tasks_total{outcome="ok"}',
        ) ?? 0;
    }
    // Every earlier successful result ran on some replica at least once.
    expect(ok).toBeGreaterThanOrEqual(1000 + 8 + 1 + 1 + 40 + 1);
  });
});

describe('map when things break', () => {
  it('delivers every index exactly once when a replica is SIGKILLed mid-map', async () => {
    const replicas = await startReplicas(3, {
      nats: nats.url,
      fn: 'default/killed',
      flags: ['--concurrency', '4', '--map-ack-wait', '2'],
    });
    try {
      // replica-2's function never finishes a task, so whatever it has taken when it is killed
      // is still unfinished and must be redelivered.
      const inputs = range(150).map((i) => ({ sleep: 40, i, holdOn: 'replica-2' }));
      const victim = replicas[2]!;
      const holdsTasks = async () => Object.keys(await victim.attempts()).length > 0;
      let killed: Promise<void> | undefined;
      const { events } = await postMap(
        replicas[0]!,
        { inputs, order: 'completion' },
        {
          onEvent: (_e, all) => {
            if (killed || indices(all).length < 20) return;
            killed = waitFor(holdsTasks, { what: 'replica-2 to hold tasks' }).then(() =>
              victim.stop('SIGKILL'),
            );
          },
        },
      );
      await killed;
      expect(killed).toBeDefined();
      expectEachIndexOnce(events, 150);
      expect(events.at(-1)?.json).toMatchObject({ count: 150, failed: 0 });
      // The dead replica's unfinished tasks were redelivered to the living ones.
      const metrics = await (await fetch(`${replicas[0]!.adminUrl}/metrics`)).text();
      const metrics1 = await (await fetch(`${replicas[1]!.adminUrl}/metrics`)).text();
      const redelivered =
        (metricValue(metrics, 'sluice_map_redeliveries_total') ?? 0) +
        (metricValue(metrics1, 'sluice_map_redeliveries_total') ?? 0);
      expect(redelivered).toBeGreaterThan(0);
    } finally {
      await Promise.all(replicas.map((r) => r.stop()));
    }
  });

  it('reports an input whose last attempt died with its replica as an error, not a lost index', async () => {
    const replicas = await startReplicas(2, {
      nats: nats.url,
      fn: 'default/lost',
      flags: ['--concurrency', '1', '--map-ack-wait', '1', '--map-max-deliver', '1'],
    });
    try {
      const input = { sleep: 4000, lost: true };
      let requestId: string | undefined;
      const leave = new AbortController();
      // The replica it posts to may be the one killed: its stream then breaks, which is fine.
      const posting = postMap(
        replicas[0]!,
        { inputs: [input], keep: true },
        {
          signal: leave.signal,
          onEvent: (e) => {
            if (e.event === 'accepted') requestId = e.json.requestId as string;
          },
        },
      ).catch(() => undefined);
      const runner = await waitFor(
        async () => {
          for (const r of replicas) if ((await r.attempts())[JSON.stringify(input)]) return r;
          return undefined;
        },
        { what: 'a replica to run the input' },
      );
      await runner.stop('SIGKILL');
      leave.abort();
      await posting;
      const survivor = replicas.find((r) => r !== runner)!;
      const { events } = await readMap(`${survivor.url}/_sluice/map/${await waitFor(() => requestId)}`);
      expectEachIndexOnce(events, 1);
      expect(events[1]).toMatchObject({ event: 'error', id: '0', json: { index: 0, attempts: 1 } });
      expect((events[1]!.json.error as { message: string }).message).toMatch(/no result after 1 attempts/);
      expect(await totalAttempts([survivor], input)).toBe(0); // reported, not run a second time
    } finally {
      await Promise.all(replicas.map((r) => r.stop()));
    }
  });

  it('sends no duplicate results when a slow function outlives a short ack wait', async () => {
    const replicas = await startReplicas(3, {
      nats: nats.url,
      fn: 'default/slow',
      flags: ['--concurrency', '2', '--map-ack-wait', '1'],
    });
    try {
      const inputs = range(6).map((i) => ({ sleep: 2500, slow: i }));
      const { events } = await postMap(replicas[0]!, { inputs, order: 'completion' });
      expectEachIndexOnce(events, 6);
      // In-progress acks kept every task on its replica: none ran twice.
      for (const input of inputs) expect(await totalAttempts(replicas, input)).toBe(1);
    } finally {
      await Promise.all(replicas.map((r) => r.stop()));
    }
  });

  it('survives NATS restarting mid-map: completes, or fails with a clear error, never hangs', async () => {
    const replicas = await startReplicas(3, {
      nats: nats.url,
      fn: 'default/restart',
      flags: ['--concurrency', '4', '--map-ack-wait', '5'],
    });
    try {
      const inputs = range(200).map((i) => ({ sleep: 30, i }));
      let restarted: Promise<void> | undefined;
      const started = performance.now();
      const { events } = await postMap(
        replicas[0]!,
        { inputs },
        {
          onEvent: (_e, all) => {
            if (!restarted && indices(all).length >= 30) restarted = nats.restart();
          },
        },
      );
      await restarted;
      expect(restarted).toBeDefined();
      const last = events.at(-1)!;
      if (last.event === 'done') {
        expectEachIndexOnce(events, 200);
      } else {
        expect(last).toMatchObject({ event: 'error', json: { error: { code: expect.any(String) } } });
        expect(last.id).toBeUndefined();
        expect(new Set(indices(events)).size).toBe(indices(events).length);
      }
      expect(performance.now() - started).toBeLessThan(45_000);
      // And map works again afterwards.
      await waitFor(async () => (await fetch(`${replicas[1]!.adminUrl}/readyz`)).ok, { what: 'readiness' });
      const after = await postMap(replicas[1]!, { inputs: [2, 3] });
      expectEachIndexOnce(after.events, 2);
    } finally {
      await Promise.all(replicas.map((r) => r.stop()));
    }
  });

  it('answers 503 JSON and reports not ready while NATS is down; plain requests still pass', async () => {
    const [replica] = await startReplicas(1, { nats: nats.url, fn: 'default/outage' });
    try {
      await nats.pause();
      await waitFor(async () => (await fetch(`${replica!.adminUrl}/readyz`)).status === 503, {
        what: 'readyz to fail',
      });
      const refused = await postMap(replica!, { inputs: [1] });
      expect([refused.status, refused.body?.error?.code]).toEqual([503, 'nats_unavailable']);
      const plain = await fetch(`${replica!.url}/anything`, { method: 'POST', body: '5' });
      expect(await plain.json()).toEqual({ square: 25 });
      await nats.resume();
      await waitFor(async () => (await fetch(`${replica!.adminUrl}/readyz`)).ok, { what: 'readyz again' });
      expectEachIndexOnce((await postMap(replica!, { inputs: [4] })).events, 1);
    } finally {
      await replica?.stop();
    }
  });
});
