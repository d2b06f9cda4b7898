// `npm run cluster -- up|down|status`: a real local Kubernetes control plane on loopback, as
// controller-runtime's envtest starts one (etcd + kube-apiserver with client-cert auth and RBAC),
// plus kube-scheduler, kube-controller-manager and kwok with simulated GPU nodes, and the node side
// (plane/): a pod runner that really runs the pods bound to those nodes, kube-proxy, CoreDNS,
// Traefik as the ingress controller and a local-path storage provisioner. Everything runs
// detached in the background; pids and ports are kept in .sluice/cluster.json, logs in
// .sluice/logs/, and the admin kubeconfig is .sluice/kubeconfig. `up` reuses a running plane.
import { execFile, spawn } from 'node:child_process';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { existsSync, openSync } from 'node:fs';
import { access, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { parseAllDocuments, stringify } from 'yaml';
import { errorMessage, SluiceError } from '../common/errors.ts';
import { freePort, waitFor } from '../common/net.ts';
import { exited } from '../common/process.ts';
import { KubeClient } from '../operator/kube.ts';
import {
  KUBERNETES_SERVICE_IP,
  NODE_ADDRESS,
  nodePodCidr,
  POD_CIDR_ANNOTATION,
  POD_RANGE,
  SERVICE_RANGE,
  SIMULATED_POD_RANGE,
} from '../plane/addresses.ts';
import { PLANE_CGROUP, removeCgroup } from '../plane/cgroups.ts';
import {
  acquireNodeLock,
  type LockOwner,
  lockOwner,
  releaseNodeLock,
  updateNodeLock,
} from '../plane/lock.ts';
import { setUpHost, tearDownHost } from '../plane/network.ts';
import { ensureNodeCertificates } from '../plane/pki.ts';
import { SIMULATED_KEY } from '../plane/runner.ts';
import {
  applyNodeObjects,
  ingressUrl,
  localPathDir,
  NODE_COMPONENTS,
  type NodeComponent,
  type NodeContext,
  nodeReady,
  prepareNode,
} from '../plane/stack.ts';

const ROOT = join(import.meta.dirname, '..');
// SLUICE_CLUSTER_DIR runs a second, independent plane (the cluster test's up/down cycle uses it).
export const STATE_DIR = resolve(process.env.SLUICE_CLUSTER_DIR ?? join(ROOT, '.sluice'));
export const KUBECONFIG_PATH = join(STATE_DIR, 'kubeconfig');
const BIN = join(ROOT, '.sluice', 'bin');
const LOGS = join(STATE_DIR, 'logs');
const PKI = join(STATE_DIR, 'pki');
const STATE_FILE = join(STATE_DIR, 'cluster.json');
const LOCK = join(STATE_DIR, 'cluster.lock');
const USERS = join(STATE_DIR, 'users');
// etcd on tmpfs when there is one: fsync on a shared disk dominates API write latency, and the
// plane's data is throwaway anyway.
const ETCD_DATA = existsSync('/dev/shm')
  ? `/dev/shm/sluice-etcd-${createHash('sha256').update(STATE_DIR).digest('hex').slice(0, 12)}`
  : join(STATE_DIR, 'etcd');

const run = promisify(execFile);

// The plane's addresses come from 198.18.0.0/15 (RFC 2544's benchmarking range), never from a
// private range a real network may use: pods in 198.18.0.0/16, Services in 198.19.0.0/16
// (plane/addresses.ts has the whole plan).
export const POD_CIDR = POD_RANGE;
export const SERVICE_CIDR = SERVICE_RANGE;
/** Every simulated node's InternalIP: the node address, where the pod runner serves the kubelet API. */
const KWOK_NODE_IP = NODE_ADDRESS;
export const INGRESS_URL_FILE = join(STATE_DIR, 'ingress-url');
/** Traefik's API on loopback: the servers each route has loaded (tests wait on it). */
export const INGRESS_API_FILE = join(STATE_DIR, 'ingress-api-url');

/**
 * Every process a plane starts carries this variable (its state directory), so `down` finds
 * them by process, not only through the state file: a pid the file lost is still stopped.
 */
export const PLANE_MARKER = 'SLUICE_PLANE';

export class ClusterError extends SluiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_CLUSTER', message, options);
  }
}

