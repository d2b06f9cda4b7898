import { randomUUID } from 'node:crypto';
import { type JetStreamManager, jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../common/log.ts';
import { mapNames, WORKER_CONSUMER } from '../common/map-streams.ts';
import { freePort, waitFor } from '../common/net.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { loadOperatorConfig } from '../operator/config.ts';
import { KubeClient, type KubeObject, resourcePath } from '../operator/kube.ts';
import { type RunningOperator, startOperator } from '../operator/main.ts';
import { STREAMS_FINALIZER } from '../operator/reconciler.ts';
import { kubeconfigPath } from './support/cluster.ts';

const SECOND = 1_000_000_000;
let kubeconfig = '';
let kube: KubeClient;
let nats: NatsServer;
let nc: NatsConnection;
let jsm: JetStreamManager;
let op: RunningOperator;
let ns = '';

const fnPath = (name = '') => resourcePath('sluice.dev/v1alpha1', 'streamingfunctions', ns, name);
const get = (path: string) => kube.get<KubeObject>(path).catch(() => undefined);
const streamInfo = (name: string) => jsm.streams.info(name).catch(() => undefined);

beforeAll(async () => {
  kubeconfig = kubeconfigPath();
  kube = await KubeClient.load(kubeconfig);
  nats = await startNats();
  nc = await connect({ servers: nats.url });
  jsm = await jetstreamManager(nc);
  ns = `op-streams-${randomUUID().slice(0, 8)}`;
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
      nats.url,
      // This NATS has no auth (the locked-down path: test/operator-lockdown.test.ts).
      '--nats-auth=false',
    ],
    {},
  );
  op = await startOperator(config, createLogger('operator', 'silent'));
});

afterAll(async () => {
  // Functions go while the operator still runs: their finalizer would otherwise hold the namespace.
  await kube.request('DELETE', fnPath()).catch(() => undefined);
  await waitFor(async () => (await kube.get<{ items: unknown[] }>(fnPath())).items.length === 0, {
    timeoutMs: 30_000,
    what: 'the functions deleted',
  }).catch(() => undefined);
  await op?.stop();
  await nc?.close();
  await nats?.stop();
  await kube?.request('DELETE', `/api/v1/namespaces/${ns}`).catch(() => undefined);
  kube?.close();
});

