// The operator's autoscaler against a real API server (the local plane: kube-controller-manager
// makes the ReplicaSets and pods, kwok runs them) with load published over a real nats-server, as
// sidecars and activators publish it (common/autoscale/load-report.ts).
import { randomUUID } from 'node:crypto';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { encodeReport, type LoadReport, loadSubject } from '../common/autoscale/load-report.ts';
import { createLogger } from '../common/log.ts';
import { NatsAuthority, newMasterSecret } from '../common/nats-auth.ts';
import { freePort, waitFor } from '../common/net.ts';
import { type NatsServer, startNats, startSecuredNats } from '../harness/nats.ts';
import { loadOperatorConfig } from '../operator/config.ts';
import { KubeClient, type KubeObject, resourcePath } from '../operator/kube.ts';
import { type RunningOperator, startOperator } from '../operator/main.ts';
import { SIMULATED_KEY } from '../plane/runner.ts';
import { kubeconfigPath, kubectl } from './support/cluster.ts';

const SFN = 'sluice.dev/v1alpha1';
const SIMULATED = { key: SIMULATED_KEY, operator: 'Exists' };
let kubeconfig = '';
let kube: KubeClient;
let nats: NatsServer;
let nc: NatsConnection;
const namespaces: string[] = [];
const operators: RunningOperator[] = [];
const publishers: Publisher[] = [];

const fnPath = (ns: string, name = '') => resourcePath(SFN, 'streamingfunctions', ns, name);
const deployPath = (ns: string, name = '') => resourcePath('apps/v1', 'deployments', ns, name);
const get = <T = KubeObject>(path: string) => kube.get<T>(path).catch(() => undefined);
const condition = (fn: KubeObject | undefined, type: string) =>
  (fn?.status?.conditions ?? []).find((c: { type: string }) => c.type === type);

async function namespace(): Promise<string> {
  const name = `as-${randomUUID().slice(0, 8)}`;
  await kube.request('POST', '/api/v1/namespaces', { body: { metadata: { name } } });
  namespaces.push(name);
  return name;
}

async function operator(ns: string, ...flags: string[]): Promise<RunningOperator> {
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
      '--nats-auth=false',
      ...flags,
    ],
    {},
  );
  const op = await startOperator(config, createLogger('operator', process.env.OP_LOG ?? 'silent'));
  operators.push(op);
  return op;
}

async function createFunction(ns: string, name: string, spec: Record<string, unknown>): Promise<void> {
  await kube.request('POST', fnPath(ns), {
    body: {
      apiVersion: SFN,
      kind: 'StreamingFunction',
      metadata: { name, namespace: ns },
      // The autoscaler is under test, not the pods: kwok plays them (they stay simulated).
      spec: { image: 'ghcr.io/acme/echo:1', map: { enabled: false }, tolerations: [SIMULATED], ...spec },
    },
  });
}

/** Plays the sidecars and activators of one function: publishes its reports every 200 ms. */
class Publisher {
  readonly reports = new Map<string, Omit<LoadReport, 'from'>>();
  readonly #timer: NodeJS.Timeout;
  readonly #subject: string;
  readonly #nc: NatsConnection;

  constructor(fn: string, through: NatsConnection = nc) {
    this.#subject = loadSubject(fn);
    this.#nc = through;
    this.#timer = setInterval(() => this.publish(), 200);
    publishers.push(this);
  }

  replica(pod: string, active: number): void {
    this.reports.set(pod, {
      kind: 'replica',
      active,
      queued: 0,
      peak: active,
      ready: true,
      url: 'http://198.18.255.3:8080',
    });
  }

  held(n: number): void {
    this.reports.set('activator/test', { kind: 'activator', active: 0, queued: 0, peak: n, held: n });
  }

