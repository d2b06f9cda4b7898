import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { V1Pod } from '@kubernetes/client-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../common/net.ts';
import { exited } from '../common/process.ts';
import { contains, SIMULATED_POD_RANGE } from '../plane/addresses.ts';
import { SIMULATED_KEY } from '../plane/runner.ts';
import {
  GPU_PRODUCT_LABEL,
  GPU_TAINT,
  planeProcesses,
  SIMULATED_NODES,
  STATE_DIR,
} from '../scripts/cluster.ts';
import { clients, type Namespace, throwawayNamespace } from './support/cluster.ts';
import { podsSimulated } from './support/plane.ts';

// The local control plane itself: simulated GPU nodes as the scheduler sees them, kwok playing
// the pods that stay simulated, and `npm run cluster -- up|status|down` as a user runs it.
// (test/plane-runner.test.ts has the pods that really run.)
const runsPods = !podsSimulated();

const CLUSTER_SCRIPT = join(import.meta.dirname, '..', 'scripts', 'cluster.ts');
const runFile = promisify(execFile);
const { core } = clients();

function cluster(command: string, env: NodeJS.ProcessEnv = {}) {
  return runFile(process.execPath, [CLUSTER_SCRIPT, command], { env: { ...process.env, ...env } }).then(
    ({ stdout }) => ({ code: 0, stdout }),
    (err: { code: number; stdout: string; stderr: string }) => ({
      code: err.code,
      stdout: err.stdout + err.stderr,
    }),
  );
}

describe('simulated nodes', () => {
  it('are Ready, with GPU capacity, product labels and the GPU taint', async () => {
    const nodes = (await core.listNode({ labelSelector: 'type=kwok' })).items;
    expect(nodes.map((n) => n.metadata?.name).sort()).toEqual(SIMULATED_NODES.map((n) => n.name).sort());
    for (const want of SIMULATED_NODES) {
      const node = nodes.find((n) => n.metadata?.name === want.name);
      expect(node?.status?.conditions?.find((c) => c.type === 'Ready')?.status, want.name).toBe('True');
      expect(node?.status?.allocatable?.['nvidia.com/gpu'], want.name).toBe(
        want.gpus > 0 ? String(want.gpus) : undefined,
      );
      expect(node?.metadata?.labels?.[GPU_PRODUCT_LABEL], want.name).toBe(want.product || undefined);
      expect(node?.spec?.taints ?? [], want.name).toEqual(want.gpus > 0 ? [GPU_TAINT] : []);
    }
  });
});

describe('scheduling onto simulated nodes', () => {
  let ns: Namespace;
  beforeAll(async () => {
    ns = await throwawayNamespace('sched');
  });
  afterAll(async () => {
    await ns?.delete();
  });

  // Scheduling alone: these pods tolerate sluice.dev/simulated, so kwok plays them and nothing runs.
  function pod(name: string, spec: Partial<NonNullable<V1Pod['spec']>> = {}, gpus = 0): V1Pod {
    return {
      metadata: { name },
      spec: {
        containers: [
          {
            name: 'fn',
            image: 'ghcr.io/acme/echo:1',
            resources: gpus ? { limits: { 'nvidia.com/gpu': String(gpus) } } : {},
          },
        ],
        ...spec,
        tolerations: [{ key: SIMULATED_KEY, operator: 'Exists' }, ...(spec.tolerations ?? [])],
      },
    };
  }
  const gpuToleration = [{ key: GPU_TAINT.key, operator: 'Exists', effect: GPU_TAINT.effect }];

  async function readyPod(name: string): Promise<V1Pod> {
    return waitFor<V1Pod | undefined>(
      async () => {
        const p = await core.readNamespacedPod({ name, namespace: ns.name });
        return p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ? p : undefined;
      },
      { timeoutMs: 30_000, what: `pod ${name} Ready` },
    );
  }

  it('an H100 pod is bound to an H100 node and kwok makes it Running and Ready', async () => {
    await core.createNamespacedPod({
      namespace: ns.name,
      body: pod(
        'h100',
        { nodeSelector: { [GPU_PRODUCT_LABEL]: 'NVIDIA-H100-80GB-HBM3' }, tolerations: gpuToleration },
        2,
      ),
    });
    const ready = await readyPod('h100');
    expect(ready.spec?.nodeName).toMatch(/^gpu-h100-/);
    expect(ready.status?.phase).toBe('Running');
    // kwok's addresses: nothing answers there (the runner's pods have per-node ranges).
    expect(contains(SIMULATED_POD_RANGE, ready.status?.podIP ?? '')).toBe(true);
  });

  it('pods without the GPU toleration land on the CPU node only', async () => {
    const names = ['cpu-a', 'cpu-b', 'cpu-c'];
    await Promise.all(names.map((name) => core.createNamespacedPod({ namespace: ns.name, body: pod(name) })));
    for (const name of names) expect((await readyPod(name)).spec?.nodeName).toBe('cpu-0');
  });

  it('a pod asking for more GPUs than any node has stays Pending with the scheduler saying why', async () => {
    await core.createNamespacedPod({
      namespace: ns.name,
      body: pod('greedy', { tolerations: gpuToleration }, 64),
    });
    const scheduled = await waitFor(
      async () => {
        const p = await core.readNamespacedPod({ name: 'greedy', namespace: ns.name });
        return p.status?.conditions?.find((c) => c.type === 'PodScheduled' && c.status === 'False');
      },
      { timeoutMs: 30_000, what: 'PodScheduled=False' },
    );
    expect(scheduled.reason).toBe('Unschedulable');
    expect(scheduled.message).toContain('Insufficient nvidia.com/gpu');
  });
});

