// Outgrowing one NATS server, on the local plane with pods that really run: `helm install
// --set nats.replicas=3` runs three NATS pods routed into one JetStream cluster, the operator
// gives examples/echo.yaml's map streams 3 replicas, and one NATS pod dies (its nats-server
// SIGKILLed; the pod runner restarts it) in the middle of a 400-input map through the ingress:
// nothing lost, nothing twice, the map ends.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { waitFor } from '../common/net.ts';
import { kubeconfigPath, kubectl, type Namespace, throwawayNamespace } from './support/cluster.ts';
import { CHART, helm, helmMissing, type Manifest, ROOT } from './support/helm.ts';
import { containerPids, curl, getJson, ingressUrl, isReady, pods, podsSimulated } from './support/plane.ts';

const skip = helmMissing || podsSimulated();
if (skip) console.warn(`skipping the NATS cluster plane test: ${skip}`);

describe.skipIf(Boolean(skip))('map over a 3-pod NATS cluster on the local plane', () => {
  // Its own release and ingress path: e2e-plane.test.ts installs release `sluice` (its
  // ClusterRoles are named after the release) and serves its echo at /echo on the same plane.
  const release = 'sluice-nc';
  const path = '/echo-nats-cluster';
  let system: Namespace;
  let ns: Namespace;
  let ingress: string;

  /** JetStream's view from one NATS pod's monitoring port (the host reaches pod IPs). */
  const jsz = async (pod: Manifest) => {
    const res = await fetch(`http://${pod.status.podIP}:8222/jsz?streams=true&config=true`);
    return (await res.json()) as Manifest;
  };
  const streamsOf = (body: Manifest) =>
    (body.account_details ?? []).flatMap((a: Manifest) => a.stream_detail ?? []) as Manifest[];

  beforeAll(async () => {
    ingress = ingressUrl();
    system = await throwawayNamespace('sluice-system');
    ns = await throwawayNamespace('natsha');
  });

  afterAll(async () => {
    await kubectl(['delete', 'sfn', '--all', '-n', ns?.name ?? 'none', '--wait=true', '--timeout=60s']);
    if (system)
      await helm(['uninstall', release, '--kubeconfig', kubeconfigPath(), '-n', system.name, '--wait']);
    await ns?.delete();
    await system?.delete();
  }, 120_000);

  it('installs three NATS pods that form one JetStream cluster, and echo with 3-replica map streams', async () => {
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
      '--set',
      'nats.replicas=3',
      '--wait',
      '--timeout=180s',
    ]);
    expect(install.code, install.stdout + install.stderr).toBe(0);
    const nats = await pods(system.name, 'app.kubernetes.io/component=nats');
    expect(nats).toHaveLength(3);
    for (const p of nats) expect(isReady(p), p.metadata.name).toBe(true);
    await waitFor(async () => (await jsz(nats[0]!)).meta_cluster?.cluster_size === 3, {
      timeoutMs: 60_000,
      what: 'a JetStream meta cluster of 3',
    });
    const echo = parse(await readFile(join(ROOT, 'examples', 'echo.yaml'), 'utf8'));
    echo.spec.ingress = { path };
    const apply = await kubectl(['apply', '-n', ns.name, '-f', '-'], { input: JSON.stringify(echo) });
    expect(apply.code, apply.stderr).toBe(0);
    await waitFor(
      async () => {
        const fn = await getJson(['get', 'sfn', 'echo', '-n', ns.name]);
        return fn.status?.readyReplicas === 2;
      },
      { timeoutMs: 180_000, what: 'echo with 2 ready replicas' },
    );
    const streams = await waitFor(
      async () => {
        const found = streamsOf(await jsz(nats[0]!)).filter((s) => s.name.endsWith(`_${ns.name}_echo`));
        return found.length === 2 ? found : undefined;
      },
      { timeoutMs: 60_000, what: "echo's map streams" },
    );
    for (const s of streams) expect(s.config.num_replicas).toBe(3);
  }, 420_000);

  it('a NATS pod killed mid-map of 400 inputs: nothing lost, nothing twice, the map ends', async () => {
    const nats = await pods(system.name, 'app.kubernetes.io/component=nats');
    const tasks = streamsOf(await jsz(nats[0]!)).find((s) => s.name === `SLUICE_TASKS_${ns.name}_echo`)!;
    const victim = nats.find((p) => p.metadata.name === tasks.cluster.leader)!;
    expect(victim, `the tasks stream's leader ${tasks.cluster.leader}`).toBeDefined();
    let results = 0;
    let killed = false;
    const inputs = JSON.stringify({ inputs: Array.from({ length: 400 }, (_, i) => ({ i, sleepMs: 20 })) });
    const r = await curl(`${ingress}${path}/_sluice/map`, ['-X', 'POST', '-d', inputs], (event) => {
      if (event.event === 'result') results++;
      if (!killed && results >= 100) {
        killed = true;
        for (const pid of containerPids(victim.metadata.uid, 'nats')) process.kill(pid, 'SIGKILL');
      }
    });
    expect(killed).toBe(true);
    expect(r.status).toBe(200);
    const indices = r.events
      .filter((e) => e.event === 'result')
      .map((e) => JSON.parse(e.data).index as number);
    expect(indices.length).toBe(new Set(indices).size);
    expect(indices.sort((a, b) => a - b)).toEqual([...Array(400).keys()]);
    expect(JSON.parse(r.events.at(-1)!.data)).toMatchObject({ count: 400, failed: 0 });
    // The pod runner restarted the killed server, which rejoined the cluster.
    await waitFor(
      async () => {
        const pod = await getJson(['get', 'pod', victim.metadata.name, '-n', system.name]);
        return isReady(pod) && (await jsz(pod)).meta_cluster?.cluster_size === 3;
      },
      { timeoutMs: 60_000, what: `${victim.metadata.name} back in the cluster` },
    );
  }, 180_000);
});