/** The nodes kwok simulates: GPU nodes labelled and tainted as the NVIDIA GPU operator does. */
export const GPU_TAINT = { key: 'nvidia.com/gpu', value: 'present', effect: 'NoSchedule' } as const;
export const GPU_PRODUCT_LABEL = 'nvidia.com/gpu.product';
export const SIMULATED_NODES = [
  { name: 'gpu-h100-0', gpus: 8, product: 'NVIDIA-H100-80GB-HBM3', cpu: '96', memory: '1Ti' },
  { name: 'gpu-h100-1', gpus: 8, product: 'NVIDIA-H100-80GB-HBM3', cpu: '96', memory: '1Ti' },
  { name: 'gpu-a100-0', gpus: 4, product: 'NVIDIA-A100-SXM4-40GB', cpu: '64', memory: '512Gi' },
  // Roomy in pods so benchmarks can run many CPU functions (kwok pods cost nothing).
  { name: 'cpu-0', gpus: 0, product: '', cpu: '256', memory: '1Ti' },
] as const;
const KWOK_NODE_ANNOTATION = 'kwok.x-k8s.io/node';

type ControlComponent = 'etcd' | 'kube-apiserver' | 'kube-scheduler' | 'kube-controller-manager' | 'kwok';
type ComponentName = ControlComponent | NodeComponent;
const ORDER: ControlComponent[] = [
  'etcd',
  'kube-apiserver',
  'kube-scheduler',
  'kube-controller-manager',
  'kwok',
];

interface PlaneState {
  apiserverPort: number;
  etcdPort: number;
  pids: Partial<Record<ComponentName, number>>;
  /** Who started it: a plane started for a test run is stopped when its last test run ends. */
  origin: Origin;
  /** Set while this plane runs the node side (it holds the machine's node lock). */
  node?: { ports: NodeContext['ports'] };
  /** kwok plays every pod (no pod runner), or only the pods that ask to stay simulated. */
  kwokSimulatesAll?: boolean;
}

export type Origin = 'cli' | 'tests';

export interface UpOptions {
  origin?: Origin;
  /** A process (a test run) that uses the plane until it calls release(pid). */
  user?: number;
}

export interface UpResult {
  kubeconfig: string;
  server: string;
  /** false when a running plane was reused as it was. */
  started: boolean;
  /** etcd and the API server were started by this call (a fresh, empty cluster). */
  fresh: boolean;
  ms: number;
  /** Where Traefik serves the cluster's Ingresses; undefined when this plane runs no pods. */
  ingressUrl?: string;
  /** Why pods are only simulated here (another plane runs pods, or SLUICE_POD_RUNNER=off). */
  simulatedBecause?: string;
}

// --- processes -----------------------------------------------------------------------------

/** The pid still runs the binary we started (pids are reused, so the name is checked too). */
async function runs(pid: number | undefined, name: ComponentName): Promise<boolean> {
  if (!pid) return false;
  try {
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    if (await exited(pid)) return false;
    // The pod runner is Node running plane/runner.ts.
    if (name === 'pod-runner') return argv[1]?.endsWith('/plane/runner.ts') ?? false;
    return argv[0]?.endsWith(`/${name}`) ?? false;
  } catch {
    return false;
  }
}

async function binary(name: ComponentName): Promise<string> {
  const path = join(BIN, name);
  try {
    await access(path);
    return path;
  } catch (err) {
    throw new ClusterError(`${path} is missing: run npm run setup (scripts/tools.sh) first`, { cause: err });
  }
}

/** The plane being started: each pid is recorded the moment its process exists, so that `down`
 * can stop it even when a later step fails. */
let plane: PlaneState | undefined;

async function startDetached(
  name: ComponentName,
  args: string[],
  command?: { file: string; env?: Record<string, string> },
): Promise<number> {
  if (!plane) throw new ClusterError('no plane state to record the process in');
  const log = openSync(join(LOGS, `${name}.log`), 'a');
  // Detached in its own process group, so the plane outlives `npm run cluster -- up`.
  const child = spawn(command?.file ?? (await binary(name)), args, {
    detached: true,
    stdio: ['ignore', log, log],
    env: { ...process.env, ...command?.env, [PLANE_MARKER]: STATE_DIR },
  });
  if (!child.pid) throw new ClusterError(`could not start ${name}`);
  child.unref();
  plane.pids[name] = child.pid;
  await writeState(plane);
  return child.pid;
}

async function stopPid(pid: number, name: ComponentName): Promise<void> {
  if (await runs(pid, name)) await stopProcess(pid, name);
}

/** SIGTERM, then SIGKILL after 10 s; resolves once the process has exited. */
async function stopProcess(pid: number, what: string): Promise<void> {
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return; // already gone
  }
  try {
    await waitFor(() => exited(pid), { timeoutMs: 10_000, what: `${what} to exit` });
  } catch {
    process.kill(pid, 'SIGKILL');
    await waitFor(() => exited(pid), { timeoutMs: 5_000, what: `${what} to exit after SIGKILL` });
  }
}

async function lastLogLines(name: ComponentName, count = 15): Promise<string> {
  const text = await readFile(join(LOGS, `${name}.log`), 'utf8').catch(() => '');
  return text.trimEnd().split('\n').slice(-count).join('\n');
}

