// End to end on the local control plane with kwok's simulated GPU nodes: the chart installed with
// `helm install --wait`, then `sluice operator` run as a process with exactly the arguments of the
// chart's Deployment and the chart's ServiceAccount token, through a proxy that records every API
// request it makes. Functions are applied with kubectl; the real scheduler places their pods.
// NATS runs locked down from the keys the operator wrote into its Secret. Last, the recorded
// requests are compared with the chart's RBAC rules, both ways. Scheduling and RBAC are what this
// file is about: every pod here tolerates sluice.dev/simulated, so kwok plays it
// (test/e2e-plane.test.ts runs the same chart and functions as real processes).
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, credsAuthenticator } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { mapNames } from '../common/map-streams.ts';
import { freePort, waitFor } from '../common/net.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { type Started, startSluice } from '../harness/process.ts';
import { FUNCTION_LABEL } from '../operator/desired.ts';
import { SIMULATED_KEY } from '../plane/runner.ts';
import { GPU_PRODUCT_LABEL, SIMULATED_NODES } from '../scripts/cluster.ts';
import {
  applyObject,
  kubeConfig,
  kubeconfigPath,
  kubectl,
  type Namespace,
  throwawayNamespace,
} from './support/cluster.ts';
import { CHART, find, HELM, helm, helmMissing, type Manifest, parseManifests, ROOT } from './support/helm.ts';
import { ingressUrl, podsSimulated } from './support/plane.ts';
import {
  grants,
  type PolicyRule,
  type RecordingProxy,
  requestAttributes,
  startRecordingProxy,
  tokenKubeconfig,
} from './support/rbac.ts';

const missing = [
  HELM,
  ...['kube-scheduler', 'kube-controller-manager', 'kwok'].map((b) => join(ROOT, '.sluice', 'bin', b)),
]
  .filter((path) => !existsSync(path))
  .join(', ');
if (missing) console.warn(`skipping the GPU end-to-end test: missing ${missing} (run scripts/tools.sh)`);

const SIMULATED = { key: SIMULATED_KEY, operator: 'Exists' };
const H100_NODES = SIMULATED_NODES.filter((n) => n.product === 'NVIDIA-H100-80GB-HBM3').map((n) => n.name);
const GPU_NODES = SIMULATED_NODES.filter((n) => n.gpus > 0).map((n) => n.name);
/** Never made: blockOwnerDeletion is checked by the OwnerReferencesPermissionEnforcement admission plugin. */
const AUTHORIZATION_ONLY = ['sluice.dev|streamingfunctions/finalizers|update'];

