// The node side of the local plane, which scripts/cluster.ts starts after the control plane:
// the pod runner, kube-proxy (nftables mode), CoreDNS (kubernetes plugin), Traefik (the
// ingress controller, on loopback) and rancher's local-path-provisioner (the default
// StorageClass). All run on the host as the admin user; a real cluster runs them as pods.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { join } from 'node:path';
import type { KubeClient, KubeObject } from '../operator/kube.ts';
import {
  API_PORT,
  CLUSTER_DOMAIN,
  DNS_PORT,
  DNS_SERVICE_IP,
  KUBELET_PORT,
  NODE_ADDRESS,
  POD_RANGE,
} from './addresses.ts';

export const NODE_COMPONENTS = [
  'pod-runner',
  'kube-proxy',
  'coredns',
  'traefik',
  'local-path-provisioner',
] as const;
export type NodeComponent = (typeof NODE_COMPONENTS)[number];

/** Where Traefik serves the cluster's Ingresses (port 80, so Ingress status URLs need no port). */
export const INGRESS_ADDRESS = process.env.SLUICE_INGRESS_ADDRESS ?? '127.0.0.1:80';
export const INGRESS_CLASS = 'traefik';
export const STORAGE_CLASS = 'local-path';
export const LOCAL_PATH_NAMESPACE = 'local-path-storage';
const LOCAL_PATH_ACCOUNT = 'local-path-provisioner-service-account';
const FIELD_MANAGER = 'sluice-plane';

export function ingressUrl(): string {
  const [host, port] = INGRESS_ADDRESS.split(':');
  return port === '80' ? `http://${host}` : `http://${INGRESS_ADDRESS}`;
}

export interface NodeContext {
  root: string;
  state: string;
  bin: string;
  pki: string;
  kubeconfig: string;
  /** Loopback ports for health endpoints, chosen once per plane. */
  ports: {
    proxyHealth: number;
    proxyMetrics: number;
    dnsHealth: number;
    dnsReady: number;
    /** Traefik's own entry point: /ping and its read-only API (which routes it has loaded). */
    traefikAdmin: number;
  };
  /** kube-proxy stands in for every node; it takes this node's name. */
  nodeName: string;
  node: string;
}

export function localPathDir(state: string): string {
  return join(state, 'local-path');
}

function kubeProxyConfig(ctx: NodeContext): string {
  return `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clusterCIDR: ${POD_RANGE}
hostnameOverride: ${ctx.nodeName}
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:${ctx.ports.proxyHealth}
metricsBindAddress: 127.0.0.1:${ctx.ports.proxyMetrics}
nodePortAddresses: [${NODE_ADDRESS}/32]
clientConnection:
  kubeconfig: ${ctx.kubeconfig}
# Leave the machine's conntrack settings as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`;
}

export function corefile(ctx: NodeContext): string {
  // No forward plugin: pods resolve cluster names only, nothing outside the machine.
  return `.:${DNS_PORT} {
    bind ${NODE_ADDRESS}
    errors
    health 127.0.0.1:${ctx.ports.dnsHealth}
    ready 127.0.0.1:${ctx.ports.dnsReady}
    kubernetes ${CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {
        kubeconfig ${ctx.kubeconfig} sluice
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    loadbalance
}
`;
}

function helperPod(): string {
  return `apiVersion: v1
kind: Pod
metadata:
  name: helper-pod
spec:
  priorityClassName: system-node-critical
  containers:
  - name: helper-pod
    image: busybox
    imagePullPolicy: IfNotPresent
`;
}

