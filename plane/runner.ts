// The pod runner: a kubelet for processes, for every node kwok simulates. It watches the pods
// bound to those nodes (except the ones kwok keeps simulated) and runs each with a PodWorker;
// it serves the kubelet API for `kubectl logs` on the node address, and forwards the node
// address's API port to the API server (the `kubernetes` Service's endpoint).
//   node plane/runner.ts --kubeconfig <file> --state <dir> --pki <dir>
import { randomBytes } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { errorMessage } from '../common/errors.ts';
import { createLogger } from '../common/log.ts';
import { Informer } from '../operator/informer.ts';
import { isNotFound, KubeClient } from '../operator/kube.ts';
import { API_PORT, IpPool, KUBELET_PORT, NODE_ADDRESS, POD_CIDR_ANNOTATION } from './addresses.ts';
import { PLANE_CGROUP, removeCgroup } from './cgroups.ts';
import { ImageTable } from './images.ts';
import { startForwarder, startKubeletApi } from './kubelet-api.ts';
import { deleteSandbox, planeNamespaces } from './network.ts';
import { type NodeInfo, type PodHost, PodWorker, type ServiceInfo } from './pod.ts';
import type { Node, Pod } from './types.ts';
import { VolumeError } from './volumes.ts';

/** A pod that tolerates this key stays simulated: kwok plays it, the runner leaves it alone. */
export const SIMULATED_KEY = 'sluice.dev/simulated';

export function simulated(pod: Pod): boolean {
  return (pod.spec.tolerations ?? []).some((t) => t.key === SIMULATED_KEY);
}

const log = createLogger('pod-runner');

// biome-ignore lint/suspicious/noExplicitAny: API objects are open-ended JSON
type Json = Record<string, any>;

function buffers(data: Record<string, string> | undefined, encoding: 'base64' | 'utf8') {
  return Object.fromEntries(Object.entries(data ?? {}).map(([k, v]) => [k, Buffer.from(v, encoding)]));
}

