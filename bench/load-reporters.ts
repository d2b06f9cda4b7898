// Plays the sidecars of many functions for `npm run bench:operator`: every reporter publishes one
// real load report a second on `sluice.<ns>.<fn>.load` (common/autoscale/load-report.ts), spread
// evenly over the second and over a few connections, as 10,000 sidecars on many nodes would.
//   node bench/load-reporters.ts <nats-url> <namespace> <fn-prefix> <functions> <replicas-per-function>
// Each function's replicas carry between 0 and 6 streams in all (what one replica aims at with
// concurrency 8), changing every second, so the autoscaler decides on moving numbers without
// changing any replica count. Prints one JSON line a second: {"sent": n}.
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { encodeReport, loadSubject } from '../common/autoscale/load-report.ts';

const [url = '', namespace = '', prefix = '', functionsArg = '1000', replicasArg = '10'] =
  process.argv.slice(2);
const functions = Number(functionsArg);
const replicas = Number(replicasArg);
const CONNECTIONS = 8;
const SLICES = 20; // publish a twentieth of the reports every 50 ms

const connections: NatsConnection[] = [];
for (let i = 0; i < CONNECTIONS; i++) {
  connections.push(await connect({ servers: url, name: `bench reporters ${i}`, noAsyncTraces: true }));
}
const reporters = Array.from({ length: functions * replicas }, (_, i) => {
  const fn = Math.floor(i / replicas);
  return {
    subject: loadSubject(`${namespace}/${prefix}${fn}`),
    replica: i % replicas,
    fn,
    name: `${prefix}${fn}-r${i % replicas}`,
  };
});

let sent = 0;
let slice = 0;
let second = 0;
const timer = setInterval(() => {
  const from = Math.floor((reporters.length * slice) / SLICES);
  const to = Math.floor((reporters.length * (slice + 1)) / SLICES);
  for (let i = from; i < to; i++) {
    const r = reporters[i]!;
    // 0..6 streams per function, spread over its first replicas; a different mix each second.
    const total = (r.fn + second) % 7;
    const active = r.replica < total ? 1 : 0;
    connections[i % CONNECTIONS]!.publish(
      r.subject,
      encodeReport({
        from: r.name,
        kind: 'replica',
        active,
        queued: 0,
        peak: active,
        ready: true,
        draining: false,
        url: `http://10.1.${r.fn % 250}.${r.replica}:8080`,
        maps: 0,
      }),
    );
    sent++;
  }
  slice = (slice + 1) % SLICES;
  if (slice === 0) {
    second++;
    process.stdout.write(`${JSON.stringify({ sent })}\n`);
  }
}, 1000 / SLICES);

process.once('SIGTERM', async () => {
  clearInterval(timer);
  await Promise.all(connections.map((nc) => nc.flush().then(() => nc.close())));
  process.exit(0);
});
