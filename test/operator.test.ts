import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../common/log.ts';
import { freePort, waitFor } from '../common/net.ts';
import { type Started, startSluice } from '../harness/process.ts';
import { loadOperatorConfig } from '../operator/config.ts';
import { KubeClient, type KubeObject, resourcePath } from '../operator/kube.ts';
import { type RunningOperator, startOperator } from '../operator/main.ts';
import { SIMULATED_KEY } from '../plane/runner.ts';
import { kubeconfigPath } from './support/cluster.ts';
import { ingressUrl, podsSimulated } from './support/plane.ts';

const run = promisify(execFile);
const SFN = 'sluice.dev/v1alpha1';
let kubeconfig = '';
let kube: KubeClient;
const namespaces: string[] = [];
const operators: RunningOperator[] = [];
const children: Started[] = [];

async function kubectl(...args: string[]): Promise<string> {
  const { stdout } = await run('kubectl', args, { env: { ...process.env, KUBECONFIG: kubeconfig } });
  return stdout;
}

async function namespace(): Promise<string> {
  const name = `op-${randomUUID().slice(0, 8)}`;
  await kube.request('POST', '/api/v1/namespaces', { body: { metadata: { name } } });
  namespaces.push(name);
  return name;
}

async function operator(ns: string, ...flags: string[]): Promise<RunningOperator> {
  const config = loadOperatorConfig(
    ['--kubeconfig', kubeconfig, '--namespace', ns, '--metrics', `127.0.0.1:${await freePort()}`, ...flags],
    {},
  );
  const op = await startOperator(config, createLogger('operator', 'silent'));
  operators.push(op);
  return op;
}

const SIMULATED = { key: SIMULATED_KEY, operator: 'Exists' };

const fnPath = (ns: string, name = '') => resourcePath(SFN, 'streamingfunctions', ns, name);
const deployPath = (ns: string, name = '') => resourcePath('apps/v1', 'deployments', ns, name);

async function createFunction(
  ns: string,
  name: string,
  spec: Record<string, unknown> = {},
): Promise<KubeObject> {
  return kube.request('POST', fnPath(ns), {
    body: {
      apiVersion: SFN,
      kind: 'StreamingFunction',
      metadata: { name, namespace: ns },
      // The operator's work is under test, not the pods: kwok plays them (they stay simulated).
      spec: { image: 'ghcr.io/acme/echo:1', map: { enabled: false }, tolerations: [SIMULATED], ...spec },
    },
  });
}

const get = <T = KubeObject>(path: string) => kube.get<T>(path).catch(() => undefined);
const condition = (fn: KubeObject | undefined, type: string) =>
  (fn?.status?.conditions ?? []).find((c: { type: string }) => c.type === type);

/** The operator has nothing queued or running: whatever it was going to do, it did. */
const idle = (op: RunningOperator) => op.queue.depth === 0 && op.queue.inFlight === 0;

/**
 * Nothing from an earlier step is still on its way: the Deployment has finished rolling out,
 * the operator's caches hold the versions of the function and Deployment that the server has
 * now (so the watch events of its own last writes have arrived), and it is idle. Until then a
 * reconcile may still act on a cache that predates its own status write.
 */
async function settled(op: RunningOperator, ns: string, name: string): Promise<boolean> {
  const [fn, deployment] = await Promise.all([get(fnPath(ns, name)), get(deployPath(ns, name))]);
  const rolledOut =
    deployment?.status?.observedGeneration === deployment?.metadata?.generation &&
    condition(deployment, 'Progressing')?.reason === 'NewReplicaSetAvailable';
  const cached = (informer: { get: (ns: string, name: string) => KubeObject | undefined } | undefined) =>
    informer?.get(ns, name)?.metadata?.resourceVersion;
  return (
    rolledOut &&
    cached(op.controller.functions) === fn?.metadata?.resourceVersion &&
    cached(op.controller.owned.get('Deployment')) === deployment?.metadata?.resourceVersion &&
    idle(op)
  );
}

beforeAll(async () => {
  kubeconfig = kubeconfigPath();
  kube = await KubeClient.load(kubeconfig);
});

afterEach(async () => {
  await Promise.all(operators.splice(0).map((op) => op.stop()));
  await Promise.all(children.splice(0).map((c) => c.stop()));
});

afterAll(async () => {
  for (const ns of namespaces)
    await kube.request('DELETE', `/api/v1/namespaces/${ns}`).catch(() => undefined);
  kube?.close();
});

