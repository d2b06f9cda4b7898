import { describe, expect, it } from 'vitest';
import { NatsAuthority, newMasterSecret } from '../common/nats-auth.ts';
import { type BuilderConfig, desiredDeployment, proxyArgs } from '../operator/desired.ts';
import { type FunctionView, functionView } from '../operator/function.ts';
import { CredentialIssuer, desiredCredentialsSecret, readCredentials } from '../operator/nats-credentials.ts';
import { desiredNetworkPolicy } from '../operator/network-policy.ts';
import { ownedKinds } from '../operator/reconciler-io.ts';
import { loadProxyConfig } from '../proxy/config.ts';

// The lockdown's pure pieces as tables: the NetworkPolicy and Deployment builders, which kinds
// an operator owns, and when the credential issuer keeps or renews a function's credentials.

const base: BuilderConfig = {
  proxyImage: 'sluice:test',
  nats: 'nats://nats.sluice-system:4222',
  ingressClass: '',
  gpuResourceName: 'nvidia.com/gpu',
  maxDrain: 20,
};

function fn(spec: Record<string, unknown> = {}, name = 'echo'): FunctionView {
  return functionView({
    metadata: { name, namespace: 'team-a', uid: 'uid-1', generation: 1 },
    spec: { image: 'ghcr.io/acme/echo:1', ...spec },
  });
}

const ns = (values: string[]) => [
  {
    namespaceSelector: { matchExpressions: [{ key: 'kubernetes.io/metadata.name', operator: 'In', values }] },
  },
];

describe('desiredNetworkPolicy', () => {
  it.each([
    ['off', { networkPolicy: false }, undefined],
    [
      'proxy port from anywhere, admin port from no pod',
      { networkPolicy: true },
      [{ ports: [{ protocol: 'TCP', port: 8080 }] }],
    ],
    [
      'proxy port from named namespaces',
      { networkPolicy: true, proxyFromNamespaces: ['ingress-nginx'] },
      [{ ports: [{ protocol: 'TCP', port: 8080 }], from: ns(['ingress-nginx']) }],
    ],
    [
      "named namespaces and the activator's (it forwards held requests)",
      {
        networkPolicy: true,
        proxyFromNamespaces: ['ingress-nginx'],
        activator: 'sluice-system/sluice-activator',
      },
      [{ ports: [{ protocol: 'TCP', port: 8080 }], from: ns(['ingress-nginx', 'sluice-system']) }],
    ],
    [
      'from anywhere stays from anywhere with an activator',
      { networkPolicy: true, activator: 'sluice-system/sluice-activator' },
      [{ ports: [{ protocol: 'TCP', port: 8080 }] }],
    ],
    [
      'admin port from monitoring',
      { networkPolicy: true, adminFromNamespaces: ['monitoring', 'obs'] },
      [
        { ports: [{ protocol: 'TCP', port: 8080 }] },
        { ports: [{ protocol: 'TCP', port: 9090 }], from: ns(['monitoring', 'obs']) },
      ],
    ],
  ])('%s', (_name, extra, ingress) => {
    const policy = desiredNetworkPolicy(fn({ port: 9000 }), { ...base, ...extra });
    if (ingress === undefined) return expect(policy).toBeUndefined();
    expect(policy?.spec).toEqual({
      podSelector: { matchLabels: { 'sluice.dev/function': 'echo' } },
      policyTypes: ['Ingress'],
      ingress,
    });
    // The function's own port is in no rule: other pods cannot skip the sidecar.
    expect(JSON.stringify(policy?.spec)).not.toContain('9000');
    expect(policy?.metadata?.ownerReferences?.[0]).toMatchObject({ kind: 'StreamingFunction', uid: 'uid-1' });
  });
});

