import { randomUUID } from 'node:crypto';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, credsAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../common/log.ts';
import { mapNames } from '../common/map-streams.ts';
import { freePort, waitFor } from '../common/net.ts';
import { type NatsServer, startNats } from '../harness/nats.ts';
import { loadOperatorConfig } from '../operator/config.ts';
import { KubeClient, type KubeObject, resourcePath } from '../operator/kube.ts';
import { type RunningOperator, startOperator } from '../operator/main.ts';
import { readCredentials } from '../operator/nats-credentials.ts';
import { loadNatsKeys, TRUST_KEY } from '../operator/nats-keys.ts';
import { kubeconfigPath } from './support/cluster.ts';

// The operator locking a cluster down, against a real API server and a real nats-server that
// trusts what the operator wrote into its Secret (as the chart's NATS mounts it).

let kubeconfig = '';
let kube: KubeClient;
let nats: NatsServer;
const operators: RunningOperator[] = [];
const clients: NatsConnection[] = [];
const suffix = randomUUID().slice(0, 6);
const ns = `op-lock-${suffix}`;
const renewNs = `op-renew-${suffix}`;
const keysSecret = `${ns}/sluice-nats-auth`;
let natsUrl = '';
let metricsPort = 0;

const log = createLogger('operator', 'silent');
const get = (path: string) => kube.get<KubeObject>(path).catch(() => undefined);
const fnPath = (namespace: string, name = '') =>
  resourcePath('sluice.dev/v1alpha1', 'streamingfunctions', namespace, name);
const secretPath = (namespace: string, name: string) => resourcePath('v1', 'secrets', namespace, name);
const credsOf = (secret: KubeObject) => Buffer.from(secret.data['nats.creds'], 'base64').toString();

async function operator(namespace: string, flags: string[]): Promise<RunningOperator> {
  const config = loadOperatorConfig(
    [
      '--kubeconfig',
      kubeconfig,
      '--namespace',
      namespace,
      '--nats',
      natsUrl,
      '--nats-auth-secret',
      keysSecret,
      ...flags,
    ],
    {},
  );
  const op = await startOperator(config, log);
  operators.push(op);
  return op;
}

async function createFunction(namespace: string, name: string, spec: Record<string, unknown> = {}) {
  return kube.request<KubeObject>('POST', fnPath(namespace), {
    body: {
      apiVersion: 'sluice.dev/v1alpha1',
      kind: 'StreamingFunction',
      metadata: { name, namespace },
      spec: { image: 'ghcr.io/acme/llm:1', ...spec },
    },
  });
}

async function connectWith(creds: string): Promise<NatsConnection> {
  const nc = await connect({
    servers: natsUrl,
    authenticator: credsAuthenticator(new TextEncoder().encode(creds)),
  });
  clients.push(nc);
  return nc;
}

beforeAll(async () => {
  kubeconfig = kubeconfigPath();
  kube = await KubeClient.load(kubeconfig);
  for (const name of [ns, renewNs])
    await kube.request('POST', '/api/v1/namespaces', { body: { metadata: { name } } });
  const natsPort = await freePort();
  natsUrl = `nats://127.0.0.1:${natsPort}`;
  metricsPort = await freePort();
  // The operator makes its keys on start; NATS starts from what it wrote, as a chart install does.
  await operator(ns, [
    '--metrics',
    `127.0.0.1:${metricsPort}`,
    '--metrics-auth=true',
    '--proxy-from-namespaces',
    'ingress-nginx, gateway',
    '--admin-from-namespaces',
    'monitoring',
  ]);
  const keys = await kube.get<KubeObject>(secretPath(ns, 'sluice-nats-auth'));
  nats = await startNats({ trust: Buffer.from(keys.data[TRUST_KEY], 'base64').toString(), port: natsPort });
});