describe('sluice operator against a real API server', () => {
  it('create → Deployment, Service and Ingress of the right shape, owned, with status and events', async () => {
    const ns = await namespace();
    await operator(ns);
    const fn = await createFunction(ns, 'echo', {
      gpu: { count: 1, type: 'NVIDIA-H100-80GB-HBM3' },
      scaling: { concurrency: 4 },
      auth: { secretName: 'echo-tokens' },
    });
    const deployment = await waitFor(() => get(deployPath(ns, 'echo')), { what: 'the Deployment' });
    const service = await waitFor(() => get(resourcePath('v1', 'services', ns, 'echo')), {
      what: 'the Service',
    });
    const ingress = await waitFor(() => get(resourcePath('networking.k8s.io/v1', 'ingresses', ns, 'echo')), {
      what: 'the Ingress',
    });
    for (const owned of [deployment, service, ingress]) {
      expect(owned.metadata?.ownerReferences).toEqual([
        expect.objectContaining({
          kind: 'StreamingFunction',
          name: 'echo',
          uid: fn.metadata?.uid,
          controller: true,
        }),
      ]);
    }
    const podSpec = deployment.spec.template.spec;
    const [fnContainer, proxy] = podSpec.containers;
    expect(fnContainer.resources.limits).toEqual({ 'nvidia.com/gpu': '1' });
    expect(podSpec.nodeSelector).toEqual({ 'nvidia.com/gpu.product': 'NVIDIA-H100-80GB-HBM3' });
    expect(proxy.args).toEqual(expect.arrayContaining(['--concurrency=4', `--function=${ns}/echo`]));
    expect(proxy.readinessProbe.httpGet.port).toBe('admin');
    expect(podSpec.volumes[0].secret.secretName).toBe('echo-tokens');
    expect(ingress.metadata?.annotations?.['nginx.ingress.kubernetes.io/proxy-buffering']).toBe('off');
    // The fields are owned by the operator's field manager, applied server-side.
    expect(deployment.metadata?.managedFields?.map((m) => [m.manager, m.operation])).toContainEqual([
      'sluice-operator',
      'Apply',
    ]);

    // Where the plane runs Traefik, it publishes the Ingress's address: the URL becomes the ingress's.
    const url = podsSimulated() ? `http://echo.${ns}.svc` : `${ingressUrl()}/echo`;
    const withStatus = await waitFor(async () => {
      const f = await get(fnPath(ns, 'echo'));
      return f?.status?.observedGeneration === 1 && f.status.url === url ? f : undefined;
    });
    expect(withStatus.status).toMatchObject({ selector: 'sluice.dev/function=echo', url });
    expect(condition(withStatus, 'Ready')).toBeDefined();
    const events = await waitFor(
      async () => {
        const list = await kube.get<{ items: KubeObject[] }>(resourcePath('v1', 'events', ns));
        const ours = list.items.filter((e) => e.involvedObject?.kind === 'StreamingFunction');
        return ours.some((e) => e.reason === 'Created') ? ours : undefined;
      },
      { what: 'a Created event' },
    );
    expect(events.map((e) => [e.reason, e.message, e.source?.component])).toEqual([
      ['Created', `created Deployment, Service, Ingress ${ns}/echo`, 'sluice-operator'],
    ]);
  });

  it('update of a field → the Deployment changes; steady state → zero writes', async () => {
    const ns = await namespace();
    const op = await operator(ns);
    await createFunction(ns, 'echo');
    // Settled: the controller-manager and kwok have run the pod, and the operator reported it.
    await waitFor(async () => condition(await get(fnPath(ns, 'echo')), 'Ready')?.status === 'True', {
      timeoutMs: 30_000,
      what: 'Ready',
    });
    await waitFor(() => settled(op, ns, 'echo'), { timeoutMs: 30_000, what: 'the operator to settle' });

    // Steady state: make the operator look at the function again (a label only it ignores,
    // and a direct re-queue) and count what it sends.
    const writesBefore = op.client.writes;
    const reconcilesBefore = await reconcileCount(op);
    const generationBefore = (await get(deployPath(ns, 'echo')))!.metadata!.generation;
    await kubectl('label', '-n', ns, 'sfn', 'echo', 'touched=yes');
    op.queue.add(`${ns}/echo`);
    await waitFor(async () => (await reconcileCount(op)) >= reconcilesBefore + 2 && idle(op), {
      what: 'two more reconciles',
    });
    expect(op.client.writes - writesBefore).toBe(0);
    expect((await get(deployPath(ns, 'echo')))!.metadata!.generation).toBe(generationBefore);

    await kubectl(
      'patch',
      '-n',
      ns,
      'sfn',
      'echo',
      '--type=merge',
      '-p',
      '{"spec":{"scaling":{"concurrency":3}}}',
    );
    const updated = await waitFor(
      async () => {
        const d = await get(deployPath(ns, 'echo'));
        return d?.spec.template.spec.containers[1].args.includes('--concurrency=3') ? d : undefined;
      },
      { what: 'the new concurrency in the Deployment' },
    );
    expect(updated.spec.template.spec.containers[1].args).not.toContain('--concurrency=8');
    await waitFor(async () => (await get(fnPath(ns, 'echo')))?.status?.observedGeneration === 2);
  });

  it('someone edits an owned Deployment by hand → drift repaired', async () => {
    const ns = await namespace();
    const op = await operator(ns);
    await createFunction(ns, 'echo');
    await waitFor(() => get(deployPath(ns, 'echo')));
    await waitFor(() => idle(op));
    await kubectl('set', 'image', '-n', ns, 'deployment/echo', 'function=evil:1');
    await kubectl('scale', '-n', ns, 'deployment/echo', '--replicas=5');
    const repaired = await waitFor(
      async () => {
        const d = await get(deployPath(ns, 'echo'));
        return d?.spec.template.spec.containers[0].image === 'ghcr.io/acme/echo:1' && d.spec.replicas === 1
          ? d
          : undefined;
      },
      { what: 'the image and replicas to be put back' },
    );
    expect(repaired.spec.template.spec.containers[0].image).toBe('ghcr.io/acme/echo:1');
  });

  it('a foreign object with the same name → NotOwned, left untouched', async () => {
    const ns = await namespace();
    await kubectl('create', 'deployment', '-n', ns, 'echo', '--image=someone/else:7');
    const before = (await get(deployPath(ns, 'echo')))!;
    await operator(ns);
    await createFunction(ns, 'echo');
    const fn = await waitFor(
      async () => {
        const f = await get(fnPath(ns, 'echo'));
        return condition(f, 'Ready')?.reason === 'NotOwned' ? f : undefined;
      },
      { what: 'Ready=False NotOwned' },
    );
    expect(condition(fn, 'Ready')).toMatchObject({ status: 'False' });
    expect(condition(fn, 'Ready').message).toContain(`Deployment ${ns}/echo`);
    const after = (await get(deployPath(ns, 'echo')))!;
    // Its spec was not written (the controller-manager still updates its status).
    expect(after.metadata?.generation).toBe(before.metadata?.generation);
    expect(after.metadata?.managedFields?.map((m) => m.manager)).not.toContain('sluice-operator');
    // Nothing else of the function was made either: it is not half-deployed beside a stranger.
    expect(await get(resourcePath('v1', 'services', ns, 'echo'))).toBeUndefined();
    expect(after.spec.template.spec.containers[0].image).toBe('someone/else:7');
    expect(after.metadata?.ownerReferences).toBeUndefined();
  });

  it('operator restarted mid-way → converges without duplicates', async () => {
    const ns = await namespace();
    const names = Array.from({ length: 12 }, (_, i) => `fn-${i}`);
    // No pods needed here (minReplicas 0): this is about the operator's own writes.
    await Promise.all(names.map((n) => createFunction(ns, n, { scaling: { minReplicas: 0 } })));
    const first = await operator(ns, '--workers=1');
    await waitFor(async () => (await kube.get<{ items: unknown[] }>(deployPath(ns))).items.length >= 3, {
      what: 'a few Deployments',
    });
    await first.stop();
    operators.splice(operators.indexOf(first), 1);
    const madeByFirst = (await kube.get<{ items: unknown[] }>(deployPath(ns))).items.length;
    expect(madeByFirst).toBeLessThan(names.length); // it really was stopped mid-way

    await operator(ns);
    await waitFor(
      async () => {
        const fns = await kube.get<{ items: KubeObject[] }>(fnPath(ns));
        return fns.items.every((f) => f.status?.observedGeneration === 1);
      },
      { what: 'every function observed' },
    );
    const deployments = (await kube.get<{ items: KubeObject[] }>(deployPath(ns))).items;
    expect(deployments.map((d) => d.metadata?.name).sort()).toEqual([...names].sort());
    for (const d of deployments) expect(d.metadata?.ownerReferences).toHaveLength(1);
    const services = (await kube.get<{ items: KubeObject[] }>(resourcePath('v1', 'services', ns))).items;
    expect(services).toHaveLength(names.length);
  });

  // The plane's kube-controller-manager turns Deployments into pods, kube-scheduler places them
  // on kwok's simulated nodes (8 GPUs at most per node), and kwok runs them.
  it('pods run → Ready; more GPUs than any node has → Scheduled=False InsufficientGPU', async () => {
    const ns = await namespace();
    await operator(ns);
    await createFunction(ns, 'small', { scaling: { minReplicas: 2, maxReplicas: 2 } });
    await createFunction(ns, 'huge', { gpu: { count: 16 } });

    const small = await waitFor(
      async () => {
        const f = await get(fnPath(ns, 'small'));
        return condition(f, 'Ready')?.status === 'True' ? f : undefined;
      },
      { timeoutMs: 60_000, what: 'small to be Ready' },
    );
    expect(small.status).toMatchObject({ replicas: 2, readyReplicas: 2 });
    expect(condition(small, 'Available')).toMatchObject({ status: 'True' });
    expect(condition(small, 'Scheduled')).toMatchObject({ status: 'True', reason: 'Scheduled' });

    const huge = await waitFor(
      async () => {
        const f = await get(fnPath(ns, 'huge'));
        return condition(f, 'Scheduled')?.status === 'False' ? f : undefined;
      },
      { timeoutMs: 60_000, what: 'huge to be unschedulable' },
    );
    expect(condition(huge, 'Scheduled').reason).toBe('InsufficientGPU');
    expect(condition(huge, 'Scheduled').message).toMatch(/Insufficient nvidia\.com\/gpu/);
    expect(condition(huge, 'Ready')).toMatchObject({ status: 'False', reason: 'InsufficientGPU' });

    // Scaled down to what fits: the pod is placed and the condition clears.
    await kubectl('patch', '-n', ns, 'sfn', 'huge', '--type=merge', '-p', '{"spec":{"gpu":{"count":4}}}');
    await waitFor(async () => condition(await get(fnPath(ns, 'huge')), 'Ready')?.status === 'True', {
      timeoutMs: 60_000,
      what: 'huge to fit and be Ready',
    });
  }, 180_000);

  it('two operators → one leads the Lease; the standby takes over when the leader stops', async () => {
    const ns = await namespace();
    const start = async (identity: string) => {
      const port = await freePort();
      const child = startSluice([
        'operator',
        `--kubeconfig=${kubeconfig}`,
        `--namespace=${ns}`,
        `--metrics=127.0.0.1:${port}`,
        '--leader-elect=true',
        `--leader-election-namespace=${ns}`,
        // Long enough that a leader on a loaded machine keeps renewing: the handover below
        // comes from the leader releasing the Lease on SIGTERM, not from it expiring.
        '--lease-duration=15',
        `--identity=${identity}`,
      ]);
      children.push(child);
      return {
        identity,
        child,
        status: (path: string) =>
          fetch(`http://127.0.0.1:${port}${path}`)
            .then((r) => r.status)
            .catch(() => 0),
      };
    };
    const a = await start('op-a');
    const b = await start('op-b');
    const leasePath = resourcePath('coordination.k8s.io/v1', 'leases', ns, 'sluice-operator');
    const holder = await waitFor(async () => (await get(leasePath))?.spec?.holderIdentity, {
      timeoutMs: 20_000,
      what: 'a Lease holder',
    });
    const [leader, standby] = holder === 'op-a' ? [a, b] : [b, a];
    await waitFor(async () => (await leader.status('/readyz')) === 200, {
      timeoutMs: 20_000,
      what: 'the leader ready',
    });
    // The standby is up (healthy) but not ready: it does not reconcile.
    await waitFor(async () => (await standby.status('/healthz')) === 200, { what: 'the standby up' });
    expect(await standby.status('/readyz')).toBe(503);
    await createFunction(ns, 'one');
    await waitFor(() => get(deployPath(ns, 'one')), { timeoutMs: 20_000 });

    await leader.child.stop('SIGTERM');
    expect(leader.child.child.exitCode, leader.child.output()).toBe(0);
    await waitFor(async () => (await get(leasePath))?.spec?.holderIdentity === standby.identity, {
      timeoutMs: 20_000,
      what: 'the standby to take the Lease',
    });
    await createFunction(ns, 'two');
    await waitFor(() => get(deployPath(ns, 'two')), {
      timeoutMs: 20_000,
      what: 'the new leader to reconcile',
    });
  });
});

async function reconcileCount(op: RunningOperator): Promise<number> {
  const port = (op.admin.address() as { port: number }).port;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  let total = 0;
  for (const m of text.matchAll(/^sluice_operator_reconcile_total\{[^}]*\} (\d+)/gm)) total += Number(m[1]);
  return total;
}