/** Writes the components' configuration files; returns the command line of each. */
export async function prepareNode(
  ctx: NodeContext,
): Promise<Record<NodeComponent, { file: string; args: string[]; env?: Record<string, string> }>> {
  const dir = join(ctx.state, 'node');
  await mkdir(dir, { recursive: true });
  await mkdir(localPathDir(ctx.state), { recursive: true });
  await writeFile(join(dir, 'kube-proxy.yaml'), kubeProxyConfig(ctx));
  await writeFile(join(dir, 'Corefile'), corefile(ctx));
  await writeFile(
    join(dir, 'local-path.json'),
    JSON.stringify({
      nodePathMap: [{ node: 'DEFAULT_PATH_FOR_NON_LISTED_NODES', paths: [localPathDir(ctx.state)] }],
    }),
  );
  await writeFile(join(dir, 'helper-pod.yaml'), helperPod());
  const bin = (name: string) => join(ctx.bin, name);
  return {
    'pod-runner': {
      file: ctx.node,
      args: [
        join(ctx.root, 'plane', 'runner.ts'),
        '--kubeconfig',
        ctx.kubeconfig,
        '--state',
        ctx.state,
        '--pki',
        ctx.pki,
      ],
    },
    'kube-proxy': { file: bin('kube-proxy'), args: [`--config=${join(dir, 'kube-proxy.yaml')}`] },
    coredns: { file: bin('coredns'), args: ['-conf', join(dir, 'Corefile')] },
    traefik: {
      file: bin('traefik'),
      args: [
        `--entryPoints.web.address=${INGRESS_ADDRESS}`,
        `--entryPoints.traefik.address=127.0.0.1:${ctx.ports.traefikAdmin}`,
        '--ping=true',
        '--ping.entryPoint=traefik',
        // Its API (on loopback) tells a test which servers a route has now: an EndpointSlice
        // change reaches the routes a moment after the API server has it.
        '--api=true',
        '--api.insecure=true',
        '--api.dashboard=false',
        // One JSON line per request (status from the function, duration, bytes): what the
        // ingress saw when a test's stream ends early.
        '--accesslog=true',
        '--accesslog.format=json',
        `--accesslog.filepath=${join(ctx.state, 'logs', 'traefik-access.log')}`,
        '--providers.kubernetesingress=true',
        // Routes follow Ingress and endpoint changes within 0.1 s (2 s by default).
        '--providers.providersThrottleDuration=100ms',
        `--providers.kubernetesingress.ingressendpoint.ip=${INGRESS_ADDRESS.split(':')[0]}`,
        // A Service with no ready endpoint answers 503, not 404.
        '--providers.kubernetesingress.allowEmptyServices=true',
        '--global.checknewversion=false',
        '--global.sendanonymoususage=false',
        '--log.level=INFO',
      ],
      env: { KUBECONFIG: ctx.kubeconfig },
    },
    'local-path-provisioner': {
      file: bin('local-path-provisioner'),
      args: [
        'start',
        `--kubeconfig=${ctx.kubeconfig}`,
        `--config=${join(dir, 'local-path.json')}`,
        `--helper-pod-file=${join(dir, 'helper-pod.yaml')}`,
        `--namespace=${LOCAL_PATH_NAMESPACE}`,
        `--service-account-name=${LOCAL_PATH_ACCOUNT}`,
        '--configmap-name=local-path-config',
        '--helper-image=busybox',
        '--provisioner-name=rancher.io/local-path',
      ],
    },
  };
}

async function httpOk(url: string): Promise<boolean> {
  try {
    return (await fetch(url, { signal: AbortSignal.timeout(2_000) })).ok;
  } catch {
    return false;
  }
}

/** Each component's own word that it is serving. */
export function nodeReady(name: NodeComponent, ctx: NodeContext): Promise<boolean> {
  switch (name) {
    case 'pod-runner':
      return kubeletHealthy(ctx.pki);
    case 'kube-proxy':
      return httpOk(`http://127.0.0.1:${ctx.ports.proxyHealth}/healthz`);
    case 'coredns':
      return httpOk(`http://127.0.0.1:${ctx.ports.dnsReady}/ready`);
    case 'traefik':
      return httpOk(`http://127.0.0.1:${ctx.ports.traefikAdmin}/ping`);
    case 'local-path-provisioner':
      return Promise.resolve(true);
  }
}