describe('map streams follow the StreamingFunction (real nats-server -js, real API server)', () => {
  it('created with the function, changed with spec.map, deleted through the finalizer', async () => {
    const names = mapNames(`${ns}/llm`);
    await kube.request('POST', fnPath(), {
      body: {
        apiVersion: 'sluice.dev/v1alpha1',
        kind: 'StreamingFunction',
        metadata: { name: 'llm', namespace: ns },
        spec: {
          image: 'ghcr.io/acme/llm:1',
          map: { ackWaitSeconds: 30, maxDeliver: 4, resultRetentionSeconds: 300 },
        },
      },
    });
    const fn = await waitFor(
      async () => {
        const f = await get(fnPath('llm'));
        return f?.metadata?.finalizers?.includes(STREAMS_FINALIZER) ? f : undefined;
      },
      { what: 'the streams finalizer' },
    );
    expect(fn.metadata?.finalizers).toEqual([STREAMS_FINALIZER]);

    const results = await waitFor(() => streamInfo(names.resultsStream), { what: 'the results stream' });
    expect(results.config.max_age).toBe(300 * SECOND);
    expect(results.config.subjects).toEqual([names.resultsSubjects]);
    const tasks = await waitFor(() => streamInfo(names.tasksStream), { what: 'the tasks stream' });
    expect(tasks.config.retention).toBe('workqueue');
    // The operator makes the streams, then the consumer: wait for the last of them.
    const consumer = await waitFor(
      () => jsm.consumers.info(names.tasksStream, WORKER_CONSUMER).catch(() => undefined),
      { what: 'the worker consumer' },
    );
    expect(consumer.config.ack_wait).toBe(30 * SECOND);
    expect(consumer.config.max_deliver).toBe(5); // one extra delivery reports the failure

    // The sidecar gets the same NATS and function name, so proxies and operator agree.
    const deployment = await waitFor(() => get(resourcePath('apps/v1', 'deployments', ns, 'llm')));
    expect(deployment.spec.template.spec.containers[1].args).toEqual(
      expect.arrayContaining([`--nats=${nats.url}`, `--function=${ns}/llm`, '--map-ack-wait=30']),
    );

    await kube.mergePatch(fnPath('llm'), {
      spec: { map: { ackWaitSeconds: 45, resultRetentionSeconds: 900 } },
    });
    await waitFor(async () => (await streamInfo(names.resultsStream))?.config.max_age === 900 * SECOND, {
      what: 'the new retention',
    });
    await waitFor(
      async () =>
        (await jsm.consumers.info(names.tasksStream, WORKER_CONSUMER)).config.ack_wait === 45 * SECOND,
      { what: 'the new ack wait' },
    );

    await kube.request('DELETE', fnPath('llm'));
    await waitFor(async () => (await get(fnPath('llm'))) === undefined, { what: 'the function to be gone' });
    expect(await streamInfo(names.tasksStream)).toBeUndefined();
    expect(await streamInfo(names.resultsStream)).toBeUndefined();
  });

  it('map turned off → streams deleted and finalizer dropped; streams of other functions untouched', async () => {
    const create = (name: string) =>
      kube.request('POST', fnPath(), {
        body: {
          apiVersion: 'sluice.dev/v1alpha1',
          kind: 'StreamingFunction',
          metadata: { name, namespace: ns },
          spec: { image: 'ghcr.io/acme/x:1' },
        },
      });
    await create('keep');
    await create('drop');
    const keep = mapNames(`${ns}/keep`);
    const drop = mapNames(`${ns}/drop`);
    await waitFor(async () => (await streamInfo(keep.tasksStream)) && (await streamInfo(drop.tasksStream)), {
      what: 'both functions’ streams',
    });
    await kube.mergePatch(fnPath('drop'), { spec: { map: { enabled: false } } });
    await waitFor(async () => (await streamInfo(drop.tasksStream)) === undefined, {
      what: 'the streams deleted',
    });
    await waitFor(async () => ((await get(fnPath('drop')))?.metadata?.finalizers ?? []).length === 0, {
      what: 'the finalizer dropped',
    });
    expect(await streamInfo(drop.resultsStream)).toBeUndefined();
    expect(await streamInfo(keep.tasksStream)).toBeDefined();
    expect(await streamInfo(keep.resultsStream)).toBeDefined();
  });

  it('NATS down at deletion → the function waits for its streams to go, then is removed', async () => {
    const names = mapNames(`${ns}/late`);
    await kube.request('POST', fnPath(), {
      body: {
        apiVersion: 'sluice.dev/v1alpha1',
        kind: 'StreamingFunction',
        metadata: { name: 'late', namespace: ns },
        spec: { image: 'ghcr.io/acme/x:1' },
      },
    });
    await waitFor(() => streamInfo(names.resultsStream), { what: 'the streams' });
    await nc.close();
    await nats.pause();
    await kube.request('DELETE', fnPath('late'));
    // Still there, marked for deletion, held by the finalizer while NATS is away.
    const held = await waitFor(async () => {
      const f = await get(fnPath('late'));
      return f?.metadata?.deletionTimestamp ? f : undefined;
    });
    expect(held.metadata?.finalizers).toEqual([STREAMS_FINALIZER]);
    await nats.resume();
    nc = await connect({ servers: nats.url });
    jsm = await jetstreamManager(nc);
    await waitFor(async () => (await get(fnPath('late'))) === undefined, {
      timeoutMs: 30_000,
      what: 'the function removed once NATS is back',
    });
    expect(await streamInfo(names.tasksStream)).toBeUndefined();
    expect(await streamInfo(names.resultsStream)).toBeUndefined();
  });
});