async function orUndefined<T>(work: Promise<T>): Promise<T | undefined> {
  try {
    return await work;
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
}

function podApi(kube: KubeClient, nodeName: () => string): PodHost['api'] {
  const podPath = (pod: Pod) => `/api/v1/namespaces/${pod.metadata.namespace}/pods/${pod.metadata.name}`;
  return {
    async configMap(ns, name) {
      const cm = await orUndefined(kube.get<Json>(`/api/v1/namespaces/${ns}/configmaps/${name}`));
      return cm && { ...buffers(cm.data, 'utf8'), ...buffers(cm.binaryData, 'base64') };
    },
    async secret(ns, name) {
      const secret = await orUndefined(kube.get<Json>(`/api/v1/namespaces/${ns}/secrets/${name}`));
      return secret && buffers(secret.data, 'base64');
    },
    async token(pod, audience, expirationSeconds) {
      const sa = pod.spec.serviceAccountName || 'default';
      const answer = await kube.request<Json>(
        'POST',
        `/api/v1/namespaces/${pod.metadata.namespace}/serviceaccounts/${sa}/token`,
        {
          body: {
            apiVersion: 'authentication.k8s.io/v1',
            kind: 'TokenRequest',
            spec: {
              audiences: audience ? [audience] : [],
              expirationSeconds,
              boundObjectRef: {
                apiVersion: 'v1',
                kind: 'Pod',
                name: pod.metadata.name,
                uid: pod.metadata.uid,
              },
            },
          },
        },
      );
      return { token: answer.status.token, expires: new Date(answer.status.expirationTimestamp) };
    },
    async claimPath(ns, claim) {
      const pvc = await orUndefined(
        kube.get<Json>(`/api/v1/namespaces/${ns}/persistentvolumeclaims/${claim}`),
      );
      if (!pvc) throw new VolumeError(`persistentvolumeclaim "${claim}" not found`, true);
      if (pvc.status?.phase !== 'Bound' || !pvc.spec.volumeName) {
        throw new VolumeError(`persistentvolumeclaim "${claim}" is not bound yet`, true);
      }
      const pv = await kube.get<Json>(`/api/v1/persistentvolumes/${pvc.spec.volumeName}`);
      const path = pv.spec.hostPath?.path ?? pv.spec.local?.path;
      if (!path) throw new VolumeError(`volume ${pv.metadata.name} is neither hostPath nor local`);
      return path;
    },
    async services(ns): Promise<ServiceInfo[]> {
      const list = await kube.get<Json>(`/api/v1/namespaces/${ns}/services`);
      return list.items.map((s: Json) => ({
        name: s.metadata.name,
        clusterIP: s.spec.clusterIP,
        ports: s.spec.ports ?? [],
      }));
    },
    async patchStatus(pod, status) {
      // The uid makes the patch conditional: a new pod of the same name is never written to.
      await kube.request('PATCH', `${podPath(pod)}/status`, {
        body: { metadata: { uid: pod.metadata.uid }, status },
        contentType: 'application/strategic-merge-patch+json',
      });
    },
    async deleteNow(pod) {
      await orUndefined(
        kube.request('DELETE', podPath(pod), {
          body: {
            apiVersion: 'v1',
            kind: 'DeleteOptions',
            gracePeriodSeconds: 0,
            preconditions: { uid: pod.metadata.uid },
          },
        }),
      );
    },
    event(pod, type, reason, message, container) {
      const now = new Date().toISOString();
      const ns = pod.metadata.namespace;
      const body = {
        apiVersion: 'v1',
        kind: 'Event',
        metadata: { name: `${pod.metadata.name}.${randomBytes(8).toString('hex')}`, namespace: ns },
        involvedObject: {
          apiVersion: 'v1',
          kind: 'Pod',
          namespace: ns,
          name: pod.metadata.name,
          uid: pod.metadata.uid,
          ...(container ? { fieldPath: `spec.containers{${container}}` } : {}),
        },
        type,
        reason,
        message,
        source: { component: 'kubelet', host: nodeName() },
        reportingComponent: 'kubelet',
        reportingInstance: nodeName(),
        firstTimestamp: now,
        lastTimestamp: now,
        count: 1,
      };
      kube.request('POST', `/api/v1/namespaces/${ns}/events`, { body }).catch(() => undefined);
    },
  };
}

export interface RunnerOptions {
  kubeconfig: string;
  /** The plane's state directory; pods keep their files in <state>/pods. */
  state: string;
  pki: string;
  images?: ImageTable;
}

export async function startRunner(options: RunnerOptions): Promise<{ stop: () => Promise<void> }> {
  const kube = await KubeClient.load(options.kubeconfig);
  const images = options.images ?? ImageTable.load();
  const podsDir = join(options.state, 'pods');
  // Whatever a previous runner left (it was killed, or the machine restarted) goes first.
  await removeCgroup(PLANE_CGROUP);
  for (const ns of await planeNamespaces()) await deleteSandbox(ns);
  await rm(podsDir, { recursive: true, force: true });

  const nodes = new Map<string, NodeInfo>();
  const workers = new Map<string, PodWorker>();
  const byName = new Map<string, PodWorker>();
  const nameKey = (ns: string, name: string) => `${ns}/${name}`;

  const nodeInformer = new Informer<Node>(kube, {
    path: '/api/v1/nodes',
    labelSelector: 'type=kwok',
    log,
    onChange: (node, change) => {
      const name = node.metadata.name;
      const cidr = node.metadata.annotations?.[POD_CIDR_ANNOTATION];
      if (change === 'deleted' || !cidr) {
        nodes.delete(name);
        return;
      }
      const existing = nodes.get(name);
      if (existing) {
        existing.allocatable = node.status?.allocatable ?? {};
        return;
      }
      const pool = new IpPool(cidr);
      nodes.set(name, {
        name,
        allocatable: node.status?.allocatable ?? {},
        allocateIp: (preferred) => (preferred && pool.claim(preferred) ? preferred : pool.allocate()),
        releaseIp: (ip) => pool.release(ip),
      });
    },
  });
  await nodeInformer.start();

  const host = (node: NodeInfo): PodHost => ({
    log,
    images,
    dir: podsDir,
    node,
    api: podApi(kube, () => node.name),
    finished: (uid) => {
      const worker = workers.get(uid);
      workers.delete(uid);
      if (worker) {
        const key = nameKey(worker.pod.metadata.namespace, worker.pod.metadata.name);
        if (byName.get(key) === worker) byName.delete(key);
      }
    },
  });

  const onPod = (pod: Pod, change: 'added' | 'modified' | 'deleted') => {
    const node = nodes.get(pod.spec.nodeName ?? '');
    if (!node || simulated(pod)) return;
    const uid = pod.metadata.uid;
    const worker = workers.get(uid);
    if (change === 'deleted') {
      void worker?.forget();
      return;
    }
    if (worker) {
      worker.update(pod);
      return;
    }
    const phase = pod.status?.phase;
    if (phase === 'Succeeded' || phase === 'Failed' || pod.metadata.deletionTimestamp) {
      // Finished before this runner started (or deleted before it ran): nothing to run.
      if (pod.metadata.deletionTimestamp)
        void podApi(kube, () => node.name)
          .deleteNow(pod)
          .catch(() => undefined);
      return;
    }
    const created = new PodWorker(pod, host(node));
    workers.set(uid, created);
    byName.set(nameKey(pod.metadata.namespace, pod.metadata.name), created);
    void created.run();
  };
  const podInformer = new Informer<Pod>(kube, {
    // Only pods bound to a node; the runner picks those on its nodes.
    path: '/api/v1/pods?fieldSelector=spec.nodeName%21%3D',
    log,
    onChange: onPod,
  });
  await podInformer.start();

  const [ca, cert, key] = await Promise.all(
    ['ca.crt', 'kubelet.crt', 'kubelet.key'].map((f) => readFile(join(options.pki, f))),
  );
  const api = new URL(kube.server);
  const forwarder = await startForwarder(NODE_ADDRESS, API_PORT, {
    host: api.hostname,
    port: Number(api.port || 443),
  });
  const kubelet = await startKubeletApi({
    address: NODE_ADDRESS,
    port: KUBELET_PORT,
    ca: ca!,
    cert: cert!,
    key: key!,
    source: {
      logFile: (ns, name, container, previous) => {
        const worker = byName.get(nameKey(ns, name));
        if (!worker) return undefined;
        if (!worker.containers().includes(container)) {
          return { error: `container ${container} is not valid for pod ${name}` };
        }
        const file = worker.logFile(container, previous);
        return file
          ? { file }
          : {
              error: `${previous ? 'previous terminated container' : 'container'} "${container}" in pod "${name}" ${previous ? 'not found' : 'is waiting to start'}`,
            };
      },
      running: (ns, name, container) => byName.get(nameKey(ns, name))?.running(container) ?? false,
    },
  });
  log.info({ nodes: [...nodes.keys()] }, 'pod runner ready');

  return {
    stop: async () => {
      kubelet.close();
      forwarder.close();
      await Promise.all([podInformer.stop(), nodeInformer.stop()]);
      await Promise.all([...workers.values()].map((w) => w.forget().catch(() => undefined)));
      await removeCgroup(PLANE_CGROUP);
      kube.close();
    },
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: { kubeconfig: { type: 'string' }, state: { type: 'string' }, pki: { type: 'string' } },
  });
  if (!values.kubeconfig || !values.state || !values.pki) {
    console.error('usage: node plane/runner.ts --kubeconfig <file> --state <dir> --pki <dir>');
    process.exit(2);
  }
  const runner = await startRunner({ kubeconfig: values.kubeconfig, state: values.state, pki: values.pki });
  const stop = async () => {
    await runner.stop().catch((err) => log.error({ err }, 'stopping'));
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

if (import.meta.main) {
  main().catch((err) => {
    console.error(`pod runner: ${errorMessage(err)}`);
    process.exit(1);
  });
}