afterAll(async () => {
  for (const namespace of [ns, renewNs]) {
    // Functions go while the operators still run: their finalizer would otherwise hold the namespace.
    await kube.request('DELETE', fnPath(namespace)).catch(() => undefined);
  }
  await waitFor(
    async () =>
      (await Promise.all([ns, renewNs].map((n) => kube.get<{ items: unknown[] }>(fnPath(n))))).every(
        (l) => l.items.length === 0,
      ),
    { timeoutMs: 30_000, what: 'the functions deleted' },
  ).catch(() => undefined);
  await Promise.all(operators.map((op) => op.stop()));
  await Promise.all(clients.map((c) => c.close().catch(() => {})));
  await nats?.stop();
  for (const name of [ns, renewNs])
    await kube?.request('DELETE', `/api/v1/namespaces/${name}`).catch(() => undefined);
  await kube
    ?.request('DELETE', `/apis/rbac.authorization.k8s.io/v1/clusterroles/metrics-reader-${suffix}`)
    .catch(() => {});
  await kube
    ?.request('DELETE', `/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/metrics-reader-${suffix}`)
    .catch(() => {});
  kube?.close();
});

describe('NATS keys', () => {
  it('are made once, in a Secret that holds the master and the trust.conf a server includes', async () => {
    const keys = await kube.get<KubeObject>(secretPath(ns, 'sluice-nats-auth'));
    expect(Object.keys(keys.data).sort()).toEqual(['master', 'trust.conf']);
    const trust = Buffer.from(keys.data['trust.conf'], 'base64').toString();
    expect(trust).toMatch(/^operator: ey/m);
    expect(trust).not.toContain(Buffer.from(keys.data.master, 'base64').toString());
    // A second start (another replica, a restart) reads them back and writes nothing.
    const again = await loadNatsKeys(kube, keysSecret, log);
    expect(trust).toContain(`system_account: ${again.system.getPublicKey()}`);
    expect((await kube.get<KubeObject>(secretPath(ns, 'sluice-nats-auth'))).metadata?.resourceVersion).toBe(
      keys.metadata?.resourceVersion,
    );
  });

  it('the server refuses a client without credentials', async () => {
    await expect(connect({ servers: natsUrl })).rejects.toThrow(/Authorization Violation/);
  });
});

