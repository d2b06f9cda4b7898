import { randomUUID } from 'node:crypto';
import { type JetStreamManager, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../common/log.ts';
import { mapNames } from '../common/map-streams.ts';
import { freePort, waitFor } from '../common/net.ts';
import { type NatsCluster, startNatsCluster } from '../harness/nats-cluster.ts';
import { loadOperatorConfig } from '../operator/config.ts';
import { KubeClient, resourcePath } from '../operator/kube.ts';
import { type RunningOperator, startOperator } from '../operator/main.ts';
import { kubeconfigPath } from './support/cluster.ts';

// The operator as the chart runs it beside a NATS cluster (nats.replicas: 3 → --nats with every
// server, --map-stream-replicas=3): a function's map streams get 3 replicas on three real
// nats-server processes, and its sidecars are handed the same servers. Real API server.

let kube: KubeClient;
let cluster: NatsCluster;
let nc: NatsConnection;
let jsm: JetStreamManager;
let op: RunningOperator;
let ns = '';

const fnPath = (name = '') => resourcePath('sluice.dev/v1alpha1', 'streamingfunctions', ns, name);

beforeAll(async () => {
  const kubeconfig = kubeconfigPath();
  kube = await KubeClient.load(kubeconfig);
  cluster = await startNatsCluster(3);
  nc = await connect({ servers: cluster.urls.split(',') });
  jsm = await jetstreamManager(nc);
  ns = `op-natsha-${randomUUID().slice(0, 8)}`;
  await kube.request('POST', '/api/v1/namespaces', { body: { metadata: { name: ns } } });
  const config = loadOperatorConfig(
    [
      '--kubeconfig',
      kubeconfig,
      '--namespace',
      ns,
      '--metrics',
      `127.0.0.1:${await freePort()}`,
      '--nats',
      cluster.urls,
      '--map-stream-replicas',
      '3',
      '--nats-auth=false',
    ],
    {},
  );
  op = await startOperator(config, createLogger('operator', 'silent'));
}, 120_000);

afterAll(async () => {
  await kube?.request('DELETE', fnPath()).catch(() => undefined);
  await waitFor(async () => (await kube.get<{ items: unknown[] }>(fnPath())).items.length === 0, {
    timeoutMs: 30_000,
    what: 'the functions deleted',
  }).catch(() => undefined);
  await op?.stop();
  await nc?.close();
  await cluster?.stop();
  await kube?.request('DELETE', `/api/v1/namespaces/${ns}`).catch(() => undefined);
  kube?.close();
});

describe('the operator beside a NATS cluster (--map-stream-replicas=3)', () => {
  it("makes the function's map streams with 3 replicas and hands the sidecars every server", async () => {
    await kube.request('POST', fnPath(), {
      body: {
        apiVersion: 'sluice.dev/v1alpha1',
        kind: 'StreamingFunction',
        metadata: { name: 'llm', namespace: ns },
        spec: { image: 'ghcr.io/acme/llm:1' },
      },
    });
    const names = mapNames(`${ns}/llm`);
    for (const stream of [names.tasksStream, names.resultsStream]) {
      // Once a leader is elected and its peers report in, the other two servers hold its replicas.
      const info = await waitFor(
        async () => {
          const found = await jsm.streams.info(stream).catch(() => undefined);
          return found?.cluster?.leader && found.cluster.replicas?.length === 2 ? found : undefined;
        },
        { timeoutMs: 30_000, what: `stream ${stream} with a leader and two replicas` },
      );
      expect(info.config.num_replicas).toBe(3);
      expect(info.cluster?.replicas).toHaveLength(2);
    }
    const deployment = await waitFor(() =>
      kube
        .get<{ spec: { template: { spec: { containers: { args: string[] }[] } } } }>(
          resourcePath('apps/v1', 'deployments', ns, 'llm'),
        )
        .catch(() => undefined),
    );
    expect(deployment.spec.template.spec.containers[1]!.args).toContain(`--nats=${cluster.urls}`);
  });
});