describe('npm run cluster', () => {
  it('up reuses the running plane and status reports it', async () => {
    const began = Date.now();
    const up = await cluster('up');
    expect(up.code, up.stdout).toBe(0);
    expect(up.stdout).toMatch(/^reused control plane at https:\/\/127\.0\.0\.1:\d+/);
    console.log(`warm up: ${Date.now() - began} ms (process included)`);
    if (runsPods)
      expect(up.stdout).toContain(
        `pods run on this machine; ingress: http://127.0.0.1 (also in ${STATE_DIR}/ingress-url)`,
      );
    else expect(up.stdout).toMatch(/pods are simulated by kwok: /);
    const status = await cluster('status');
    expect(status.code, status.stdout).toBe(0);
    const node = ['pod-runner', 'kube-proxy', 'coredns', 'traefik', 'local-path-provisioner'];
    for (const name of [
      'etcd',
      'kube-apiserver',
      'kube-scheduler',
      'kube-controller-manager',
      'kwok',
      ...(runsPods ? node : []),
    ]) {
      expect(status.stdout).toMatch(new RegExp(`${name}\\s+running \\(pid \\d+\\)`));
    }
    expect(status.stdout).not.toMatch(/stray/);
  });

  it('a second plane in its own directory comes up, and down stops every process it started', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sluice-plane-'));
    // One plane per machine runs pods: while this run's plane does, the second one may not (and
    // says so); otherwise it is told not to try.
    const env = runsPods
      ? { SLUICE_CLUSTER_DIR: dir }
      : { SLUICE_CLUSTER_DIR: dir, SLUICE_POD_RUNNER: 'off' };
    try {
      const up = await cluster('up', env);
      expect(up.code, up.stdout).toBe(0);
      expect(up.stdout).toMatch(/^started control plane/);
      expect(up.stdout).toContain(
        runsPods
          ? `pods are simulated by kwok: the plane in ${STATE_DIR} runs this machine's pods`
          : 'pods are simulated by kwok: SLUICE_POD_RUNNER=off',
      );
      // Its kwok plays every pod, as a plane without a pod runner does.
      expect(await readFile(join(dir, 'kwok.yaml'), 'utf8')).not.toContain(SIMULATED_KEY);
      const statePath = join(dir, 'cluster.json');
      const state = JSON.parse(await readFile(statePath, 'utf8')) as { pids: Record<string, number> };
      const pids = Object.values(state.pids);
      expect(pids).toHaveLength(5);
      // What runs is exactly what the state file names: no process started twice.
      expect((await planeProcesses(dir)).map((p) => p.pid).sort()).toEqual([...pids].sort());
      const kubeconfig = await readFile(join(dir, 'kubeconfig'), 'utf8');
      expect(kubeconfig).toContain('client-certificate-data');

      // A state file that lost a pid (as overlapping writes once made it) still stops it all:
      // down finds the plane's processes by their marker, and the proof is by process.
      const { 'kube-scheduler': _forgotten, ...rest } = state.pids;
      await writeFile(statePath, JSON.stringify({ ...state, pids: rest }));
      const status = await cluster('status', env);
      expect(status.stdout).toMatch(/stray \S*kube-scheduler \(pid \d+\)/);

      const down = await cluster('down', env);
      expect(down.code, down.stdout).toBe(0);
      for (const pid of pids) expect(await exited(pid), `pid ${pid}`).toBe(true);
      expect(await planeProcesses(dir)).toEqual([]);
      expect((await cluster('status', env)).code).toBe(1);
      // Its down left this run's plane, and the pod network, as they were.
      if (runsPods) expect(podsSimulated()).toBe('');
    } finally {
      await cluster('down', env);
      await rm(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