describe('a map function', () => {
  let secret: KubeObject;

  beforeAll(async () => {
    await createFunction(ns, 'llm');
    secret = await waitFor(() => get(secretPath(ns, 'llm-nats-credentials')), {
      timeoutMs: 30_000,
      what: 'the credentials Secret',
    });
  });

  it('gets credentials in a Secret it owns, which its sidecar mounts', async () => {
    const fn = await kube.get<KubeObject>(fnPath(ns, 'llm'));
    expect(secret.metadata?.ownerReferences).toEqual([
      expect.objectContaining({
        kind: 'StreamingFunction',
        name: 'llm',
        uid: fn.metadata?.uid,
        controller: true,
      }),
    ]);
    expect(readCredentials(credsOf(secret))?.expires).toBeGreaterThan(Date.now() / 1000 + 3000);
    const deployment = await waitFor(() => get(resourcePath('apps/v1', 'deployments', ns, 'llm')), {
      what: 'the Deployment',
    });
    const pod = deployment.spec.template.spec;
    const sidecar = pod.containers.find((c: { name: string }) => c.name === 'sluice-proxy');
    expect(sidecar.args).toContain('--nats-credentials=/etc/sluice/nats/nats.creds');
    expect(sidecar.volumeMounts).toContainEqual({
      name: 'nats-credentials',
      mountPath: '/etc/sluice/nats',
      readOnly: true,
    });
    expect(pod.volumes).toContainEqual({
      name: 'nats-credentials',
      secret: expect.objectContaining({
        secretName: 'llm-nats-credentials',
        items: [{ key: 'nats.creds', path: 'nats.creds' }],
      }),
    });
  });

  it("its credentials reach its streams, made by the operator in the function's own account", async () => {
    const names = mapNames(`${ns}/llm`);
    const nc = await connectWith(credsOf(secret));
    const jsm = await jetstreamManager(nc);
    expect((await jsm.streams.info(names.tasksStream)).config.subjects).toEqual([names.tasksSubjects]);
    expect((await jsm.consumers.info(names.tasksStream, names.workerConsumer)).config.durable_name).toBe(
      names.workerConsumer,
    );
  });

  it("another function's credentials do not", async () => {
    await createFunction(ns, 'other');
    const other = await waitFor(() => get(secretPath(ns, 'other-nats-credentials')), {
      what: "other's Secret",
    });
    const nc = await connectWith(credsOf(other));
    const jsm = await jetstreamManager(nc);
    await expect(jsm.streams.info(mapNames(`${ns}/llm`).tasksStream)).rejects.toThrow(/permission|timeout/i);
  });

  it('gets a NetworkPolicy: the proxy port from the named namespaces, the admin port from monitoring', async () => {
    const policy = await waitFor(
      () => get(resourcePath('networking.k8s.io/v1', 'networkpolicies', ns, 'llm')),
      {
        what: 'the NetworkPolicy',
      },
    );
    const inNamespaces = (values: string[]) => [
      {
        namespaceSelector: {
          matchExpressions: [{ key: 'kubernetes.io/metadata.name', operator: 'In', values }],
        },
      },
    ];
    expect(policy.spec).toEqual({
      podSelector: { matchLabels: { 'sluice.dev/function': 'llm' } },
      policyTypes: ['Ingress'],
      ingress: [
        { ports: [{ protocol: 'TCP', port: 8080 }], from: inNamespaces(['ingress-nginx', 'gateway']) },
        { ports: [{ protocol: 'TCP', port: 9090 }], from: inNamespaces(['monitoring']) },
      ],
    });
  });

  it('keeps the Secret as it is in a steady state (no renewal before half the lifetime)', async () => {
    const op = operators[0]!;
    // Touch the function: a reconcile that must find nothing to write.
    await kube.mergePatch(fnPath(ns, 'llm'), { metadata: { annotations: { touched: '1' } } });
    await waitFor(
      () =>
        op.controller.functions.get(ns, 'llm')?.metadata?.annotations?.touched === '1' &&
        op.queue.depth === 0 &&
        op.queue.inFlight === 0,
      { what: 'the touch reconciled' },
    );
    const now = await kube.get<KubeObject>(secretPath(ns, 'llm-nats-credentials'));
    expect(now.metadata?.resourceVersion).toBe(secret.metadata?.resourceVersion);
  });

  it('deleting it deletes its streams in its account', async () => {
    const nc = await connectWith(credsOf(secret));
    const jsm = await jetstreamManager(nc);
    await kube.request('DELETE', fnPath(ns, 'llm'));
    await waitFor(
      () =>
        jsm.streams.info(mapNames(`${ns}/llm`).tasksStream).then(
          () => false,
          (err) => /not found/i.test(String(err)),
        ),
      {
        timeoutMs: 20_000,
        what: 'the streams deleted',
      },
    );
  });
});

describe('credentials renewal', () => {
  it('issues new credentials at half their lifetime; the old ones stay valid until they expire', async () => {
    await operator(renewNs, ['--metrics', `127.0.0.1:${await freePort()}`, '--nats-credentials-ttl', '10']);
    await createFunction(renewNs, 'short');
    const first = await waitFor(() => get(secretPath(renewNs, 'short-nats-credentials')), {
      timeoutMs: 30_000,
      what: 'the first credentials',
    });
    const issued = readCredentials(credsOf(first))!;
    expect(issued.expires! - issued.issuedAt).toBe(10);
    const renewed = await waitFor(
      async () => {
        const now = await get(secretPath(renewNs, 'short-nats-credentials'));
        return now && credsOf(now) !== credsOf(first) ? now : undefined;
      },
      { timeoutMs: 20_000, what: 'the credentials renewed' },
    );
    expect(readCredentials(credsOf(renewed))!.issuedAt).toBeGreaterThanOrEqual(issued.issuedAt + 5);
    await connectWith(credsOf(renewed));
    if (Date.now() / 1000 < issued.expires! - 1) await connectWith(credsOf(first));
  });
});

