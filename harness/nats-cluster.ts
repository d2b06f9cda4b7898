import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { freePort, waitFor, waitForPort } from '../common/net.ts';
import { NATS_SERVER, type Started, start } from './process.ts';

/** One server of a NATS cluster. */
export interface ClusterServer {
  name: string;
  url: string;
  monitorUrl: string;
  /** SIGKILL by default: a server that dies. */
  kill: (signal?: NodeJS.Signals) => Promise<void>;
  running: () => boolean;
  output: () => string;
}

export interface NatsCluster {
  servers: ClusterServer[];
  /** Every server's client URL, comma-separated (as `--nats` takes them). */
  urls: string;
  stop: () => Promise<void>;
}

/**
 * `size` real `nats-server -js` processes on loopback, routed to each other as one JetStream
 * cluster (as the chart's StatefulSet with nats.replicas); resolves once the cluster places a
 * stream on all `size` servers, so streams with replicas can be made.
 */
export async function startNatsCluster(size = 3): Promise<NatsCluster> {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-nats-cluster-'));
  const ports: { client: number; cluster: number; monitor: number }[] = [];
  for (let i = 0; i < size; i++)
    ports.push({ client: await freePort(), cluster: await freePort(), monitor: await freePort() });
  const routes = ports.map((p) => `nats://127.0.0.1:${p.cluster}`).join(',');
  const processes: Started[] = ports.map((p, i) =>
    start(NATS_SERVER, [
      '-js',
      '-a',
      '127.0.0.1',
      '-p',
      String(p.client),
      '-m',
      String(p.monitor),
      '-sd',
      join(dir, `n${i}`),
      '-n',
      `n${i}`,
      '--cluster_name',
      'sluice',
      '--cluster',
      `nats://127.0.0.1:${p.cluster}`,
      '--routes',
      routes,
    ]),
  );
  const servers = processes.map((server, i): ClusterServer => {
    const running = () => server.child.exitCode === null && server.child.signalCode === null;
    return {
      name: `n${i}`,
      url: `nats://127.0.0.1:${ports[i]!.client}`,
      monitorUrl: `http://127.0.0.1:${ports[i]!.monitor}`,
      kill: (signal = 'SIGKILL') => server.stop(signal),
      running,
      output: server.output,
    };
  });
  const stop = async () => {
    await Promise.all(processes.map((p) => p.stop()));
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await Promise.all(ports.map((p) => waitForPort(p.client)));
    // A full /healthz (not js-enabled-only) passes once JetStream reached its meta leader.
    await waitFor(
      async () => {
        for (const server of servers) if (!(await fetch(`${server.monitorUrl}/healthz`)).ok) return false;
        return true;
      },
      {
        timeoutMs: 30_000,
        what: `a JetStream cluster of ${size}\n${servers.map((s) => s.output()).join('\n')}`,
      },
    );
    await waitForPlacement(servers, size);
  } catch (err) {
    await stop();
    throw err;
  }
  return { servers, urls: servers.map((s) => s.url).join(','), stop };
}

/**
 * Waits until the meta leader places a stream with `size` replicas. A healthy meta group is not
 * yet that: the leader places only on peers whose statistics it has received (each server
 * sends its own soon after it starts), and until then answers "no suitable peers for
 * placement". A probe stream is made and deleted once it can be.
 */
async function waitForPlacement(servers: ClusterServer[], size: number): Promise<void> {
  if (size < 2) return;
  const nc = await connect({ servers: servers.map((s) => s.url) });
  try {
    const jsm = await jetstreamManager(nc);
    const name = 'HARNESS_PLACEMENT';
    await waitFor(
      async () => {
        try {
          await jsm.streams.add({ name, subjects: ['harness.placement'], num_replicas: size });
          return true;
        } catch (err) {
          if (/no suitable peers/i.test((err as Error).message)) return false;
          throw err;
        }
      },
      { timeoutMs: 30_000, intervalMs: 100, what: `the cluster to place a stream on ${size} servers` },
    );
    await jsm.streams.delete(name);
  } finally {
    await nc.close();
  }
}