async function waitUntil(name: ComponentName, pid: number, check: () => Promise<boolean>, timeoutMs: number) {
  try {
    await waitFor(
      async () => {
        if (!(await runs(pid, name))) throw new ClusterError(`${name} exited`);
        return check();
      },
      { timeoutMs, intervalMs: 100, what: `${name} to be ready` },
    );
  } catch (err) {
    throw new ClusterError(
      `${name} did not become ready (${errorMessage(err)}); last lines of .sluice/logs/${name}.log:\n${await lastLogLines(name)}`,
      { cause: err },
    );
  }
}

// --- certificates --------------------------------------------------------------------------

async function openssl(args: string[]): Promise<void> {
  await run('openssl', args, { cwd: PKI });
}

const APISERVER_EXTENSIONS =
  `subjectAltName=IP:127.0.0.1,DNS:localhost,IP:${KUBERNETES_SERVICE_IP},IP:${NODE_ADDRESS},DNS:kubernetes,` +
  'DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n';

/**
 * A CA, the API server's serving cert, an admin client cert (system:masters), SA keys. Kept
 * across runs; made anew (returns true) when the serving cert's names changed, e.g. the
 * Service range moved.
 */
async function ensurePki(): Promise<boolean> {
  await mkdir(PKI, { recursive: true });
  const current = await readFile(join(PKI, 'apiserver.ext'), 'utf8').catch(() => '');
  if (existsSync(join(PKI, 'admin.crt')) && current === APISERVER_EXTENSIONS) return false;
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl([
    'req',
    '-x509',
    ...ec,
    '-keyout',
    'ca.key',
    '-out',
    'ca.crt',
    '-days',
    '3650',
    '-subj',
    '/CN=sluice-local-ca',
  ]);
  const sign = async (name: string, subject: string, extensions: string) => {
    await openssl(['req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject]);
    await writeFile(join(PKI, `${name}.ext.new`), extensions);
    await openssl(
      ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial'].concat([
        '-out',
        `${name}.crt`,
        '-days',
        '3650',
        '-extfile',
        `${name}.ext.new`,
      ]),
    );
    // Written last: a half-made set is made again by the next up.
    await rename(join(PKI, `${name}.ext.new`), join(PKI, `${name}.ext`));
  };
  await sign('admin', '/O=system:masters/CN=sluice-admin', 'extendedKeyUsage=clientAuth\n');
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  await writeFile(join(PKI, 'sa.key'), privateKey.export({ type: 'pkcs8', format: 'pem' }));
  await writeFile(join(PKI, 'sa.pub'), publicKey.export({ type: 'spki', format: 'pem' }));
  await sign('apiserver', '/CN=kube-apiserver', APISERVER_EXTENSIONS);
  return true;
}

async function writeKubeconfig(port: number): Promise<void> {
  const b64 = async (file: string) => (await readFile(join(PKI, file))).toString('base64');
  const config = `apiVersion: v1
kind: Config
clusters:
- name: sluice
  cluster:
    server: https://127.0.0.1:${port}
    certificate-authority-data: ${await b64('ca.crt')}
users:
- name: sluice-admin
  user:
    client-certificate-data: ${await b64('admin.crt')}
    client-key-data: ${await b64('admin.key')}
contexts:
- name: sluice
  context: {cluster: sluice, user: sluice-admin}
current-context: sluice
`;
  await writeFile(KUBECONFIG_PATH, config, { mode: 0o600 });
}

// --- API -------------------------------------------------------------------------------------

interface ApiResponse {
  status: number;
  body: string;
}

