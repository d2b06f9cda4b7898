// Autoscaling on the local plane with pods that really run, through the ingress (Traefik): the
// chart's operator and activator as pods, functions scaled from zero with the request held, a
// map burst scaling a function up, and streams that outlive the pods chosen for removal.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../common/net.ts';
import { FUNCTION_LABEL } from '../operator/desired.ts';
import { kubeconfigPath, kubectl, type Namespace, throwawayNamespace } from './support/cluster.ts';
import { CHART, helm, helmMissing, type Manifest } from './support/helm.ts';
import {
  condition,
  curl,
  firstEvent,
  getJson,
  ingressServers,
  ingressUrl,
  isReady,
  podLogs,
  pods,
  podsSimulated,
} from './support/plane.ts';

const skip = helmMissing || podsSimulated();
if (skip) console.warn(`skipping the plane autoscaling test: ${skip}`);

describe.skipIf(Boolean(skip))('autoscaling on the local plane, pods really running', () => {
  const release = 'sluice-as';
  let system: Namespace;
  let ns: Namespace;
  let ingress: string;
  const fnPods = async (name: string) =>
    (await pods(ns.name, `${FUNCTION_LABEL}=${name}`)).filter((p) => !p.metadata.deletionTimestamp);
  const replicas = async (name: string) =>
    (await getJson(['get', 'deployment', name, '-n', ns.name])).spec.replicas as number;
  // Names no other test file gives a function: every Ingress on the shared plane that claims
  // /<name> is a route Traefik may pick (activator.test.ts has its own slow and mapped).
  const apply = async (name: string, spec: Record<string, unknown>) => {
    const object = {
      apiVersion: 'sluice.dev/v1alpha1',
      kind: 'StreamingFunction',
      metadata: { name, namespace: ns.name },
      spec: { image: 'sluice-examples:dev', command: ['node', 'echo/server.js'], ...spec },
    };
    const r = await kubectl(['apply', '-f', '-'], { input: JSON.stringify(object) });
    if (r.code !== 0) throw new Error(r.stderr);
  };
  /** The activator's pods, as the function's activator slice lists them (empty: out of the path). */
  const activatorSlice = async (name: string): Promise<string[]> => {
    const r = await kubectl(['get', 'endpointslice', `${name}-activator`, '-n', ns.name, '-o', 'json']);
    if (r.code !== 0) return [];
    const slice = JSON.parse(r.stdout);
    const port = slice.ports?.[0]?.port;
    return (slice.endpoints ?? [])
      .flatMap((e: Manifest) => e.addresses as string[])
      .map((ip: string) => `${ip}:${port}`)
      .sort();
  };
  const activatorInPath = async (name: string) => (await activatorSlice(name)).length > 0;
  /** Traefik's routes for the function lead to the activator's pods and nowhere else. */
  const ingressToActivator = async (name: string) => {
    const slice = await activatorSlice(name);
    return slice.length > 0 && JSON.stringify(await ingressServers(ns.name, name)) === JSON.stringify(slice);
  };

  beforeAll(async () => {
    ingress = ingressUrl();
    system = await throwawayNamespace('sluice-as-system');
    ns = await throwawayNamespace('autoscale');
    const install = await helm([
      'install',
      release,
      CHART,
      '--kubeconfig',
      kubeconfigPath(),
      '-n',
      system.name,
      '--set',
      'crds.enabled=false',
      '--set',
      `operator.watchNamespace=${ns.name}`,
      '--wait',
      '--timeout=180s',
    ]);
    if (install.code !== 0) throw new Error(install.stdout + install.stderr);
    const activators = await pods(system.name, 'app.kubernetes.io/component=activator');
    expect(activators.filter(isReady)).toHaveLength(2);
  }, 240_000);

  afterAll(async () => {
    await kubectl(['delete', 'sfn', '--all', '-n', ns?.name ?? 'none', '--wait=true', '--timeout=60s']);
    if (system)
      await helm(['uninstall', release, '--kubeconfig', kubeconfigPath(), '-n', system.name, '--wait']);
    await ns?.delete();
    await system?.delete();
  }, 120_000);

  it('at zero a held event stream gets its waiting comments while the first pod starts slowly, then its events', async () => {
    await apply('cold', {
      // The function opens its port 6 s after start (a model loading): readiness is slow.
      env: [{ name: 'STARTUP_DELAY_MS', value: '6000' }],
      scaling: { minReplicas: 0, maxReplicas: 2, scaleDownDelaySeconds: 30 },
      streaming: { heartbeatSeconds: 1 },
      map: { enabled: false },
    });
    const fn = await waitFor(
      async () => {
        const f = await getJson(['get', 'sfn', 'cold', '-n', ns.name]);
        const atZero = condition(f, 'Active')?.reason === 'ScaledToZero';
        return atZero && condition(f, 'Ready')?.status === 'True' && (await ingressToActivator('cold'))
          ? f
          : undefined;
      },
      {
        timeoutMs: 60_000,
        what: "cold at zero (Ready, ScaledToZero) with the ingress's route leading to the activator",
      },
    );
    expect(condition(fn, 'Ready')?.status).toBe('True');
    expect(await fnPods('cold')).toEqual([]);

    const r = await curl(`${ingress}/cold/?n=3&pause=100`, ['-H', 'Accept: text/event-stream']);
    expect(r.status, r.body).toBe(200);
    // Headers and a comment first, then one a second while the pod starts: the function opens
    // its port 6 s after it starts, so at least 5 come before its first event (by order, not by
    // clock: a loaded machine only makes the wait longer).
    expect(r.chunks[0]!.text).toBe(': waiting for a replica\n\n');
    const beforeFirstEvent = r.body.slice(0, r.body.indexOf('data:'));
    expect(
      beforeFirstEvent.split('\n\n').filter((p) => p === ': waiting for a replica').length,
      r.body,
    ).toBeGreaterThanOrEqual(5);
    expect(r.events.filter((e) => e.event === 'message').map((e) => JSON.parse(e.data).i)).toEqual([0, 1, 2]);
    expect(r.events.at(-1)?.event).toBe('done');
    // The first replica serves; the activator left the path: the next request goes straight to it.
    await waitFor(async () => !(await activatorInPath('cold')), {
      timeoutMs: 30_000,
      what: 'the activator out',
    });
    const table = await kubectl(['get', 'sfn', 'cold', '-n', ns.name, '--no-headers']);
    expect(table.stdout).toMatch(/^cold\s+0\s+True\s+1\s/);
  }, 120_000);

  it('a map burst scales the function up; the results come from the new replicas too', async () => {
    await apply('burst', {
      scaling: { minReplicas: 1, maxReplicas: 3, concurrency: 2, scaleDownDelaySeconds: 15 },
      map: { enabled: true, path: '/map' },
    });
    await waitFor(async () => (await fnPods('burst')).filter(isReady).length === 1, {
      timeoutMs: 90_000,
      what: 'burst with one ready pod',
    });
    // The burst goes to the pod itself: Traefik's routes lead to it and no longer to the activator.
    await waitFor(
      async () => {
        const ips = (await fnPods('burst')).filter(isReady).map((p) => p.status.podIP as string);
        const servers = await ingressServers(ns.name, 'burst');
        return servers.length > 0 && servers.every((address) => ips.includes(address.split(':')[0]!));
      },
      { timeoutMs: 30_000, what: "the ingress's route to burst leading to its pod only" },
    );
    const inputs = JSON.stringify({ inputs: Array.from({ length: 30 }, (_, i) => ({ i, sleepMs: 1000 })) });
    const r = await curl(`${ingress}/burst/_sluice/map`, ['-X', 'POST', '-d', inputs]);
    expect(r.status).toBe(200);
    const results = r.events.filter((e) => e.event === 'result').map((e) => JSON.parse(e.data));
    const indexes = results.map((x) => x.index).sort((a, b) => a - b);
    if (indexes.length !== 30) {
      const logs = await podLogs(ns.name, `${FUNCTION_LABEL}=burst`, 'sluice-proxy');
      expect.fail(`curl exit ${r.code} ${r.stderr}, ${r.status} ${r.body.slice(0, 3000)}\n${logs}`);
    }
    expect(indexes).toEqual([...Array(30).keys()]);
    // 30 tasks waiting, 2 per replica: up to maxReplicas at once, and the new ones took tasks.
    expect(await replicas('burst')).toBe(3);
    expect(new Set(results.map((x) => x.replica)).size).toBe(3);
    const events = await getJson(['get', 'events', '-n', ns.name, '--field-selector', 'reason=Scaled']);
    expect(events.items.map((e: Manifest) => e.message)).toContainEqual(
      expect.stringMatching(
        /^scaled from 1 to 3 replicas \(burst: load \d+ \(streams \d+, map tasks waiting \d+/,
      ),
    );
  }, 150_000);

  it('a stream open on a pod chosen for removal completes: the idle pods go first, and a pod told to stop drains it', async () => {
    // burst runs 3 replicas after the map burst; one long stream keeps one of them busy.
    const opened = firstEvent((e) => e.event === 'message');
    const stream = curl(`${ingress}/burst/?n=60&pause=500`, [], opened.feed);
    await opened.seen;
    // The load (1 stream) needs 1 replica: after scaleDownDelaySeconds the two idle ones go.
    await waitFor(async () => (await replicas('burst')) === 1, { timeoutMs: 60_000, what: '3 -> 1' });
    await waitFor(async () => (await fnPods('burst')).length === 1, {
      timeoutMs: 60_000,
      what: 'one pod left',
    });
    const [busy] = await fnPods('burst');
    expect(busy!.metadata.annotations?.['controller.kubernetes.io/pod-deletion-cost']).toBe('1');
    // Now that pod is told to stop while the stream is open: it turns unready, drains, exits.
    const del = await kubectl(['delete', 'pod', busy!.metadata.name, '-n', ns.name, '--wait=false']);
    expect(del.code).toBe(0);
    const r = await stream;
    expect(r.code).toBe(0);
    expect(r.events.filter((e) => e.event === 'message').map((e) => JSON.parse(e.data).i)).toEqual([
      ...Array(60).keys(),
    ]);
    expect(r.events.at(-1)?.event).toBe('done');
    // It exited once the stream was over, well within its grace period (drain = maxDurationSeconds).
    await waitFor(
      async () =>
        !(await pods(ns.name, `${FUNCTION_LABEL}=burst`)).some(
          (p) => p.metadata.name === busy!.metadata.name,
        ),
      { timeoutMs: 60_000, what: 'the drained pod gone' },
    );
  }, 180_000);
});