describe("the operator's /metrics", () => {
  const url = () => `http://127.0.0.1:${metricsPort}`;
  const token = async (sa: string) =>
    (
      await kube.request<{ status: { token: string } }>(
        'POST',
        `/api/v1/namespaces/${ns}/serviceaccounts/${sa}/token`,
        {
          body: {
            apiVersion: 'authentication.k8s.io/v1',
            kind: 'TokenRequest',
            spec: { expirationSeconds: 600 },
          },
        },
      )
    ).status.token;
  const scrape = (bearer?: string) =>
    fetch(`${url()}/metrics`, { headers: bearer ? { authorization: `Bearer ${bearer}` } : {} });

  beforeAll(async () => {
    await kube.request('POST', `/api/v1/namespaces/${ns}/serviceaccounts`, {
      body: { metadata: { name: 'prometheus' } },
    });
  });

  it('answers probes without a token', async () => {
    expect((await fetch(`${url()}/healthz`)).status).toBe(200);
  });

  it('answers 401 without a token or with one the API server does not accept', async () => {
    for (const response of [await scrape(), await scrape('not-a-token')]) {
      expect(response.status).toBe(401);
      expect(response.headers.get('www-authenticate')).toBe('Bearer');
      expect(((await response.json()) as { error: { code: string } }).error.code).toBe('unauthorized');
    }
  });

  it('answers 403 to a ServiceAccount without RBAC for /metrics, 200 once it is bound', async () => {
    const denied = await scrape(await token('prometheus'));
    expect(denied.status).toBe(403);
    const { error } = (await denied.json()) as { error: { code: string; message: string } };
    expect(error).toMatchObject({
      code: 'forbidden',
      message: expect.stringContaining(`system:serviceaccount:${ns}:prometheus`),
    });
    await kube.request('POST', '/apis/rbac.authorization.k8s.io/v1/clusterroles', {
      body: {
        metadata: { name: `metrics-reader-${suffix}` },
        rules: [{ nonResourceURLs: ['/metrics'], verbs: ['get'] }],
      },
    });
    await kube.request('POST', '/apis/rbac.authorization.k8s.io/v1/clusterrolebindings', {
      body: {
        metadata: { name: `metrics-reader-${suffix}` },
        roleRef: {
          apiGroup: 'rbac.authorization.k8s.io',
          kind: 'ClusterRole',
          name: `metrics-reader-${suffix}`,
        },
        subjects: [{ kind: 'ServiceAccount', name: 'prometheus', namespace: ns }],
      },
    });
    // The API server's RBAC caches follow the binding: ask it directly until it allows.
    await waitFor(
      async () =>
        (
          await kube.request<{ status: { allowed?: boolean } }>(
            'POST',
            '/apis/authorization.k8s.io/v1/subjectaccessreviews',
            {
              body: {
                apiVersion: 'authorization.k8s.io/v1',
                kind: 'SubjectAccessReview',
                spec: {
                  user: `system:serviceaccount:${ns}:prometheus`,
                  nonResourceAttributes: { path: '/metrics', verb: 'get' },
                },
              },
            },
          )
        ).status.allowed,
      { what: 'the binding to take effect' },
    );
    // A new token: the denial of the first one stays cached for 30 s, as controller-runtime does.
    const allowed = await scrape(await token('prometheus'));
    expect(allowed.status).toBe(200);
    expect(await allowed.text()).toContain('sluice_operator_reconcile_total');
  });
});