/** The API objects the node side needs: Service endpoints, the default classes, the provisioner's config. */
export function nodeObjects(ctx: Pick<NodeContext, 'state'>): KubeObject[] {
  const slice = (namespace: string, name: string, service: string, ports: object[]) => ({
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: {
      name,
      namespace,
      labels: {
        'kubernetes.io/service-name': service,
        'endpointslice.kubernetes.io/managed-by': FIELD_MANAGER,
      },
    },
    addressType: 'IPv4',
    endpoints: [
      { addresses: [NODE_ADDRESS], conditions: { ready: true, serving: true, terminating: false } },
    ],
    ports,
  });
  return [
    // The API server publishes no endpoint of its own (it listens on loopback only).
    {
      apiVersion: 'v1',
      kind: 'Endpoints',
      metadata: {
        name: 'kubernetes',
        namespace: 'default',
        labels: { 'endpointslice.kubernetes.io/skip-mirror': 'true' },
      },
      subsets: [
        { addresses: [{ ip: NODE_ADDRESS }], ports: [{ name: 'https', port: API_PORT, protocol: 'TCP' }] },
      ],
    },
    slice('default', 'kubernetes', 'kubernetes', [{ name: 'https', port: API_PORT, protocol: 'TCP' }]),
    {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: 'kube-dns', namespace: 'kube-system', labels: { 'k8s-app': 'kube-dns' } },
      spec: {
        clusterIP: DNS_SERVICE_IP,
        ports: [
          { name: 'dns', port: 53, protocol: 'UDP', targetPort: DNS_PORT },
          { name: 'dns-tcp', port: 53, protocol: 'TCP', targetPort: DNS_PORT },
        ],
      },
    },
    slice('kube-system', 'kube-dns-node', 'kube-dns', [
      { name: 'dns', port: DNS_PORT, protocol: 'UDP' },
      { name: 'dns-tcp', port: DNS_PORT, protocol: 'TCP' },
    ]),
    {
      apiVersion: 'networking.k8s.io/v1',
      kind: 'IngressClass',
      metadata: {
        name: INGRESS_CLASS,
        annotations: { 'ingressclass.kubernetes.io/is-default-class': 'true' },
      },
      spec: { controller: 'traefik.io/ingress-controller' },
    },
    {
      apiVersion: 'storage.k8s.io/v1',
      kind: 'StorageClass',
      metadata: {
        name: STORAGE_CLASS,
        annotations: { 'storageclass.kubernetes.io/is-default-class': 'true' },
      },
      provisioner: 'rancher.io/local-path',
      volumeBindingMode: 'WaitForFirstConsumer',
      reclaimPolicy: 'Delete',
    },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: LOCAL_PATH_NAMESPACE } },
    {
      apiVersion: 'v1',
      kind: 'ServiceAccount',
      metadata: { name: LOCAL_PATH_ACCOUNT, namespace: LOCAL_PATH_NAMESPACE },
    },
    {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'local-path-config', namespace: LOCAL_PATH_NAMESPACE },
      data: {
        'config.json': JSON.stringify({
          nodePathMap: [{ node: 'DEFAULT_PATH_FOR_NON_LISTED_NODES', paths: [localPathDir(ctx.state)] }],
        }),
        setup: '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
        teardown: '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
        'helperPod.yaml': helperPod(),
      },
    },
  ];
}

export function objectPath(o: KubeObject): string {
  const plural: Record<string, string> = {
    Endpoints: 'endpoints',
    EndpointSlice: 'endpointslices',
    Service: 'services',
    IngressClass: 'ingressclasses',
    StorageClass: 'storageclasses',
    Namespace: 'namespaces',
    ServiceAccount: 'serviceaccounts',
    ConfigMap: 'configmaps',
  };
  const base = o.apiVersion!.includes('/') ? `/apis/${o.apiVersion}` : `/api/${o.apiVersion}`;
  const ns = o.metadata?.namespace ? `/namespaces/${o.metadata.namespace}` : '';
  return `${base}${ns}/${plural[o.kind!]}/${o.metadata!.name}`;
}

export async function applyNodeObjects(kube: KubeClient, ctx: Pick<NodeContext, 'state'>): Promise<void> {
  // In order: the namespace before what lives in it.
  for (const object of nodeObjects(ctx)) await kube.apply(objectPath(object), object, FIELD_MANAGER);
}

/** The pod runner's kubelet API answers the API server's client certificate. */
async function kubeletHealthy(pki: string): Promise<boolean> {
  const [ca, cert, key] = await Promise.all(
    ['ca.crt', 'apiserver-kubelet-client.crt', 'apiserver-kubelet-client.key'].map((f) =>
      readFile(join(pki, f)),
    ),
  );
  return new Promise((resolve) => {
    const req = request(
      { host: NODE_ADDRESS, port: KUBELET_PORT, path: '/healthz', ca, cert, key, timeout: 2_000 },
      (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      },
    );
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}