  publish(): void {
    for (const [from, report] of this.reports)
      this.#nc.publish(this.#subject, encodeReport({ from, ...report }));
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}

async function pods(ns: string, name: string): Promise<KubeObject[]> {
  const list = await kube.get<{ items: KubeObject[] }>(resourcePath('v1', 'pods', ns), {
    labelSelector: `sluice.dev/function=${name}`,
  });
  return list.items.filter((p) => !p.metadata?.deletionTimestamp);
}

const readyPods = async (ns: string, name: string) =>
  (await pods(ns, name)).filter((p) =>
    (p.status?.conditions ?? []).some(
      (c: { type: string; status: string }) => c.type === 'Ready' && c.status === 'True',
    ),
  );

async function replicas(ns: string, name: string): Promise<number | undefined> {
  return (await get(deployPath(ns, name)))?.spec?.replicas;
}

async function events(ns: string, reason: string): Promise<string[]> {
  const list = await kube.get<{ items: KubeObject[] }>(resourcePath('v1', 'events', ns));
  return list.items.filter((e) => e.reason === reason).map((e) => e.message as string);
}

async function metric(op: RunningOperator, name: string, fn: string): Promise<number | undefined> {
  const port = (op.admin.address() as { port: number }).port;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{function="${fn}"}`));
  return line === undefined ? undefined : Number(line.split(' ')[1]);
}

beforeAll(async () => {
  kubeconfig = kubeconfigPath();
  kube = await KubeClient.load(kubeconfig);
  nats = await startNats();
  nc = await connect({ servers: nats.url });
});

afterEach(async () => {
  for (const p of publishers.splice(0)) p.stop();
  await Promise.all(operators.splice(0).map((op) => op.stop()));
});

afterAll(async () => {
  await nc?.close();
  await nats?.stop();
  for (const ns of namespaces)
    await kube.request('DELETE', `/api/v1/namespaces/${ns}`).catch(() => undefined);
  kube?.close();
});

describe('the operator follows the load reports (min 0, max 4, concurrency 2, delay 2 s)', () => {
  it('0 -> 1 on a held request, 7 streams -> 4, idle -> the busiest pod kept, then 0', {
    timeout: 180_000,
  }, async () => {
    const ns = await namespace();
    const op = await operator(ns);
    const key = `${ns}/echo`;
    await createFunction(ns, 'echo', {
      scaling: { minReplicas: 0, maxReplicas: 4, concurrency: 2, scaleDownDelaySeconds: 2 },
    });

    // At zero: no pod, Ready True, Active False ScaledToZero, 0 in `kubectl get sfn`.
    const atZero = await waitFor(
      async () => {
        const f = await get(fnPath(ns, 'echo'));
        const zero = condition(f, 'Active')?.reason === 'ScaledToZero';
        return zero && condition(f, 'Ready')?.status === 'True' ? f : undefined;
      },
      { timeoutMs: 30_000, what: 'Ready, Active=False ScaledToZero' },
    );
    expect(await replicas(ns, 'echo')).toBe(0);
    expect(condition(atZero, 'Ready')).toMatchObject({ status: 'True' });
    expect(condition(atZero, 'Active')).toMatchObject({ status: 'False' });
    expect(atZero.status).toMatchObject({ desiredReplicas: 0, readyReplicas: 0 });
    const table = await kubectl(['get', 'sfn', '-n', ns, 'echo', '--no-headers']);
    expect(table.stdout.split(/\s+/).slice(0, 4)).toEqual(['echo', '0', 'True', '0']);

    // 1. An activator holds a request: one replica, at once, through the scale subresource.
    const load = new Publisher(key);
    load.held(1);
    await waitFor(async () => (await replicas(ns, 'echo')) === 1, { timeoutMs: 10_000, what: '0 -> 1' });
    const deployment = (await get(deployPath(ns, 'echo')))!;
    expect(
      deployment.metadata?.managedFields?.some(
        (m) => m.manager === 'sluice-operator' && (m as { subresource?: string }).subresource === 'scale',
      ),
    ).toBe(true);
    await waitFor(
      async () =>
        (await events(ns, 'Scaled')).some((m) => m.startsWith('scaled from 0 to 1 replicas (burst: load 1')),
      {
        what: 'a Scaled event',
      },
    );

    // 2. The replica serves 7 streams (the held request went to it): ceil(7 / 2) = 4.
    const [first] = await waitFor(() => readyPods(ns, 'echo').then((p) => (p.length === 1 ? p : undefined)), {
      timeoutMs: 30_000,
      what: 'the first pod ready',
    });
    load.held(0); // as the activator reports once its request went to the replica
    load.replica(first!.metadata!.name!, 7);
    await waitFor(async () => (await replicas(ns, 'echo')) === 4, { timeoutMs: 10_000, what: '1 -> 4' });
    await waitFor(
      async () => {
        const s = (await get(fnPath(ns, 'echo')))?.status;
        return s?.desiredReplicas === 4 && s?.inFlight === 7;
      },
      { timeoutMs: 25_000, what: 'status desiredReplicas 4, inFlight 7' },
    );
    expect(await metric(op, 'sluice_autoscaler_desired_replicas', key)).toBe(4);
    expect(await metric(op, 'sluice_autoscaler_load', key)).toBe(7);

    // 3. Four pods; the load falls to 2 streams, all on one pod that is not the first.
    const four = await waitFor(() => readyPods(ns, 'echo').then((p) => (p.length === 4 ? p : undefined)), {
      timeoutMs: 60_000,
      what: 'four pods ready',
    });
    const busy = four.find((p) => p.metadata?.name !== first!.metadata?.name)!.metadata!.name!;
    load.reports.clear();
    for (const p of four) load.replica(p.metadata!.name!, p.metadata!.name === busy ? 2 : 0);
    // After the delay: each pod's deletion cost is its streams, then 4 -> 1; the ReplicaSet
    // removes the idle ones and keeps the busy one.
    await waitFor(async () => (await replicas(ns, 'echo')) === 1, { timeoutMs: 20_000, what: '4 -> 1' });
    const costs = new Map(
      (await kube.get<{ items: KubeObject[] }>(resourcePath('v1', 'pods', ns))).items.map((p) => [
        p.metadata?.name,
        p.metadata?.annotations?.['controller.kubernetes.io/pod-deletion-cost'],
      ]),
    );
    expect(costs.get(busy)).toBe('2');
    const left = await waitFor(() => pods(ns, 'echo').then((p) => (p.length === 1 ? p : undefined)), {
      timeoutMs: 30_000,
      what: 'three pods removed',
    });
    expect(left.map((p) => p.metadata?.name)).toEqual([busy]);
    expect(await events(ns, 'Scaled')).toContainEqual(
      expect.stringMatching(/^scaled from 4 to 1 replicas \(idle: load 2/),
    );

    // 4. Nothing in flight for the delay: back to zero.
    load.reports.clear();
    load.replica(busy, 0);
    await waitFor(async () => (await replicas(ns, 'echo')) === 0, { timeoutMs: 20_000, what: '1 -> 0' });
    await waitFor(async () => condition(await get(fnPath(ns, 'echo')), 'Active')?.reason === 'ScaledToZero', {
      timeoutMs: 30_000,
      what: 'ScaledToZero again',
    });
  });

  it('without reports from ready pods the count is held, not dropped', { timeout: 60_000 }, async () => {
    const ns = await namespace();
    const op = await operator(ns);
    await createFunction(ns, 'held', {
      scaling: { minReplicas: 2, maxReplicas: 4, concurrency: 2, scaleDownDelaySeconds: 1 },
    });
    await waitFor(() => readyPods(ns, 'held').then((p) => p.length === 2), {
      timeoutMs: 30_000,
      what: 'two pods',
    });
    const load = new Publisher(`${ns}/held`);
    load.held(5); // no replica reports, but an activator's: 5 held -> 3
    await waitFor(async () => (await replicas(ns, 'held')) === 3, { timeoutMs: 10_000, what: '2 -> 3' });
    load.stop(); // silence: pods ready, nobody reporting
    const since = Date.now();
    // Decided without load (reports are stale after 3 s) for longer than the delay (1 s): held at 3.
    const last = await waitFor(
      () => {
        const d = op.controller.autoscaler!.lastDecision(`${ns}/held`);
        return d && d.decision.reason === 'unknown' && d.at > since + 3000 + 2000 ? d : undefined;
      },
      { timeoutMs: 20_000, what: 'decisions without load for longer than the delay' },
    );
    expect(last.decision.desired).toBe(3);
    expect(await replicas(ns, 'held')).toBe(3);
  });
});

describe('kubectl scale sfn', () => {
  it('with min = max, sets the count through the scale subresource, at once, both ways', {
    timeout: 90_000,
  }, async () => {
    const ns = await namespace();
    await operator(ns);
    await createFunction(ns, 'fixed', {
      scaling: { minReplicas: 3, maxReplicas: 3, scaleDownDelaySeconds: 600 },
    });
    await waitFor(async () => (await replicas(ns, 'fixed')) === 3, { timeoutMs: 30_000, what: '3 replicas' });
    const down = await kubectl(['scale', 'sfn', 'fixed', '-n', ns, '--replicas=1']);
    expect(down.code).toBe(0);
    // minReplicas 1, max 3: the count follows the user's request now, not after scaleDownDelaySeconds.
    await waitFor(async () => (await replicas(ns, 'fixed')) === 1, { timeoutMs: 15_000, what: '3 -> 1' });
    expect((await kubectl(['scale', 'sfn', 'fixed', '-n', ns, '--replicas=3'])).code).toBe(0);
    await waitFor(async () => (await replicas(ns, 'fixed')) === 3, { timeoutMs: 15_000, what: '1 -> 3' });
    const above = await kubectl(['scale', 'sfn', 'fixed', '-n', ns, '--replicas=5']);
    expect(above.code).not.toBe(0);
    expect(above.stderr).toContain('minReplicas must not exceed maxReplicas');
  });
});

describe('the activator path', () => {
  it('at zero the Service also routes to the activator; once a replica is ready it does not', {
    timeout: 90_000,
  }, async () => {
    const ns = await namespace();
    // Stands in for the chart's activator Service: its EndpointSlice lists two pods.
    await kube.request('POST', resourcePath('discovery.k8s.io/v1', 'endpointslices', ns), {
      body: {
        apiVersion: 'discovery.k8s.io/v1',
        kind: 'EndpointSlice',
        metadata: {
          name: 'sluice-activator-x1',
          labels: { 'kubernetes.io/service-name': 'sluice-activator' },
        },
        addressType: 'IPv4',
        ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
        endpoints: [
          { addresses: ['198.18.255.1'], conditions: { ready: true } },
          { addresses: ['198.18.255.2'], conditions: { ready: true } },
        ],
      },
    });
    await operator(ns, '--activator', `${ns}/sluice-activator`);
    await createFunction(ns, 'zero', {
      scaling: { minReplicas: 0, maxReplicas: 2, scaleDownDelaySeconds: 1 },
    });
    const slicePath = resourcePath('discovery.k8s.io/v1', 'endpointslices', ns, 'zero-activator');
    const addresses = async () =>
      ((await get(slicePath))?.endpoints ?? []).flatMap((e: { addresses: string[] }) => e.addresses).sort();
    await waitFor(async () => (await addresses()).length === 2, {
      timeoutMs: 20_000,
      what: 'the activator slice',
    });
    const slice = (await get(slicePath))!;
    expect(slice.metadata?.labels).toMatchObject({
      'kubernetes.io/service-name': 'zero',
      'endpointslice.kubernetes.io/managed-by': 'sluice.dev.operator',
    });
    expect(slice.ports).toEqual([{ name: 'http', port: 8080, protocol: 'TCP' }]);
    expect(await addresses()).toEqual(['198.18.255.1', '198.18.255.2']);

    const load = new Publisher(`${ns}/zero`);
    load.held(1);
    await waitFor(() => readyPods(ns, 'zero').then((p) => p.length === 1), {
      timeoutMs: 30_000,
      what: 'a pod',
    });
    // The endpointslice controller keeps the pod's own slice; ours empties: no extra hop.
    await waitFor(async () => (await addresses()).length === 0, {
      timeoutMs: 20_000,
      what: 'the activator out',
    });

    load.reports.clear();
    load.replica((await readyPods(ns, 'zero'))[0]!.metadata!.name!, 0);
    await waitFor(async () => (await replicas(ns, 'zero')) === 0, { timeoutMs: 20_000, what: 'back to 0' });
    expect(await addresses()).toEqual(['198.18.255.1', '198.18.255.2']);
  });
});

describe('NATS locked down', () => {
  it("scales on the reports a function's sidecars publish with the credentials the operator issued them", {
    timeout: 120_000,
  }, async () => {
    const ns = await namespace();
    const secured = await startSecuredNats(new NatsAuthority(newMasterSecret()));
    try {
      // The operator's keys, as it keeps them: the Secret it would have made on its first start.
      await kube.request('POST', resourcePath('v1', 'secrets', ns), {
        body: {
          metadata: { name: 'sluice-nats-auth', namespace: ns },
          data: { master: Buffer.from(secured.authority.master).toString('base64') },
        },
      });
      const config = loadOperatorConfig(
        [
          '--kubeconfig',
          kubeconfig,
          '--namespace',
          ns,
          '--metrics',
          `127.0.0.1:${await freePort()}`,
          '--nats',
          secured.url,
          '--nats-auth-secret',
          `${ns}/sluice-nats-auth`,
        ],
        {},
      );
      operators.push(await startOperator(config, createLogger('operator', process.env.OP_LOG ?? 'silent')));
      await createFunction(ns, 'locked', {
        scaling: { minReplicas: 1, maxReplicas: 3, concurrency: 1, scaleDownDelaySeconds: 30 },
      });
      // Map is off, yet the sidecars get credentials: they report load.
      const secret = await waitFor(() => get(resourcePath('v1', 'secrets', ns, 'locked-nats-credentials')), {
        timeoutMs: 30_000,
        what: "the function's NATS credentials",
      });
      const creds = Buffer.from(String(secret.data?.['nats.creds']), 'base64').toString();
      // The operator pushed the function's account before handing the credentials out.
      const sidecar = await secured.connectWith(creds, 'sidecar');
      const pod = await waitFor(() => readyPods(ns, 'locked').then((p) => p[0]?.metadata?.name), {
        timeoutMs: 30_000,
        what: 'a ready pod',
      });
      const load = new Publisher(`${ns}/locked`, sidecar);
      load.replica(pod, 3);
      await waitFor(async () => (await replicas(ns, 'locked')) === 3, {
        timeoutMs: 20_000,
        what: '1 -> 3 on load reported in the function account',
      });
    } finally {
      for (const p of publishers.splice(0)) p.stop();
      await Promise.all(operators.splice(0).map((op) => op.stop()));
      await secured.stop();
    }
  });
});