describe('NATS credentials in the Deployment', () => {
  it.each([
    ['locked down, map on', { natsAuth: true }, {}, true],
    ['locked down, map off (load reports)', { natsAuth: true }, { map: { enabled: false } }, true],
    ['NATS without auth', { natsAuth: false }, {}, false],
    ['no NATS', { natsAuth: true, nats: '' }, {}, false],
  ])('%s', (_name, extra, spec, mounted) => {
    const config = { ...base, ...extra };
    const deployment = desiredDeployment(fn(spec), config);
    const pod = deployment.spec.template.spec;
    const sidecar = pod.containers[1];
    const flag = '--nats-credentials=/etc/sluice/nats/nats.creds';
    expect(sidecar.args.includes(flag)).toBe(mounted);
    expect((pod.volumes ?? []).some((v: { name: string }) => v.name === 'nats-credentials')).toBe(mounted);
    // Whatever the operator passes, the proxy accepts (its file check aside).
    expect(() => loadProxyConfig(proxyArgs(fn(spec), config), {})).not.toThrow();
  });

  it('mounts it beside the auth tokens', () => {
    const pod = desiredDeployment(fn({ auth: { secretName: 'tokens' } }), { ...base, natsAuth: true }).spec
      .template.spec;
    expect(pod.volumes.map((v: { secret: { secretName: string } }) => v.secret.secretName)).toEqual([
      'tokens',
      'echo-nats-credentials',
    ]);
  });
});

describe('ownedKinds', () => {
  it.each([
    [{ nats: '' }, ['Deployment', 'Service', 'Ingress']],
    [
      { nats: 'nats://n', natsAuth: false, networkPolicy: true },
      ['Deployment', 'Service', 'Ingress', 'NetworkPolicy'],
    ],
    [{ nats: 'nats://n', natsAuth: true }, ['Deployment', 'Service', 'Ingress', 'Secret']],
    [
      { nats: 'nats://n', natsAuth: true, networkPolicy: true },
      ['Deployment', 'Service', 'Ingress', 'NetworkPolicy', 'Secret'],
    ],
  ])('%o → %o', (config, kinds) => {
    expect(ownedKinds(config).map((k) => k.kind)).toEqual(kinds);
  });
});

describe('CredentialIssuer', () => {
  const authority = new NatsAuthority(newMasterSecret());
  const t0 = Date.now();
  const issuer = (now: number, ttl = 100, by = authority) =>
    new CredentialIssuer(by, ttl, undefined, () => now);

  it('issues credentials of the function, expiring after the TTL, renewed at half of it', async () => {
    const { object, renewInMs } = await issuer(t0).secret(fn(), undefined);
    const creds = readCredentials(Buffer.from(object.data['nats.creds'], 'base64').toString())!;
    expect(creds.issuer).toBe(authority.functionAccount('team-a/echo').getPublicKey());
    expect(creds.expires).toBe(Math.floor(t0 / 1000) + 100);
    expect(renewInMs).toBe(50_000);
  });

  it.each<[string, { at: number; ttl?: number; other?: boolean }, boolean]>([
    ['kept before half their life', { at: 40_000 }, false],
    ['renewed past half their life', { at: 60_000 }, true],
    ['renewed when the TTL got shorter', { at: 1_000, ttl: 50 }, true],
    ['renewed when another authority signed them (keys replaced)', { at: 1_000, other: true }, true],
  ])('%s', async (_name, { at, ttl, other }, renewed) => {
    const first = await issuer(t0).secret(fn(), undefined);
    const live = { ...first.object, metadata: { ...first.object.metadata, resourceVersion: '7' } };
    const by = other ? new NatsAuthority(newMasterSecret()) : authority;
    const next = await issuer(t0 + at, ttl ?? 100, by).secret(fn(), live);
    expect(next.object.data['nats.creds'] !== first.object.data['nats.creds']).toBe(renewed);
    if (!renewed)
      expect(next.object).toEqual(
        desiredCredentialsSecret(fn(), Buffer.from(first.object.data['nats.creds'], 'base64').toString()),
      );
  });

  it('renews a Secret whose data is not credentials', async () => {
    const broken = desiredCredentialsSecret(fn(), 'not creds');
    const next = await issuer(t0).secret(fn(), broken);
    expect(readCredentials(Buffer.from(next.object.data['nats.creds'], 'base64').toString())).toBeDefined();
  });
});