/** One request to the API server as the admin user (no client library: this must start fast). */
async function apiRequest(port: number, method: string, path: string, body?: unknown): Promise<ApiResponse> {
  const [ca, cert, key] = await Promise.all(
    ['ca.crt', 'admin.crt', 'admin.key'].map((f) => readFile(join(PKI, f))),
  );
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        method,
        path,
        ca,
        cert,
        key,
        headers: { 'content-type': 'application/json' },
        timeout: 5_000,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          text += chunk;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on('error', reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

async function apiReady(port: number): Promise<boolean> {
  try {
    const res = await apiRequest(port, 'GET', '/readyz');
    return res.status === 200;
  } catch {
    return false;
  }
}

function nodeObject(node: (typeof SIMULATED_NODES)[number], index: number) {
  const labels: Record<string, string> = {
    'kubernetes.io/hostname': node.name,
    'kubernetes.io/os': 'linux',
    'kubernetes.io/arch': 'amd64',
    'node.kubernetes.io/instance-type': node.gpus > 0 ? `gpu-${node.gpus}x` : 'cpu',
    type: 'kwok',
  };
  const capacity: Record<string, string> = {
    cpu: node.cpu,
    memory: node.memory,
    pods: node.gpus > 0 ? '110' : '2000',
  };
  if (node.gpus > 0) {
    labels[GPU_PRODUCT_LABEL] = node.product;
    labels['nvidia.com/gpu.count'] = String(node.gpus);
    labels['nvidia.com/gpu.present'] = 'true';
    capacity['nvidia.com/gpu'] = String(node.gpus);
  }
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: {
      name: node.name,
      labels,
      // The pod runner's address range on this node (spec.podCIDR stays empty: kwok would take it).
      annotations: { [KWOK_NODE_ANNOTATION]: 'fake', [POD_CIDR_ANNOTATION]: nodePodCidr(index) },
    },
    spec: node.gpus > 0 ? { taints: [GPU_TAINT] } : {},
    // A Node's status is taken on create (kubelets register this way); kwok keeps it alive.
    status: {
      capacity,
      allocatable: capacity,
      nodeInfo: { kubeletVersion: 'fake', architecture: 'amd64', operatingSystem: 'linux' },
    },
  };
}

async function ensureNodes(port: number): Promise<void> {
  for (const [index, node] of SIMULATED_NODES.entries()) {
    const res = await apiRequest(port, 'POST', '/api/v1/nodes', nodeObject(node, index));
    if (res.status !== 201 && res.status !== 409) {
      throw new ClusterError(`creating node ${node.name}: HTTP ${res.status} ${res.body}`);
    }
  }
}

async function nodesReady(port: number): Promise<boolean> {
  const res = await apiRequest(port, 'GET', '/api/v1/nodes?labelSelector=type%3Dkwok');
  if (res.status !== 200) return false;
  const list = JSON.parse(res.body) as {
    items: Array<{
      metadata: { name: string };
      status?: { conditions?: Array<{ type: string; status: string }> };
    }>;
  };
  const ready = new Set(
    list.items
      .filter((n) => n.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'))
      .map((n) => n.metadata.name),
  );
  return SIMULATED_NODES.every((n) => ready.has(n.name));
}

// --- components ------------------------------------------------------------------------------

async function startEtcd(port: number): Promise<number> {
  const peer = await freePort();
  await rm(ETCD_DATA, { recursive: true, force: true });
  const pid = await startDetached('etcd', [
    '--name=sluice',
    `--data-dir=${ETCD_DATA}`,
    `--listen-client-urls=http://127.0.0.1:${port}`,
    `--advertise-client-urls=http://127.0.0.1:${port}`,
    `--listen-peer-urls=http://127.0.0.1:${peer}`,
    `--initial-advertise-peer-urls=http://127.0.0.1:${peer}`,
    `--initial-cluster=sluice=http://127.0.0.1:${peer}`,
    '--logger=zap',
    '--log-outputs=stderr',
    '--quota-backend-bytes=4294967296',
  ]);
  await waitUntil('etcd', pid, () => httpOk(`http://127.0.0.1:${port}/health`), 20_000);
  return pid;
}

async function httpOk(url: string): Promise<boolean> {
  try {
    return (await fetch(url, { signal: AbortSignal.timeout(2_000) })).ok;
  } catch {
    return false;
  }
}

async function startApiserver(port: number, etcdPort: number): Promise<number> {
  const pki = (file: string) => join(PKI, file);
  // The flags controller-runtime's envtest passes, plus the service-account signing setup.
  const pid = await startDetached('kube-apiserver', [
    `--etcd-servers=http://127.0.0.1:${etcdPort}`,
    '--bind-address=127.0.0.1',
    '--advertise-address=127.0.0.1',
    `--secure-port=${port}`,
    `--tls-cert-file=${pki('apiserver.crt')}`,
    `--tls-private-key-file=${pki('apiserver.key')}`,
    `--client-ca-file=${pki('ca.crt')}`,
    '--authorization-mode=RBAC',
    // The ServiceAccount admission plugin stays on: pods get their projected token volume.
    `--service-account-issuer=https://127.0.0.1:${port}/`,
    `--service-account-key-file=${pki('sa.pub')}`,
    `--service-account-signing-key-file=${pki('sa.key')}`,
    `--service-cluster-ip-range=${SERVICE_CIDR}`,
    '--allow-privileged=true',
    '--profiling=false',
    // The default reconciler would publish 127.0.0.1 as the kubernetes Service's endpoint,
    // which Endpoints validation refuses (loopback) every ten seconds; the node side publishes
    // the node address instead, where the pod runner forwards to this loopback port.
    '--endpoint-reconciler-type=none',
    // `kubectl logs`: the API server calls the pod runner's kubelet API at the node's InternalIP.
    `--kubelet-client-certificate=${pki('apiserver-kubelet-client.crt')}`,
    `--kubelet-client-key=${pki('apiserver-kubelet-client.key')}`,
    '--kubelet-preferred-address-types=InternalIP',
  ]);
  await waitUntil('kube-apiserver', pid, () => apiReady(port), 60_000);
  return pid;
}

/** What kube-scheduler and kube-controller-manager share: the admin kubeconfig, one instance, loopback. */
function controlPlaneFlags(port: number): string[] {
  return [
    `--kubeconfig=${KUBECONFIG_PATH}`,
    `--authentication-kubeconfig=${KUBECONFIG_PATH}`,
    `--authorization-kubeconfig=${KUBECONFIG_PATH}`,
    '--leader-elect=false',
    '--bind-address=127.0.0.1',
    `--secure-port=${port}`,
  ];
}

async function startScheduler(): Promise<number> {
  const port = await freePort();
  const pid = await startDetached('kube-scheduler', [...controlPlaneFlags(port)]);
  await waitUntil('kube-scheduler', pid, () => httpsHealthy(port), 30_000);
  return pid;
}

async function startControllerManager(): Promise<number> {
  const port = await freePort();
  const pki = (file: string) => join(PKI, file);
  const pid = await startDetached('kube-controller-manager', [
    ...controlPlaneFlags(port),
    `--service-account-private-key-file=${pki('sa.key')}`,
    `--root-ca-file=${pki('ca.crt')}`,
    `--cluster-signing-cert-file=${pki('ca.crt')}`,
    `--cluster-signing-key-file=${pki('ca.key')}`,
    '--use-service-account-credentials=false',
    // The default 20 requests/s paces how fast Deployments become pods in tests and benches.
    '--kube-api-qps=200',
    '--kube-api-burst=400',
  ]);
  await waitUntil('kube-controller-manager', pid, () => httpsHealthy(port), 30_000);
  return pid;
}

/** /healthz of a component's self-signed HTTPS server (always allowed without credentials). */
async function httpsHealthy(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request(
      { host: '127.0.0.1', port, path: '/healthz', rejectUnauthorized: false, timeout: 2_000 },
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

/**
 * kwok's stages, as scripts/kwok-stages.yaml has them, or (when the pod runner runs pods) with
 * the pod stages narrowed to the pods that tolerate SIMULATED_KEY.
 */
export async function kwokConfig(simulateAll: boolean): Promise<string> {
  const text = await readFile(join(import.meta.dirname, 'kwok-stages.yaml'), 'utf8');
  if (simulateAll) return text;
  const docs = parseAllDocuments(text).map((d) => d.toJSON());
  for (const doc of docs) {
    if (doc?.kind === 'Stage' && doc.spec?.resourceRef?.kind === 'Pod') {
      doc.spec.selector.matchExpressions.push({
        key: '.spec.tolerations.[].key',
        operator: 'In',
        values: [SIMULATED_KEY],
      });
    }
  }
  return docs.map((d) => stringify(d)).join('---\n');
}

async function startKwok(apiserverPort: number, simulateAll: boolean): Promise<number> {
  const config = join(STATE_DIR, 'kwok.yaml');
  await writeFile(config, await kwokConfig(simulateAll));
  const pid = await startDetached('kwok', [
    `--kubeconfig=${KUBECONFIG_PATH}`,
    `--config=${config}`,
    '--manage-all-nodes=false',
    `--manage-nodes-with-annotation-selector=${KWOK_NODE_ANNOTATION}=fake`,
    // Simulated pods get addresses nothing answers on; the runner's pods have per-node ranges.
    `--cidr=${SIMULATED_POD_RANGE}`,
    // No --node-port: kwok would serve a kubelet API of its own there. The API server calls the
    // default kubelet port (10250) on the node IP, where the pod runner serves.
    `--node-ip=${KWOK_NODE_IP}`,
    '--node-lease-duration-seconds=40',
  ]);
  await ensureNodes(apiserverPort);
  await waitUntil('kwok', pid, () => nodesReady(apiserverPort), 30_000);
  return pid;
}

// --- state -----------------------------------------------------------------------------------

async function readState(): Promise<PlaneState | undefined> {
  try {
    return JSON.parse(await readFile(STATE_FILE, 'utf8')) as PlaneState;
  } catch {
    return undefined;
  }
}

let stateWrites = 0;
let lastWrite: Promise<void> = Promise.resolve();

/**
 * Atomic (write, then rename) and one at a time, each writing the state as it is when its turn
 * comes. Components start in parallel and each records its pid: with overlapping writes the
 * last rename wins, and a rename of an older snapshot dropped pids that had been recorded, so
 * the next `up` started those components again and the old processes ran on, unknown to `down`.
 * A torn file would make the next `up` think no plane runs and wipe the first one's etcd data.
 */
function writeState(state: PlaneState): Promise<void> {
  const write = async () => {
    const temporary = `${STATE_FILE}.${process.pid}.${++stateWrites}`;
    await writeFile(temporary, `${JSON.stringify(state, null, 2)}\n`);
    await rename(temporary, STATE_FILE);
  };
  lastWrite = lastWrite.then(write, write);
  return lastWrite;
}

export interface ComponentStatus {
  name: ComponentName;
  pid?: number;
  running: boolean;
}

export interface PlaneStatus {
  ready: boolean;
  server?: string;
  components: ComponentStatus[];
  /** Processes of this plane that the state file does not name (`down` stops them too). */
  strays: Array<{ pid: number; command: string }>;
}

export async function status(): Promise<PlaneStatus> {
  const state = await readState();
  const names: ComponentName[] = [...ORDER, ...(state?.node ? NODE_COMPONENTS : [])];
  const components = await Promise.all(
    names.map(async (name) => ({
      name,
      pid: state?.pids[name],
      running: await runs(state?.pids[name], name),
    })),
  );
  const ready =
    state !== undefined && components.every((c) => c.running) && (await apiReady(state.apiserverPort));
  const known = new Set(components.map((c) => c.pid));
  const strays = (await planeProcesses()).filter((p) => !known.has(p.pid));
  return { ready, server: state && `https://127.0.0.1:${state.apiserverPort}`, components, strays };
}

/**
 * Starts the plane, or reuses the running one: when etcd and the API server still answer, only
 * the components that died are started again. Returns once every simulated node is Ready.
 */
export async function up(options: UpOptions = {}): Promise<UpResult> {
  return withLock(() => upLocked(options));
}

async function upLocked({ origin = 'cli', user }: UpOptions): Promise<UpResult> {
  const began = Date.now();
  await mkdir(LOGS, { recursive: true });
  // New certificates: a running plane still serves the old ones, so it cannot be reused.
  const renewed = await ensurePki();
  // The kubelet API's certificates (the API server's client one is one of its flags).
  await ensureNodeCertificates(PKI, renewed);
  const state = renewed ? undefined : await readState();
  // A running plane is never torn down because one /readyz was slow: under test load the
  // apiserver can take seconds to answer, and a restart would wipe what other runs are using.
  const reusable =
    state !== undefined &&
    (await runs(state.pids.etcd, 'etcd')) &&
    (await runs(state.pids['kube-apiserver'], 'kube-apiserver')) &&
    (await waitFor(() => apiReady(state.apiserverPort), {
      timeoutMs: 60_000,
      intervalMs: 250,
      what: 'the running kube-apiserver to be ready',
    }).catch(() => false));
  let started = false;
  let fresh = false;
  let current: PlaneState;
  if (!reusable || !state) {
    await stopAll();
    const [etcdPort, apiserverPort] = [await freePort(), await freePort()];
    current = plane = { etcdPort, apiserverPort, pids: {}, origin };
    await startEtcd(etcdPort);
    await startApiserver(apiserverPort, etcdPort);
    await writeKubeconfig(apiserverPort);
    started = fresh = true;
  } else {
    current = plane = state;
    if (!existsSync(KUBECONFIG_PATH)) await writeKubeconfig(state.apiserverPort);
  }
  const node = await claimNode(current);
  const simulateAll = node.owner === undefined;
  if (current.kwokSimulatesAll !== simulateAll && current.pids.kwok) {
    // kwok plays a different set of pods now: restart it with the other stages.
    await stopPid(current.pids.kwok, 'kwok');
    delete current.pids.kwok;
  }
  current.kwokSimulatesAll = simulateAll;
  await writeState(current);
  const starters: Array<[ComponentName, () => Promise<number>]> = [
    ['kube-scheduler', startScheduler],
    ['kube-controller-manager', startControllerManager],
    ['kwok', () => startKwok(current.apiserverPort, simulateAll)],
  ];
  // allSettled: every start has finished (and recorded its pid) before a failure is reported.
  const results = await Promise.allSettled(
    starters.map(async ([name, start]) => {
      if (await runs(current.pids[name], name)) return;
      await start();
      started = true;
    }),
  );
  const failure = results.find((r) => r.status === 'rejected');
  if (failure) throw failure.reason;
  if (user !== undefined) {
    await mkdir(USERS, { recursive: true });
    await writeFile(join(USERS, String(user)), '');
  }
  if (!(await nodesReady(current.apiserverPort))) {
    await ensureNodes(current.apiserverPort);
    await waitFor(() => nodesReady(current.apiserverPort), {
      timeoutMs: 30_000,
      what: 'simulated nodes to be Ready',
    });
  }
  if (node.owner) {
    if (await startNode(current, node.owner, fresh)) started = true;
    await writeFile(INGRESS_URL_FILE, `${ingressUrl()}\n`);
    const admin = current.node?.ports.traefikAdmin;
    if (admin) await writeFile(INGRESS_API_FILE, `http://127.0.0.1:${admin}\n`);
  } else {
    await rm(INGRESS_URL_FILE, { force: true });
    await rm(INGRESS_API_FILE, { force: true });
  }
  return {
    kubeconfig: KUBECONFIG_PATH,
    server: `https://127.0.0.1:${current.apiserverPort}`,
    started,
    fresh,
    ms: Date.now() - began,
    ingressUrl: node.owner ? ingressUrl() : undefined,
    simulatedBecause: node.because,
  };
}

// --- the node side -----------------------------------------------------------------------------

const NODE_BINARIES = ['kube-proxy', 'coredns', 'traefik', 'local-path-provisioner'];

/**
 * Whether this plane runs pods: SLUICE_POD_RUNNER=off says no; otherwise it must be able to
 * take the machine's node lock (one plane per machine owns the pod network) and have the
 * node-side binaries. A plane that does not runs as before: kwok simulates every pod.
 */
async function claimNode(current: PlaneState): Promise<{ owner?: LockOwner; because?: string }> {
  if (process.env.SLUICE_POD_RUNNER === 'off') {
    if (current.node) await stopNode(current);
    return { because: 'SLUICE_POD_RUNNER=off' };
  }
  const missing = NODE_BINARIES.filter((b) => !existsSync(join(BIN, b)));
  if (missing.length) return { because: `${missing.join(', ')} missing (run npm run setup)` };
  if (process.getuid?.() !== 0) return { because: 'the pod network needs root' };
  const runner = current.pids['pod-runner'];
  const lock = await acquireNodeLock(
    STATE_DIR,
    runner && (await runs(runner, 'pod-runner')) ? runner : process.pid,
  );
  if (!lock.acquired) {
    return {
      because: `the plane in ${lock.holder.stateDir} runs this machine's pods (pid ${lock.holder.pid})`,
    };
  }
  return { owner: lock.owner };
}

function nodeContext(ports: NodeContext['ports']): NodeContext {
  return {
    root: ROOT,
    state: STATE_DIR,
    bin: BIN,
    pki: PKI,
    kubeconfig: KUBECONFIG_PATH,
    ports,
    nodeName: SIMULATED_NODES[SIMULATED_NODES.length - 1]!.name,
    node: process.execPath,
  };
}

/**
 * Starts the node side, or leaves it when it all runs: the host network (set up anew whenever
 * a component has to start, so no half-old state is kept), the API objects it needs, then the
 * runner, kube-proxy, CoreDNS, Traefik and the provisioner, each until it says it serves.
 */
async function startNode(current: PlaneState, owner: LockOwner, fresh: boolean): Promise<boolean> {
  const running = await Promise.all(NODE_COMPONENTS.map((n) => runs(current.pids[n], n)));
  if (!fresh && current.node && running.every(Boolean)) return false;
  await stopNode(current);
  const ports = {
    proxyHealth: await freePort(),
    proxyMetrics: await freePort(),
    dnsHealth: await freePort(),
    dnsReady: await freePort(),
    traefikAdmin: await freePort(),
  };
  current.node = { ports };
  await writeState(current);
  const { ipForward } = await setUpHost();
  owner.ipForward ??= ipForward;
  await updateNodeLock(owner);
  const kube = await KubeClient.load(KUBECONFIG_PATH);
  try {
    await applyNodeObjects(kube, { state: STATE_DIR });
  } finally {
    kube.close();
  }
  const ctx = nodeContext(ports);
  const commands = await prepareNode(ctx);
  const results = await Promise.allSettled(
    NODE_COMPONENTS.map(async (name) => {
      const { file, args, env } = commands[name];
      const pid = await startDetached(name, args, { file, env });
      if (name === 'pod-runner') await updateNodeLock({ ...owner, pid });
      await waitUntil(name, pid, () => nodeReady(name, ctx), 60_000);
    }),
  );
  const failure = results.find((r) => r.status === 'rejected');
  if (failure) throw failure.reason;
  return true;
}

/** Stops the node side's processes (not the host network: tearDownNode does that). */
async function stopNode(state: PlaneState): Promise<void> {
  for (const name of [...NODE_COMPONENTS].reverse()) {
    const pid = state.pids[name];
    if (pid) await stopPid(pid, name);
    delete state.pids[name];
  }
}

/** Everything the node side added to the machine, when this plane holds the node lock. */
async function tearDownNode(): Promise<void> {
  const owner = await lockOwner();
  if (owner?.stateDir !== STATE_DIR) return;
  await removeCgroup(PLANE_CGROUP);
  await tearDownHost(owner.ipForward);
  await rm(localPathDir(STATE_DIR), { recursive: true, force: true });
  await releaseNodeLock(STATE_DIR);
}

/** Stops every component the state file names, by pid, newest first; drops etcd's data. */
export async function down(): Promise<void> {
  await withLock(stopAll);
}

async function stopAll(): Promise<void> {
  const state = await readState();
  if (state) {
    // The pod runner stops its pods first (it goes last of the node side, before the API).
    await stopNode(state);
    for (const name of [...ORDER].reverse()) {
      const pid = state.pids[name];
      if (pid) await stopPid(pid, name);
    }
  }
  // Whatever this plane started that the state file does not name (a crashed `up`, a lost
  // write) is found by its marker.
  await Promise.all((await planeProcesses()).map((p) => stopProcess(p.pid, p.command)));
  await tearDownNode();
  await rm(INGRESS_URL_FILE, { force: true });
  await rm(INGRESS_API_FILE, { force: true });
  await rm(STATE_FILE, { force: true });
  await rm(ETCD_DATA, { recursive: true, force: true });
  await rm(USERS, { recursive: true, force: true });
}

/** Live processes that carry this plane's marker (see PLANE_MARKER), found through /proc. */
export async function planeProcesses(stateDir = STATE_DIR): Promise<Array<{ pid: number; command: string }>> {
  const marker = `\0${PLANE_MARKER}=${stateDir}\0`;
  const found: Array<{ pid: number; command: string }> = [];
  for (const entry of await readdir('/proc')) {
    const pid = Number(entry);
    if (!Number.isInteger(pid) || pid === process.pid) continue;
    const environ = await readFile(`/proc/${pid}/environ`, 'latin1').catch(() => '');
    if (!`\0${environ}`.includes(marker) || (await exited(pid))) continue;
    const command = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    found.push({ pid, command: command.split('\0')[0] ?? String(pid) });
  }
  return found;
}

/**
 * Ends a user's (a test run's) use of the plane. The last user of a plane that a test run
 * started stops it; a plane started with `npm run cluster -- up` keeps running. Returns
 * whether it stopped the plane.
 */
export async function release(user: number): Promise<boolean> {
  return withLock(async () => {
    await rm(join(USERS, String(user)), { force: true });
    const others = await readdir(USERS).catch(() => [] as string[]);
    const live = others.filter((pid) => alive(Number(pid)));
    if (live.length > 0 || (await readState())?.origin !== 'tests') return false;
    await stopAll();
    return true;
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** One up/down/release at a time across processes (parallel test runs share the plane). */
async function withLock<T>(work: () => Promise<T>): Promise<T> {
  await mkdir(STATE_DIR, { recursive: true });
  await waitFor(
    async () => {
      try {
        await mkdir(LOCK);
        await writeFile(join(LOCK, 'pid'), String(process.pid));
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const holder = Number(await readFile(join(LOCK, 'pid'), 'utf8').catch(() => '0'));
        // A holder that died leaves a stale lock.
        if (holder > 0 && !alive(holder)) await rm(LOCK, { recursive: true, force: true });
        return false;
      }
    },
    { timeoutMs: 300_000, intervalMs: 100, what: `the cluster lock ${LOCK}` },
  );
  try {
    return await work();
  } finally {
    await rm(LOCK, { recursive: true, force: true });
  }
}

async function main(command: string | undefined): Promise<number> {
  switch (command) {
    case 'up': {
      const result = await up();
      console.log(
        `${result.started ? 'started' : 'reused'} control plane at ${result.server} in ${result.ms} ms\n` +
          `export KUBECONFIG=${result.kubeconfig}\nnodes: ${SIMULATED_NODES.map((n) => n.name).join(', ')}; logs in .sluice/logs/\n` +
          (result.ingressUrl
            ? `pods run on this machine; ingress: ${result.ingressUrl} (also in ${INGRESS_URL_FILE})`
            : `pods are simulated by kwok: ${result.simulatedBecause}`),
      );
      return 0;
    }
    case 'down':
      await down();
      console.log('control plane stopped');
      return 0;
    case 'status': {
      const s = await status();
      for (const c of s.components)
        console.log(`${c.name.padEnd(24)} ${c.running ? `running (pid ${c.pid})` : 'stopped'}`);
      if (s.ready && !s.components.some((c) => c.name === 'pod-runner')) {
        console.log('pods are simulated by kwok (this plane runs no pod runner)');
      }
      for (const p of s.strays)
        console.log(`stray ${p.command} (pid ${p.pid}): not in the state file; down stops it`);
      console.log(
        s.ready ? `ready: ${s.server}, KUBECONFIG=${KUBECONFIG_PATH}` : 'not running: npm run cluster -- up',
      );
      return s.ready ? 0 : 1;
    }
    default:
      console.error('usage: npm run cluster -- up|down|status');
      return 2;
  }
}

if (import.meta.main) {
  main(process.argv[2]).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      console.error(`cluster: ${errorMessage(err)}`);
      process.exitCode = 1;
    },
  );
}
