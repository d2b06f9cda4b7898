// The sidecar's load reports (the autoscaler's signal) on a real nats-server: a real proxy in
// front of a real function, its reports read off `sluice.<ns>.<name>.load`.
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeReport, type LoadReport, loadSubject } from '../common/autoscale/load-report.ts';
import { waitFor } from '../common/net.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { type FunctionServer, startFunctionServer } from './support/function-server.ts';
import { curl, startProxy } from './support/proxy-harness.ts';

let nats: NatsServer;
let nc: NatsConnection;

beforeAll(async () => {
  nats = await startNats();
  nc = await connect({ servers: nats.url });
});

afterAll(async () => {
  await nc?.close();
  await nats?.stop();
});

/** Every report published for `fn` from now on. */
function listen(fn: string): LoadReport[] {
  const reports: LoadReport[] = [];
  nc.subscribe(loadSubject(fn), {
    callback: (_err, msg) => {
      const report = decodeReport(new TextDecoder().decode(msg.data));
      if (report) reports.push(report);
    },
  });
  return reports;
}

describe('sluice proxy --nats publishes its load', () => {
  let fn: FunctionServer;

  it('ready at once, streams and queue each second, the peak of a request that came and went, draining on SIGTERM', async () => {
    fn = await startFunctionServer();
    const reports = listen('team-a/echo');
    await nc.flush();
    const px = await startProxy(fn.url, [
      '--nats',
      nats.url,
      '--map=false',
      '--function=team-a/echo',
      '--replica=echo-0',
      '--concurrency=2',
      '--drain=5',
      '--advertise=http://10.0.0.7:8080',
    ]);
    // The function answers already: a ready report comes at once, not after the first interval.
    const first = await waitFor(() => reports.find((r) => r.ready), {
      timeoutMs: 5000,
      what: 'a ready report',
    });
    expect(first).toMatchObject({
      from: 'echo-0',
      kind: 'replica',
      active: 0,
      queued: 0,
      ready: true,
      draining: false,
      url: 'http://10.0.0.7:8080',
    });

    // Three streams with concurrency 2: two active, one queued.
    const streams = [curl(`${px.url}/held`), curl(`${px.url}/held`), curl(`${px.url}/held`)];
    const held = [await fn.nextStream(), await fn.nextStream()];
    const busy = await waitFor(() => reports.find((r) => r.active === 2 && r.queued === 1), {
      what: 'a report of 2 active, 1 queued',
    });
    expect(busy.peak).toBe(3);

    // A request that starts and ends between two reports still shows in the next one's peak.
    for (const stream of held) stream.res.end();
    const third = await fn.nextStream();
    third.res.end();
    await Promise.all(streams.map((s) => s.exit));
    const seen = reports.length;
    const quiet = await waitFor(() => reports.slice(seen).find((r) => r.active === 0 && r.queued === 0), {
      what: 'a report after the streams ended',
    });
    expect(quiet.peak).toBeGreaterThanOrEqual(1);
    const before = reports.length;
    await (await fetch(`${px.url}/echo`)).text();
    const after = await waitFor(() => reports.slice(before).find((r) => r.peak > 0), {
      what: 'the peak of a short request',
    });
    expect(after.active).toBe(0);

    // SIGTERM: at once a report says it drains and is not ready, so no activator sends it work.
    const stream = curl(`${px.url}/held`);
    const open = await fn.nextStream();
    const drainFrom = reports.length;
    const closing = px.proxy.close();
    const draining = await waitFor(() => reports.slice(drainFrom).find((r) => r.draining), {
      timeoutMs: 2000,
      what: 'a draining report',
    });
    expect(draining).toMatchObject({ ready: false, active: 1 });
    open.res.end('data: done\n\n');
    await stream.exit;
    await closing;
    await fn.close();
  });

  it('without --nats nothing is published and no NATS client is loaded', async () => {
    fn = await startFunctionServer();
    const px = await startProxy(fn.url, ['--function=team-a/quiet']);
    expect(px.logs().find((l) => l.msg === 'proxy listening')).toMatchObject({ loadReports: false });
    await px.proxy.close();
    await fn.close();
  });
});
