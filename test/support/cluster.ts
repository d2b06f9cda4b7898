import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  ApiextensionsV1Api,
  AppsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  KubernetesObjectApi,
} from '@kubernetes/client-node';
import { inject } from 'vitest';
import { waitFor } from '../../common/net.ts';
import { CRD_NAME } from '../../operator/crd.ts';
import { KUBECONFIG_PATH } from '../../scripts/cluster.ts';

// Helpers for tests against the local control plane that test/global-setup.ts starts.

/** The plane's admin kubeconfig path (provided by the global setup; the well-known path otherwise). */
export function kubeconfigPath(): string {
  try {
    return inject('kubeconfig') ?? KUBECONFIG_PATH;
  } catch {
    return KUBECONFIG_PATH; // outside a vitest worker (global setup, scripts)
  }
}

export function kubeConfig(path = kubeconfigPath()): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromFile(path);
  return kc;
}

export interface Clients {
  kc: KubeConfig;
  core: CoreV1Api;
  apps: AppsV1Api;
  custom: CustomObjectsApi;
  apiextensions: ApiextensionsV1Api;
  objects: KubernetesObjectApi;
}

export function clients(kc = kubeConfig()): Clients {
  return {
    kc,
    core: kc.makeApiClient(CoreV1Api),
    apps: kc.makeApiClient(AppsV1Api),
    custom: kc.makeApiClient(CustomObjectsApi),
    apiextensions: kc.makeApiClient(ApiextensionsV1Api),
    objects: KubernetesObjectApi.makeApiClient(kc),
  };
}

export interface KubectlResult {
  code: number;
  stdout: string;
  stderr: string;
}

interface KubectlOptions {
  input?: string;
  kubeconfig?: string;
}

/** Runs the real kubectl against the plane; resolves with its exit code (never throws on one). */
export function kubectl(args: string[], { input, kubeconfig = kubeconfigPath() }: KubectlOptions = {}) {
  return new Promise<KubectlResult>((resolve, reject) => {
    const child = execFile(
      'kubectl',
      args,
      { env: { ...process.env, KUBECONFIG: kubeconfig }, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') reject(err);
        else resolve({ code: typeof err?.code === 'number' ? err.code : 0, stdout, stderr });
      },
    );
    child.stdin?.end(input);
  });
}

/** Server-side apply of any object as the test harness (kubectl, so no client-side schema). */
export async function applyObject(kubeconfig: string, object: object): Promise<void> {
  const result = await kubectl(
    ['apply', '--server-side', '--force-conflicts', '--field-manager=sluice-tests', '-f', '-'],
    { input: JSON.stringify(object), kubeconfig },
  );
  if (result.code !== 0) throw new Error(`kubectl apply failed: ${result.stderr}`);
}

/** Waits until the StreamingFunction CRD is Established (served) by the API server. */
export async function waitForCrd(kubeconfig = kubeconfigPath()): Promise<void> {
  const { apiextensions } = clients(kubeConfig(kubeconfig));
  await waitFor(
    async () => {
      const crd = await apiextensions.readCustomResourceDefinition({ name: CRD_NAME });
      return crd.status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True');
    },
    { timeoutMs: 30_000, what: `${CRD_NAME} to be Established` },
  );
}

export interface Namespace {
  name: string;
  /** Deletes it (without waiting for finalization); call in afterAll. */
  delete: () => Promise<void>;
}

/** A fresh namespace with a random suffix, so test files never see each other's objects. */
export async function throwawayNamespace(prefix: string, kc = kubeConfig()): Promise<Namespace> {
  const core = kc.makeApiClient(CoreV1Api);
  const name = `${prefix}-${randomBytes(3).toString('hex')}`;
  await core.createNamespace({ body: { metadata: { name, labels: { 'sluice.dev/test': prefix } } } });
  return {
    name,
    delete: async () => {
      await core.deleteNamespace({ name }).catch(() => undefined);
    },
  };
}