describe.skipIf(Boolean(missing || helmMissing))('end to end with simulated GPU nodes', () => {
  const release = `e2e-${randomBytes(3).toString('hex')}`;
  let system: Namespace;
  let functions: Namespace;
  let dir: string;
  let nats: NatsServer;
  let natsUrl: string;
  let operatorAdmin: string;
  let recorder: RecordingProxy;
  let operator: Started;
  let rendered: Manifest[];
  let installOutput: string;

  const sfn = async (name: string): Promise<Manifest | undefined> => {
    const r = await kubectl(['get', 'sfn', name, '-n', functions.name, '-o', 'json']);
    return r.code === 0 ? (JSON.parse(r.stdout) as Manifest) : undefined;
  };
  const pods = async (name: string): Promise<Manifest[]> => {
    const r = await kubectl([
      'get',
      'pods',
      '-n',
      functions.name,
      '-l',
      `${FUNCTION_LABEL}=${name}`,
      '-o',
      'json',
    ]);
    if (r.code !== 0) throw new Error(r.stderr);
    return (JSON.parse(r.stdout).items as Manifest[]).filter((p) => !p.metadata.deletionTimestamp);
  };
  const condition = (object: Manifest | undefined, type: string) =>
    (object?.status?.conditions as Manifest[] | undefined)?.find((c) => c.type === type);
  const ready = (pod: Manifest) => condition(pod, 'Ready')?.status === 'True';
  const setReplicas = (name: string, replicas: number) =>
    kubectl([
      'patch',
      'sfn',
      name,
      '-n',
      functions.name,
      '--type=merge',
      '-p',
      JSON.stringify({ spec: { scaling: { minReplicas: replicas, maxReplicas: Math.max(replicas, 4) } } }),
    ]);

  beforeAll(async () => {
    system = await throwawayNamespace('e2e-sys');
    functions = await throwawayNamespace('e2e-fn');
    dir = await mkdtemp(join(tmpdir(), 'sluice-e2e-'));
    const natsPort = await freePort();
    natsUrl = `nats://127.0.0.1:${natsPort}`;

    // The chart as a user installs it, less the CRD (the test run's global setup owns it).
    const install = await helm([
      'install',
      release,
      CHART,
      '--kubeconfig',
      kubeconfigPath(),
      '--namespace',
      system.name,
      '--set',
      'crds.enabled=false',
      '--set',
      'nats.enabled=false',
      '--set',
      `nats.url=${natsUrl}`,
      '--set',
      `operator.watchNamespace=${functions.name}`,
      '--set',
      'metrics.readers[0].name=prometheus',
      '--set',
      `metrics.readers[0].namespace=${system.name}`,
      ...['operator', 'activator'].flatMap((part) => [
        '--set',
        `${part}.tolerations[0].key=${SIMULATED_KEY}`,
        '--set',
        `${part}.tolerations[0].operator=Exists`,
      ]),
      '--wait',
      '--timeout=120s',
    ]);
    installOutput = install.stdout + install.stderr;
    if (install.code !== 0) throw new Error(`helm install failed: ${installOutput}`);
    rendered = parseManifests(
      (await helm(['get', 'manifest', release, '--kubeconfig', kubeconfigPath(), '-n', system.name])).stdout,
    );

    // The operator authenticates as the chart's ServiceAccount, through the recording proxy.
    const deployment = find(rendered, 'Deployment', '-operator')!;
    const pod = deployment.spec.template.spec;
    const token = await kubectl([
      'create',
      'token',
      pod.serviceAccountName,
      '-n',
      system.name,
      '--duration=3600s',
    ]);
    if (token.code !== 0) throw new Error(token.stderr);
    const admin = kubeConfig().getCurrentCluster()!;
    const ca = admin.caData ? Buffer.from(admin.caData, 'base64') : await readFile(admin.caFile!);
    recorder = await startRecordingProxy(new URL(admin.server), ca, dir);
    const kubeconfig = join(dir, 'operator.kubeconfig');
    await writeFile(kubeconfig, tokenKubeconfig(recorder.url, recorder.caPem, token.stdout.trim()));

    const adminPort = await freePort();
    const args = (pod.containers[0].args as string[]).map((a) =>
      a.startsWith('--metrics=') ? `--metrics=127.0.0.1:${adminPort}` : a,
    );
    operator = startSluice([...args, `--kubeconfig=${kubeconfig}`], {
      env: {
        ...process.env,
        POD_NAME: `${release}-local`,
        POD_NAMESPACE: system.name,
        SLUICE_LOG_LEVEL: 'info',
      },
    });
    operatorAdmin = `http://127.0.0.1:${adminPort}`;
    await waitFor(async () => (await fetch(`${operatorAdmin}/readyz`)).ok, {
      timeoutMs: 30_000,
      what: `the operator to lead and sync (${operator.output().slice(-2000)})`,
    });
    // The NATS that nats.url names, configured as the README says: the trust.conf of the keys the
    // operator made on its first start, and a full resolver.
    const keys = await kubectl([
      'get',
      'secret',
      `${release}-sluice-nats-auth`,
      '-n',
      system.name,
      '-o',
      'json',
    ]);
    if (keys.code !== 0) throw new Error(`no NATS keys Secret: ${keys.stderr}`);
    const trust = Buffer.from(JSON.parse(keys.stdout).data['trust.conf'], 'base64').toString();
    nats = await startNats({ trust, port: natsPort });
  }, 240_000);

  afterAll(async () => {
    await operator?.stop();
    await recorder?.close();
    await nats?.stop();
    if (system) {
      await helm(['uninstall', release, '--kubeconfig', kubeconfigPath(), '-n', system.name, '--wait']);
      await system.delete();
    }
    await functions?.delete();
    if (dir) await rm(dir, { recursive: true, force: true });
  }, 120_000);

  it('helm install --wait brought up the operator and printed the next steps', async () => {
    const deployment = await kubectl(['get', 'deployment', '-n', system.name, '-o', 'json']);
    const items = JSON.parse(deployment.stdout).items as Manifest[];
    // kwok marks the operator pods Running and Ready without pulling the image.
    expect(items.map((d) => [d.metadata.name, d.status.readyReplicas])).toEqual([
      [`${release}-sluice-activator`, 2],
      [`${release}-sluice-operator`, 2],
    ]);
    expect(installOutput).toContain('kubectl get sfn');
    expect(installOutput).toContain(`It watches only namespace ${functions.name}`);
  }, 120_000);

  it('places a 2×H100 function on H100 nodes and turns it Ready with its URL', async () => {
    const manifest = parse(await readFile(join(ROOT, 'examples', 'gpu-h100.yaml'), 'utf8'));
    manifest.spec.tolerations = [SIMULATED];
    const apply = await kubectl(['apply', '-n', functions.name, '-f', '-'], {
      input: JSON.stringify(manifest),
    });
    expect(apply.stderr).toBe('');
    const placed = await waitFor(
      async () => {
        const list = await pods('gpu-h100');
        return list.length === 1 && list.every(ready) ? list : undefined;
      },
      { timeoutMs: 60_000, what: 'gpu-h100 pod Ready' },
    );
    const pod = placed[0]!;
    expect(H100_NODES).toContain(pod.spec.nodeName);
    expect(pod.spec.nodeSelector[GPU_PRODUCT_LABEL]).toBe('NVIDIA-H100-80GB-HBM3');
    const fnContainer = pod.spec.containers.find((c: Manifest) => c.image === 'sluice-examples:dev');
    expect(fnContainer.resources.limits['nvidia.com/gpu']).toBe('2');
    expect(pod.spec.tolerations.some((t: Manifest) => t.key === 'nvidia.com/gpu')).toBe(true);
    const fn = await waitFor(
      async () => {
        const f = await sfn('gpu-h100');
        return condition(f, 'Ready')?.status === 'True' ? f : undefined;
      },
      { timeoutMs: 30_000, what: 'gpu-h100 Ready' },
    );
    // Where the plane runs Traefik, it publishes the Ingress's address, and the URL is the ingress's.
    const ingress = podsSimulated() ? '' : ingressUrl();
    expect(fn.status.url).toBe(ingress ? `${ingress}/gpu-h100` : `http://gpu-h100.${functions.name}.svc`);
    expect(condition(fn, 'Scheduled')?.status).toBe('True');
    // The printer columns a user sees.
    const table = await kubectl(['get', 'sfn', 'gpu-h100', '-n', functions.name]);
    expect(table.stdout).toMatch(/^NAME\s+GPU\s+READY\s+REPLICAS\s+URL\s+AGE/);
    expect(table.stdout).toMatch(/gpu-h100\s+2\s+True\s+1\s+http:\/\//);
    expect(table.stdout).toContain(fn.status.url);
  }, 120_000);

  it('reports a function asking for 64 GPUs as Scheduled=False InsufficientGPU with the scheduler message', async () => {
    await applyObject(kubeconfigPath(), {
      apiVersion: 'sluice.dev/v1alpha1',
      kind: 'StreamingFunction',
      metadata: { name: 'huge', namespace: functions.name },
      spec: { image: 'sluice-examples:dev', gpu: { count: 64 }, tolerations: [SIMULATED] },
    });
    const scheduled = await waitFor(
      async () => {
        const c = condition(await sfn('huge'), 'Scheduled');
        return c?.status === 'False' ? c : undefined;
      },
      { timeoutMs: 60_000, what: 'huge Scheduled=False' },
    );
    expect(scheduled.reason).toBe('InsufficientGPU');
    const [pod] = await pods('huge');
    expect(pod!.spec.nodeName).toBeUndefined();
    const podScheduled = condition(pod, 'PodScheduled')!;
    expect(podScheduled.reason).toBe('Unschedulable');
    expect(podScheduled.message).toContain('Insufficient nvidia.com/gpu');
    expect(scheduled.message).toContain(podScheduled.message);
    // The scheduler's Event, which `kubectl describe` and `kubectl get events` show.
    const eventsOf = (fieldSelector: string, what: string) =>
      waitFor(
        async () => {
          const r = await kubectl([
            'get',
            'events',
            '-n',
            functions.name,
            '--field-selector',
            fieldSelector,
            '-o',
            'json',
          ]);
          const items = JSON.parse(r.stdout).items as Manifest[];
          return items.length > 0 ? items : undefined;
        },
        { what },
      );
    const events = await eventsOf(
      `involvedObject.name=${pod!.metadata.name},reason=FailedScheduling`,
      'a FailedScheduling event',
    );
    expect(events[0]!.type).toBe('Warning');
    expect(events[0]!.message).toContain('Insufficient nvidia.com/gpu');
    // And the operator's own, on the function, for `kubectl describe sfn`.
    const own = await eventsOf(
      'involvedObject.kind=StreamingFunction,involvedObject.name=huge,reason=InsufficientGPU',
      'an InsufficientGPU event on the StreamingFunction',
    );
    expect(own[0]!.type).toBe('Warning');
    expect(own[0]!.message).toContain('Insufficient nvidia.com/gpu');
    expect(condition(await sfn('huge'), 'Ready')?.status).toBe('False');
  }, 120_000);

  it('never puts a CPU function on a GPU node', async () => {
    await applyObject(kubeconfigPath(), {
      apiVersion: 'sluice.dev/v1alpha1',
      kind: 'StreamingFunction',
      metadata: { name: 'cpu', namespace: functions.name },
      spec: {
        image: 'sluice-examples:dev',
        scaling: { minReplicas: 4, maxReplicas: 4 },
        tolerations: [SIMULATED],
      },
    });
    let seen: Manifest[] = [];
    const placed = await waitFor(
      async () => {
        seen = await pods('cpu');
        return seen.length === 4 && seen.every(ready) ? seen : undefined;
      },
      { timeoutMs: 50_000, what: '4 cpu pods Ready' },
    ).catch((err) => {
      throw new Error(
        `${err.message}: ${JSON.stringify(seen.map((p) => [p.spec.nodeName, p.status]))} ${JSON.stringify(sfn)}`,
      );
    });
    for (const pod of placed) {
      expect(GPU_NODES).not.toContain(pod.spec.nodeName);
      expect(JSON.stringify(pod.spec.containers.map((c: Manifest) => c.resources))).not.toContain(
        'nvidia.com/gpu',
      );
    }
  }, 120_000);

  it('scales minReplicas up and down by moving pods', async () => {
    expect((await setReplicas('gpu-h100', 3)).code).toBe(0);
    const up = await waitFor(
      async () => {
        const list = await pods('gpu-h100');
        return list.length === 3 && list.every(ready) ? list : undefined;
      },
      { timeoutMs: 60_000, what: '3 gpu-h100 pods Ready' },
    );
    for (const pod of up) expect(H100_NODES).toContain(pod.spec.nodeName);
    await waitFor(async () => (await sfn('gpu-h100'))?.status?.readyReplicas === 3, {
      timeoutMs: 30_000,
      what: 'status.readyReplicas 3',
    });
    expect((await setReplicas('gpu-h100', 1)).code).toBe(0);
    await waitFor(async () => (await pods('gpu-h100')).length === 1, {
      timeoutMs: 60_000,
      what: 'back to 1 pod',
    });
    await waitFor(async () => (await sfn('gpu-h100'))?.status?.readyReplicas === 1, {
      timeoutMs: 30_000,
      what: 'status.readyReplicas 1',
    });
  }, 120_000);

  it("locks NATS down: each map function's credentials reach its own streams, nothing gets in without", async () => {
    const secret = await waitFor(
      async () => {
        const r = await kubectl([
          'get',
          'secret',
          'gpu-h100-nats-credentials',
          '-n',
          functions.name,
          '-o',
          'json',
        ]);
        return r.code === 0 ? (JSON.parse(r.stdout) as Manifest) : undefined;
      },
      { timeoutMs: 30_000, what: "gpu-h100's NATS credentials" },
    );
    const creds = Buffer.from(secret.data['nats.creds'], 'base64');
    const nc = await connect({ servers: natsUrl, authenticator: credsAuthenticator(creds) });
    try {
      const names = mapNames(`${functions.name}/gpu-h100`);
      // The operator made the streams (it retried until this NATS was up).
      const info = await waitFor(
        () => jetstreamManager(nc).then((jsm) => jsm.streams.info(names.tasksStream)),
        {
          timeoutMs: 30_000,
          what: 'the tasks stream',
        },
      );
      expect(info.config.subjects).toEqual([names.tasksSubjects]);
    } finally {
      await nc.close();
    }
    await expect(connect({ servers: natsUrl })).rejects.toThrow(/Authorization Violation/);
    const [pod] = await pods('gpu-h100');
    const sidecar = pod!.spec.containers.find((c: Manifest) => c.name === 'sluice-proxy');
    expect(sidecar.args).toContain('--nats-credentials=/etc/sluice/nats/nats.creds');
    const policy = await kubectl(['get', 'networkpolicy', 'gpu-h100', '-n', functions.name, '-o', 'json']);
    expect(JSON.parse(policy.stdout).spec.podSelector.matchLabels).toEqual({ [FUNCTION_LABEL]: 'gpu-h100' });
  }, 120_000);

  it('keeps the NATS credentials of a function that turns map off: its sidecars still report load', async () => {
    const secret = () => kubectl(['get', 'secret', 'cpu-nats-credentials', '-n', functions.name]);
    await waitFor(async () => (await secret()).code === 0, { timeoutMs: 30_000, what: "cpu's credentials" });
    const patch = await kubectl([
      'patch',
      'sfn',
      'cpu',
      '-n',
      functions.name,
      '--type=merge',
      '-p',
      '{"spec":{"map":{"enabled":false}}}',
    ]);
    expect(patch.code).toBe(0);
    const sidecarArgs = async () => {
      const got = await kubectl(['get', 'deployment', 'cpu', '-n', functions.name, '-o', 'json']);
      const containers = JSON.parse(got.stdout).spec.template.spec.containers as Manifest[];
      return containers.find((c) => c.name === 'sluice-proxy')?.args as string[];
    };
    const args = await waitFor(
      async () => ((await sidecarArgs()).includes('--map=false') ? sidecarArgs() : undefined),
      {
        what: 'the Deployment with map off',
      },
    );
    expect(args).toContain('--nats-credentials=/etc/sluice/nats/nats.creds');
    expect((await secret()).code).toBe(0);
  }, 120_000);

  it("serves the operator's /metrics to the chart's metrics readers only", async () => {
    expect((await fetch(`${operatorAdmin}/metrics`)).status).toBe(401);
    const sa = await kubectl(['create', 'serviceaccount', 'prometheus', '-n', system.name]);
    expect(sa.code).toBe(0);
    const token = await kubectl(['create', 'token', 'prometheus', '-n', system.name, '--duration=600s']);
    const response = await fetch(`${operatorAdmin}/metrics`, {
      headers: { authorization: `Bearer ${token.stdout.trim()}` },
    });
    expect(response.status).toBe(200);
    expect(await response.text()).toContain('sluice_operator_reconcile_total');
  }, 120_000);

  it('deletes an Ingress the spec no longer wants', async () => {
    const ingress = () => kubectl(['get', 'ingress', 'gpu-h100', '-n', functions.name]);
    await waitFor(async () => (await ingress()).code === 0, { what: 'the gpu-h100 Ingress' });
    const patch = await kubectl([
      'patch',
      'sfn',
      'gpu-h100',
      '-n',
      functions.name,
      '--type=merge',
      '-p',
      '{"spec":{"ingress":{"enabled":false}}}',
    ]);
    expect(patch.code).toBe(0);
    await waitFor(async () => (await ingress()).stderr.includes('NotFound'), { what: 'the Ingress deleted' });
  }, 120_000);

  it('removes the pods of a deleted function', async () => {
    const del = await kubectl([
      'delete',
      'sfn',
      'gpu-h100',
      'huge',
      'cpu',
      '-n',
      functions.name,
      '--wait=true',
    ]);
    expect(del.code).toBe(0);
    for (const name of ['gpu-h100', 'huge', 'cpu']) {
      await waitFor(async () => (await pods(name)).length === 0, {
        timeoutMs: 60_000,
        what: `${name} pods gone`,
      });
    }
    // The garbage collector deletes the owned objects once their owner is gone, in its own time
    // (pods may go first: the finalizer scales the function down), so their going is waited for.
    let left = '';
    await waitFor(
      async () => {
        const r = await kubectl([
          'get',
          'deployments,services,ingresses',
          '-n',
          functions.name,
          '-o',
          'name',
        ]);
        left = r.stdout.trim();
        return r.code === 0 && left === '';
      },
      { timeoutMs: 60_000, what: () => `the owned objects gone; left: ${left}` },
    );
  }, 120_000);

  it("the chart's RBAC grants exactly the API calls the operator made, and none was refused", async () => {
    // Stop first: the Lease release on shutdown is one of the calls.
    await operator.stop();
    if (recorder.clientErrors.length > 0) {
      console.warn(
        `the operator sent bytes that are no HTTP request (${recorder.clientErrors.join(', ')}): a request body without Content-Length?`,
      );
    }
    const refused = recorder.calls.filter((c) => c.status === 401 || c.status === 403);
    expect(refused).toEqual([]);
    const used = new Set<string>();
    for (const call of recorder.calls) {
      const a = requestAttributes(call.method, call.url);
      if (!a) continue;
      // Cluster-scoped resources (token and access reviews) are granted by ClusterRoles only.
      const ns = a.namespace || '*';
      used.add(`${ns}|${a.apiGroup}|${a.resource}|${a.verb}`);
      // A server-side apply that creates the object is authorized as create as well as patch.
      if (a.verb === 'patch' && call.status === 201) used.add(`${ns}|${a.apiGroup}|${a.resource}|create`);
    }
    const granted = new Set<string>();
    // The operator's roles (the activator's own, for its ServiceAccount, are not the operator's to use).
    const operatorRoles = rendered.filter(
      (m) => (m.kind === 'Role' || m.kind === 'ClusterRole') && !m.metadata.name.endsWith('-activator'),
    );
    for (const role of operatorRoles) {
      const ns = role.kind === 'Role' ? role.metadata.namespace : '*';
      for (const g of grants(ns, role.rules as PolicyRule[])) granted.add(g);
    }
    const expected = [...granted].filter((g) => !AUTHORIZATION_ONLY.some((a) => g.endsWith(`|${a}`))).sort();
    expect([...used].sort()).toEqual(expected);
  }, 120_000);
});
