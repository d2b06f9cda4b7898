// The chart without a cluster: lint, every feature flag rendered, bad values refused by
// values.schema.json naming the field, the operator accepting the flags the chart passes, and
// the NATS configuration accepted and served by a real nats-server.
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, credsAuthenticator } from '@nats-io/transport-node';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isMap, isPair, isScalar, parse, parseDocument, type YAMLMap } from 'yaml';
import { loadActivatorConfig } from '../activator/config.ts';
import { NatsAuthority, newMasterSecret, pushAccount } from '../common/nats-auth.ts';
import { freePort, waitFor } from '../common/net.ts';
import { NATS_SERVER, type Started, start } from '../harness/process.ts';
import { loadOperatorConfig } from '../operator/config.ts';
import { FUNCTION_LABEL, labels } from '../operator/desired.ts';
import { CHART, find, helm, helmMissing, type Manifest, render } from './support/helm.ts';

if (helmMissing) console.warn(`skipping chart tests: ${helmMissing}`);

function operatorArgs(manifests: Manifest[]): string[] {
  const deployment = find(manifests, 'Deployment', '-operator');
  return deployment!.spec.template.spec.containers[0].args as string[];
}

function flag(args: string[], name: string): string | undefined {
  const prefix = `--${name}=`;
  return args.find((a) => a.startsWith(prefix))?.slice(prefix.length);
}

describe.skipIf(helmMissing)('chart charts/sluice', () => {
  let defaults: Manifest[];
  beforeAll(async () => {
    defaults = await render();
  });

  it('passes helm lint --strict', async () => {
    const result = await helm(['lint', CHART, '--strict']);
    expect(result.stderr + result.stdout).toContain('0 chart(s) failed');
    expect(result.code).toBe(0);
  });

  it('installs by default the CRD (kept on uninstall), the operator, the activator, RBAC, metrics Service and NATS', () => {
    const kinds = defaults.map((m) => `${m.kind}/${m.metadata.name}`).sort();
    expect(kinds).toEqual(
      [
        'ClusterRole/sluice-activator',
        'ClusterRole/sluice-metrics-reader',
        'ClusterRole/sluice-operator',
        'ClusterRole/sluice-operator-auth',
        'ClusterRoleBinding/sluice-activator',
        'ClusterRoleBinding/sluice-operator',
        'ClusterRoleBinding/sluice-operator-auth',
        'ConfigMap/sluice-nats',
        'CustomResourceDefinition/streamingfunctions.sluice.dev',
        'Deployment/sluice-activator',
        'Deployment/sluice-operator',
        'NetworkPolicy/sluice-nats',
        'PodDisruptionBudget/sluice-operator',
        'Role/sluice-activator-endpoints',
        'Role/sluice-leader-election',
        'Role/sluice-nats-keys',
        'RoleBinding/sluice-activator-endpoints',
        'RoleBinding/sluice-leader-election',
        'RoleBinding/sluice-nats-keys',
        'Service/sluice-activator',
        'Service/sluice-nats',
        'Service/sluice-nats-headless',
        'Service/sluice-operator-metrics',
        'ServiceAccount/sluice',
        'ServiceAccount/sluice-activator',
        'StatefulSet/sluice-nats',
      ].sort(),
    );
    const crd = find(defaults, 'CustomResourceDefinition')!;
    expect(crd.metadata.annotations['helm.sh/resource-policy']).toBe('keep');
  });

  it('runs the operator as 2 leader-electing replicas, probed on /healthz, locked down', () => {
    const deployment = find(defaults, 'Deployment', '-operator')!;
    const pod = deployment.spec.template.spec;
    const container = pod.containers[0];
    expect(deployment.spec.replicas).toBe(2);
    expect(container.args[0]).toBe('operator');
    expect(flag(container.args, 'leader-elect')).toBe('true');
    expect(container.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'metrics' });
    expect(container.readinessProbe.httpGet).toEqual({ path: '/healthz', port: 'metrics' });
    expect(container.resources.requests).toBeDefined();
    expect(container.resources.limits.memory).toBeDefined();
    expect(pod.securityContext).toMatchObject({
      runAsNonRoot: true,
      seccompProfile: { type: 'RuntimeDefault' },
    });
    expect(container.securityContext).toEqual({
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'] },
    });
    // The Lease's namespace and holder identity come from the downward API.
    const env = Object.fromEntries(
      container.env.map((e: Manifest) => [e.name, e.valueFrom?.fieldRef?.fieldPath]),
    );
    expect(env).toMatchObject({ POD_NAME: 'metadata.name', POD_NAMESPACE: 'metadata.namespace' });
    expect(pod.serviceAccountName).toBe('sluice');
  });

  it('installs NATS as one JetStream StatefulSet on a PVC and points the operator at it', () => {
    const sts = find(defaults, 'StatefulSet', '-nats')!;
    expect(sts.spec.replicas).toBe(1);
    expect(sts.spec.template.spec.containers[0].image).toMatch(/^nats:/);
    expect(sts.spec.volumeClaimTemplates[0].spec.resources.requests.storage).toBe('10Gi');
    const config = find(defaults, 'ConfigMap', '-nats')!.data['nats.conf'] as string;
    expect(config).toMatch(/jetstream \{\s*store_dir: \/data/);
    expect(flag(operatorArgs(defaults), 'nats')).toBe('nats://sluice-nats.sluice-system.svc:4222');
  });

  it('runs the activator beside two operators as two replicas, and points the operator at its Service', () => {
    const deployment = find(defaults, 'Deployment', '-activator')!;
    const container = deployment.spec.template.spec.containers[0];
    expect(deployment.spec.replicas).toBe(2);
    expect(container.args).toEqual(
      expect.arrayContaining(['activator', '--nats=nats://sluice-nats.sluice-system.svc:4222']),
    );
    expect(container.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'admin' });
    expect(deployment.spec.template.spec.serviceAccountName).toBe('sluice-activator');
    const service = find(defaults, 'Service', '-activator')!;
    expect(service.spec.ports).toEqual([{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }]);
    expect(flag(operatorArgs(defaults), 'activator')).toBe('sluice-system/sluice-activator');
    expect(flag(operatorArgs(defaults), 'max-drain')).toBe('3600');
    // Its flags are ones `sluice activator` accepts.
    const config = loadActivatorConfig(container.args.slice(1), { POD_NAME: 'a-0' });
    expect([config.listen.port, config.admin.port, config.identity]).toEqual([8080, 9090, 'a-0']);
    // Its RBAC: read the functions, nothing more.
    expect(find(defaults, 'ClusterRole', '-activator')!.rules).toEqual([
      { apiGroups: ['sluice.dev'], resources: ['streamingfunctions'], verbs: ['list', 'watch'] },
    ]);
  });

  it("locks NATS down: the operator's keys Secret mounted, monitoring off the client Service", () => {
    const sts = find(defaults, 'StatefulSet', '-nats')!;
    const pod = sts.spec.template.spec;
    expect(pod.volumes).toContainEqual({
      name: 'auth',
      secret: { secretName: 'sluice-nats-auth', items: [{ key: 'trust.conf', path: 'trust.conf' }] },
    });
    expect(pod.containers[0].volumeMounts).toContainEqual({
      name: 'auth',
      mountPath: '/etc/nats-auth',
      readOnly: true,
    });
    const config = find(defaults, 'ConfigMap', '-nats')!.data['nats.conf'] as string;
    expect(config).toContain('include ../nats-auth/trust.conf');
    expect(config).toMatch(/resolver: \{\s*type: full\s*dir: \/data\/jwt/);
    const args = operatorArgs(defaults);
    expect(flag(args, 'nats-auth')).toBe('true');
    expect(flag(args, 'nats-auth-secret')).toBe('sluice-system/sluice-nats-auth');
    const service = find(defaults, 'Service', '-nats')!;
    expect(service.spec.ports.map((p: Manifest) => p.port)).toEqual([4222]);
    // The operator reads Secrets only because it issues NATS credentials.
    const rules = find(defaults, 'ClusterRole', '-operator')!.rules as Manifest[];
    expect(rules.find((r) => r.resources.includes('secrets'))?.verbs).toEqual([
      'get',
      'list',
      'watch',
      'create',
      'patch',
    ]);
    expect(find(defaults, 'Role', '-nats-keys')!.rules).toEqual([
      { apiGroups: [''], resources: ['secrets'], verbs: ['get', 'create'] },
    ]);
    // The activator reads load reports with the credentials the operator makes for it.
    const activator = find(defaults, 'Deployment', '-activator')!.spec.template.spec;
    expect(activator.containers[0].args).toContain('--nats-credentials=/etc/sluice/nats/nats.creds');
    expect(activator.volumes).toContainEqual({
      name: 'nats-credentials',
      secret: { secretName: 'sluice-activator-nats-credentials' },
    });
  });

  it('lets NATS take clients only from function pods, the operator and the activator', () => {
    const policy = find(defaults, 'NetworkPolicy', '-nats')!;
    expect(policy.spec.ingress).toEqual([
      {
        ports: [{ protocol: 'TCP', port: 4222 }],
        from: [
          {
            podSelector: { matchExpressions: [{ key: 'sluice.dev/function', operator: 'Exists' }] },
            namespaceSelector: {},
          },
          {
            podSelector: {
              matchLabels: find(defaults, 'Deployment', '-operator')!.spec.selector.matchLabels,
            },
          },
          {
            podSelector: {
              matchLabels: find(defaults, 'Deployment', '-activator')!.spec.selector.matchLabels,
            },
          },
        ],
      },
    ]);
    expect(flag(operatorArgs(defaults), 'network-policy')).toBe('true');
  });

  it("serves the operator's /metrics to tokens allowed get on it, with the RBAC a Prometheus needs", () => {
    expect(flag(operatorArgs(defaults), 'metrics-auth')).toBe('true');
    expect(find(defaults, 'ClusterRole', '-metrics-reader')!.rules).toEqual([
      { nonResourceURLs: ['/metrics'], verbs: ['get'] },
    ]);
    expect(find(defaults, 'ClusterRole', '-operator-auth')!.rules).toEqual([
      { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
      { apiGroups: ['authorization.k8s.io'], resources: ['subjectaccessreviews'], verbs: ['create'] },
    ]);
    expect(find(defaults, 'ClusterRoleBinding', '-metrics-reader')).toBeUndefined();
  });

  // Each feature flag: the values that turn it, and what must (not) be rendered.
  const features: { name: string; set: string[]; check: (m: Manifest[]) => void }[] = [
    {
      name: 'nats.enabled=false with nats.url uses the existing NATS',
      set: ['nats.enabled=false', 'nats.url=nats://nats.infra:4222'],
      check: (m) => {
        expect(find(m, 'StatefulSet')).toBeUndefined();
        expect(find(m, 'ConfigMap')).toBeUndefined();
        expect(flag(operatorArgs(m), 'nats')).toBe('nats://nats.infra:4222');
      },
    },
    {
      name: 'nats.enabled=false without nats.url turns map off',
      set: ['nats.enabled=false'],
      check: (m) => {
        expect(find(m, 'StatefulSet')).toBeUndefined();
        expect(flag(operatorArgs(m), 'nats')).toBeUndefined();
      },
    },
    {
      name: 'no NATS: no activator (it needs the load reports), and the operator is not pointed at one',
      set: ['nats.enabled=false'],
      check: (m) => {
        expect(find(m, 'Deployment', '-activator')).toBeUndefined();
        expect(flag(operatorArgs(m), 'activator')).toBeUndefined();
        expect(JSON.stringify(find(m, 'ClusterRole', '-operator')!.rules)).not.toContain('endpointslices');
      },
    },
    {
      name: 'activator.enabled=false leaves it out',
      set: ['activator.enabled=false'],
      check: (m) => {
        expect(m.filter((x) => x.metadata.name.includes('activator'))).toEqual([]);
        expect(flag(operatorArgs(m), 'activator')).toBeUndefined();
      },
    },
    {
      name: 'one operator replica: one activator replica',
      set: ['operator.replicas=1'],
      check: (m) => expect(find(m, 'Deployment', '-activator')!.spec.replicas).toBe(1),
    },
    {
      name: 'operator.defaults.maxDrainSeconds reaches --max-drain',
      set: ['operator.defaults.maxDrainSeconds=900'],
      check: (m) => expect(flag(operatorArgs(m), 'max-drain')).toBe('900'),
    },
    {
      name: 'crds.enabled=false leaves the CRD out',
      set: ['crds.enabled=false'],
      check: (m) => expect(find(m, 'CustomResourceDefinition')).toBeUndefined(),
    },
    {
      name: 'crds.keep=false lets helm uninstall delete the CRD',
      set: ['crds.keep=false'],
      check: (m) =>
        expect(
          find(m, 'CustomResourceDefinition')!.metadata.annotations?.['helm.sh/resource-policy'],
        ).toBeUndefined(),
    },
    {
      name: 'operator.defaults.ingressClassName reaches --ingress-class',
      set: ['operator.defaults.ingressClassName=nginx'],
      check: (m) => expect(flag(operatorArgs(m), 'ingress-class')).toBe('nginx'),
    },
    {
      name: 'operator.defaults.gpuResourceName reaches --gpu-resource-name',
      set: ['operator.defaults.gpuResourceName=amd.com/gpu'],
      check: (m) => expect(flag(operatorArgs(m), 'gpu-resource-name')).toBe('amd.com/gpu'),
    },
    {
      name: 'operator.proxyImage overrides the sidecar image only',
      set: ['operator.proxyImage.repository=registry.local/sluice', 'operator.proxyImage.tag=dev'],
      check: (m) => {
        expect(flag(operatorArgs(m), 'proxy-image')).toBe('registry.local/sluice:dev');
        expect(find(m, 'Deployment', '-operator')!.spec.template.spec.containers[0].image).toBe(
          'ghcr.io/sluice-dev/sluice:0.1.0',
        );
      },
    },
    {
      name: 'operator.watchNamespace narrows RBAC to a Role in that namespace',
      set: ['operator.watchNamespace=team-a'],
      check: (m) => {
        // Only the cluster-scoped review grants (/metrics auth) stay cluster-wide.
        expect(m.filter((x) => x.kind === 'ClusterRole').map((x) => x.metadata.name)).toEqual([
          'sluice-operator-auth',
          'sluice-metrics-reader',
        ]);
        expect(find(m, 'Role', '-operator')!.metadata.namespace).toBe('team-a');
        expect(find(m, 'Role', '-activator')!.metadata.namespace).toBe('team-a');
        expect(find(m, 'Deployment', '-activator')!.spec.template.spec.containers[0].args).toContain(
          '--namespace=team-a',
        );
        expect(find(m, 'RoleBinding', '-operator')!.metadata.namespace).toBe('team-a');
        expect(flag(operatorArgs(m), 'namespace')).toBe('team-a');
      },
    },
    {
      name: 'operator.leaderElect=false drops the Lease Role',
      set: ['operator.leaderElect=false', 'operator.replicas=1'],
      check: (m) => {
        expect(find(m, 'Role', '-leader-election')).toBeUndefined();
        expect(find(m, 'PodDisruptionBudget')).toBeUndefined();
        expect(flag(operatorArgs(m), 'leader-elect')).toBe('false');
      },
    },
    {
      name: 'rbac.create=false and serviceAccount.create=false use what exists',
      set: ['rbac.create=false', 'serviceAccount.create=false', 'serviceAccount.name=ops'],
      check: (m) => {
        expect(m.filter((x) => x.kind.includes('Role') || x.kind === 'ServiceAccount')).toEqual([]);
        expect(find(m, 'Deployment', '-operator')!.spec.template.spec.serviceAccountName).toBe('ops');
        expect(find(m, 'Deployment', '-activator')!.spec.template.spec.serviceAccountName).toBe('ops');
      },
    },
    {
      name: 'nats.replicas=3 makes a JetStream cluster and 3-replica map streams',
      set: ['nats.replicas=3'],
      check: (m) => {
        expect(find(m, 'StatefulSet', '-nats')!.spec.replicas).toBe(3);
        const config = find(m, 'ConfigMap', '-nats')!.data['nats.conf'] as string;
        for (const i of [0, 1, 2])
          expect(config).toContain(`nats://sluice-nats-${i}.sluice-nats-headless.sluice-system.svc:6222`);
        const headless = find(m, 'Service', '-nats-headless')!;
        expect(headless.spec.ports.map((p: { port: number }) => p.port)).toEqual([4222, 6222]);
        expect(find(m, 'PodDisruptionBudget', '-nats')!.spec.maxUnavailable).toBe(1);
        expect(flag(operatorArgs(m), 'map-stream-replicas')).toBe('3');
      },
    },
    {
      name: 'one NATS server: 1-replica map streams, no cluster block',
      set: [],
      check: (m) => {
        expect(find(m, 'ConfigMap', '-nats')!.data['nats.conf']).not.toContain('cluster');
        expect(find(m, 'PodDisruptionBudget', '-nats')).toBeUndefined();
        expect(flag(operatorArgs(m), 'map-stream-replicas')).toBe('1');
      },
    },
    {
      name: 'nats.auth.enabled=false: no keys, no credentials, no Secret access',
      set: ['nats.auth.enabled=false'],
      check: (m) => {
        expect(flag(operatorArgs(m), 'nats-auth')).toBe('false');
        expect(flag(operatorArgs(m), 'nats-auth-secret')).toBeUndefined();
        expect(find(m, 'Role', '-nats-keys')).toBeUndefined();
        expect(JSON.stringify(find(m, 'ClusterRole', '-operator')!.rules)).not.toContain('secrets');
        expect(find(m, 'ConfigMap', '-nats')!.data['nats.conf']).not.toContain('include');
        expect(JSON.stringify(find(m, 'StatefulSet')!.spec.template.spec.volumes)).not.toContain('nats-auth');
      },
    },
    {
      name: 'nats.url: the operator locks that NATS down too (its admin includes trust.conf)',
      set: ['nats.enabled=false', 'nats.url=nats://nats.infra:4222'],
      check: (m) => {
        expect(flag(operatorArgs(m), 'nats-auth')).toBe('true');
        expect(find(m, 'Role', '-nats-keys')).toBeDefined();
        expect(find(m, 'NetworkPolicy')).toBeUndefined();
      },
    },
    {
      name: 'networkPolicy: namespaces reach the operator; enabled=false drops policies and their RBAC',
      set: [
        'networkPolicy.proxyFromNamespaces={ingress-nginx,apps}',
        'networkPolicy.monitoringNamespaces={monitoring}',
      ],
      check: (m) => {
        expect(flag(operatorArgs(m), 'proxy-from-namespaces')).toBe('ingress-nginx,apps');
        expect(flag(operatorArgs(m), 'admin-from-namespaces')).toBe('monitoring');
        expect(find(m, 'NetworkPolicy')!.spec.ingress[1]).toEqual({
          ports: [{ protocol: 'TCP', port: 8222 }],
          from: [
            {
              namespaceSelector: {
                matchExpressions: [
                  { key: 'kubernetes.io/metadata.name', operator: 'In', values: ['monitoring'] },
                ],
              },
            },
          ],
        });
      },
    },
    {
      name: 'networkPolicy.enabled=false',
      set: ['networkPolicy.enabled=false'],
      check: (m) => {
        expect(find(m, 'NetworkPolicy')).toBeUndefined();
        expect(flag(operatorArgs(m), 'network-policy')).toBe('false');
        expect(JSON.stringify(find(m, 'ClusterRole', '-operator')!.rules)).not.toContain('networkpolicies');
      },
    },
    {
      name: 'metrics.readers binds ServiceAccounts to the metrics-reader ClusterRole; auth=false drops it all',
      set: ['metrics.readers[0].name=prometheus-k8s', 'metrics.readers[0].namespace=monitoring'],
      check: (m) =>
        expect(find(m, 'ClusterRoleBinding', '-metrics-reader')!.subjects).toEqual([
          { kind: 'ServiceAccount', name: 'prometheus-k8s', namespace: 'monitoring' },
        ]),
    },
    {
      name: 'metrics.auth=false',
      set: ['metrics.auth=false'],
      check: (m) => {
        expect(flag(operatorArgs(m), 'metrics-auth')).toBe('false');
        expect(m.filter((x) => x.kind === 'ClusterRole').map((x) => x.metadata.name)).toEqual([
          'sluice-activator',
          'sluice-operator',
        ]);
      },
    },
    {
      name: 'monitoring.podMonitor.enabled scrapes every function sidecar, naming the function namespace/name',
      set: ['monitoring.podMonitor.enabled=true', 'monitoring.podMonitor.labels.release=kps'],
      check: (m) => {
        const monitor = find(m, 'PodMonitor')!;
        expect(monitor.apiVersion).toBe('monitoring.coreos.com/v1');
        expect(monitor.metadata.labels.release).toBe('kps');
        expect(monitor.spec.namespaceSelector).toEqual({ any: true });
        // It selects the labels the operator puts on function pods (operator/desired.ts).
        const podLabels = labels({ metadata: { name: 'echo' } } as Parameters<typeof labels>[0]);
        for (const [key, value] of Object.entries(monitor.spec.selector.matchLabels))
          expect(podLabels[key], key).toBe(value);
        expect(monitor.spec.selector.matchExpressions).toEqual([{ key: FUNCTION_LABEL, operator: 'Exists' }]);
        expect(podLabels[FUNCTION_LABEL]).toBe('echo');
        const [endpoint] = monitor.spec.podMetricsEndpoints;
        expect(endpoint).toMatchObject({ port: 'admin', path: '/metrics', interval: '15s' });
        expect(endpoint.relabelings).toEqual([
          {
            sourceLabels: ['__meta_kubernetes_namespace', '__meta_kubernetes_pod_label_sluice_dev_function'],
            separator: '/',
            targetLabel: 'function',
          },
        ]);
        expect(find(m, 'ServiceMonitor')).toBeUndefined();
      },
    },
    {
      name: 'monitoring.podMonitor with operator.watchNamespace looks in that namespace only',
      set: ['monitoring.podMonitor.enabled=true', 'operator.watchNamespace=team-a'],
      check: (m) => expect(find(m, 'PodMonitor')!.spec.namespaceSelector).toEqual({ matchNames: ['team-a'] }),
    },
    {
      name: 'monitoring.serviceMonitor.enabled scrapes the operator metrics Service',
      set: ['monitoring.serviceMonitor.enabled=true'],
      check: (m) => {
        const monitor = find(m, 'ServiceMonitor')!;
        const service = find(m, 'Service', '-operator-metrics')!;
        expect(monitor.spec.namespaceSelector).toEqual({ matchNames: ['sluice-system'] });
        for (const [key, value] of Object.entries(monitor.spec.selector.matchLabels))
          expect(service.metadata.labels[key], key).toBe(value);
        expect(monitor.spec.endpoints).toEqual([{ port: 'metrics', path: '/metrics', interval: '15s' }]);
        expect(service.spec.ports.map((p: Manifest) => p.name)).toContain('metrics');
        expect(find(m, 'PodMonitor')).toBeUndefined();
      },
    },
    {
      name: "monitoring.dashboard.enabled ships the dashboard in a ConfigMap for Grafana's sidecar",
      set: ['monitoring.dashboard.enabled=true', 'monitoring.dashboard.namespace=monitoring'],
      check: (m) => {
        const configMap = find(m, 'ConfigMap', '-dashboard')!;
        expect(configMap.metadata.namespace).toBe('monitoring');
        expect(configMap.metadata.labels.grafana_dashboard).toBe('1');
        expect(configMap.metadata.annotations.grafana_folder).toBe('Sluice');
        const dashboard = JSON.parse(configMap.data['sluice.json']);
        expect(dashboard.uid).toBe('sluice');
        expect(dashboard.panels.length).toBeGreaterThan(8);
      },
    },
    {
      name: 'monitoring.dashboard.label picks the label another Grafana looks for',
      set: [
        'monitoring.dashboard.enabled=true',
        'monitoring.dashboard.label=dashboards',
        'monitoring.dashboard.labelValue=sluice',
      ],
      check: (m) => expect(find(m, 'ConfigMap', '-dashboard')!.metadata.labels.dashboards).toBe('sluice'),
    },
    {
      name: 'operator.nodeOptions reaches NODE_OPTIONS (a small young generation by default); empty leaves it out',
      set: ['operator.nodeOptions='],
      check: (m) => {
        const env = find(m, 'Deployment', '-operator')!.spec.template.spec.containers[0].env as Manifest[];
        expect(env.find((e) => e.name === 'NODE_OPTIONS')).toBeUndefined();
        const operator = find(defaults, 'Deployment', '-operator')!.spec.template.spec.containers[0];
        expect(operator.env.find((e: Manifest) => e.name === 'NODE_OPTIONS').value).toBe(
          '--max-semi-space-size=2',
        );
      },
    },
    {
      name: 'metrics.service.enabled=false leaves the metrics Service out',
      set: ['metrics.service.enabled=false'],
      check: (m) => expect(find(m, 'Service', '-operator-metrics')).toBeUndefined(),
    },
  ];
  it.each(features)('$name', async ({ set, check }) => {
    check(await render(set.flatMap((s) => ['--set', s])));
  });

  // Bad values: refused before anything is rendered, and the message names the field.
  const refusals: { set: string[]; names: RegExp }[] = [
    { set: ['operator.replicas=two'], names: /\/operator\/replicas/ },
    { set: ['operator.replicas=-1'], names: /\/operator\/replicas/ },
    { set: ['operator.metricsPort=80'], names: /\/operator\/metricsPort/ },
    { set: ['operator.logLevel=loud'], names: /\/operator\/logLevel/ },
    { set: ['operator.watchNamespace=Team_A'], names: /\/operator\/watchNamespace/ },
    { set: ['operator.defaults.gpuResourceName=gpu'], names: /\/operator\/defaults\/gpuResourceName/ },
    { set: ['operator.defaults.maxDrainSeconds=-5'], names: /\/operator\/defaults\/maxDrainSeconds/ },
    { set: ['activator.port=80'], names: /\/activator\/port/ },
    { set: ['operator.replica=2'], names: /\/operator.*'replica' not allowed/ },
    { set: ['image.pullPolicy=Sometimes'], names: /\/image\/pullPolicy/ },
    { set: ['nats.url=http://nats:4222', 'nats.enabled=false'], names: /\/nats\/url/ },
    { set: ['nats.jetstream.maxFileStore=lots'], names: /\/nats\/jetstream\/maxFileStore/ },
    { set: ['nats.persistence.accessModes={ReadMostly}'], names: /\/nats\/persistence\/accessModes/ },
    { set: ['crds.keep=maybe'], names: /\/crds\/keep/ },
    { set: ['nats.replicas=2'], names: /\/nats\/replicas/ },
    { set: ['networkPolicy.proxyFromNamespaces={Bad_NS}'], names: /\/networkPolicy\/proxyFromNamespaces/ },
    { set: ['nats.auth.credentialsTtlSeconds=5'], names: /\/nats\/auth\/credentialsTtlSeconds/ },
    { set: ['metrics.readers[0].name=p'], names: /\/metrics\/readers\/0/ },
    { set: ['nats.url=nats://nats:4222'], names: /nats\.enabled and nats\.url exclude each other/ },
    { set: ['operator.nodeOptions=rm -rf /'], names: /\/operator\/nodeOptions/ },
    { set: ['monitoring.podMonitor.interval=often'], names: /\/monitoring\/podMonitor\/interval/ },
    { set: ['monitoring.dashboard.labelValue=no spaces'], names: /\/monitoring\/dashboard\/labelValue/ },
    {
      set: ['monitoring.serviceMonitor.enabled=true', 'metrics.service.enabled=false'],
      names: /monitoring\.serviceMonitor\.enabled needs metrics\.service\.enabled/,
    },
    {
      set: ['serviceAccount.create=false'],
      names: /serviceAccount\.name must name an existing ServiceAccount/,
    },
  ];
  it.each(refusals)('refuses $set, naming the field', async ({ set, names }) => {
    const args = ['template', 'sluice', CHART, ...set.flatMap((s) => ['--set', s])];
    const result = await helm(args);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(names);
  });

  it.each(refusals.filter((r) => r.names.source.startsWith('\\/')))(
    'helm lint refuses $set by the schema',
    async ({ set, names }) => {
      const lint = await helm(['lint', CHART, ...set.flatMap((s) => ['--set', s])]);
      expect(lint.code).not.toBe(0);
      expect(lint.stdout + lint.stderr).toMatch(names);
    },
  );

  it('passes only flags that `sluice operator` accepts, with the values the chart was given', async () => {
    for (const set of [
      [],
      ['nats.enabled=false', 'nats.url=tls://a:4222\\,tls://b:4222', 'nats.replicas=3'],
      ['operator.watchNamespace=team-a'],
      [
        'networkPolicy.proxyFromNamespaces={a,b}',
        'networkPolicy.monitoringNamespaces={m}',
        'nats.auth.enabled=false',
      ],
    ]) {
      const args = operatorArgs(await render(set.flatMap((s) => ['--set', s])));
      expect(args[0]).toBe('operator');
      const config = loadOperatorConfig(args.slice(1), { POD_NAME: 'op-0', POD_NAMESPACE: 'sluice-system' });
      expect(config.leaderElectionNamespace).toBe('sluice-system');
      expect(config.identity).toBe('op-0');
      expect(config.metrics.port).toBe(8081);
      expect(config.proxyImage).toBe('ghcr.io/sluice-dev/sluice:0.1.0');
      expect(config.nats).toBe(flag(args, 'nats') ?? '');
      expect(config.mapStreamReplicas).toBe(Number(flag(args, 'map-stream-replicas') ?? 1));
      expect(config.proxyFromNamespaces).toEqual(flag(args, 'proxy-from-namespaces')?.split(',') ?? []);
    }
  });

  it('documents every field of values.yaml with a comment', async () => {
    // Kubernetes-shaped maps (resources, labels...) are documented by their parent.
    const opaque = new Set([
      'resources',
      'podLabels',
      'podAnnotations',
      'nodeSelector',
      'affinity',
      'annotations',
    ]);
    const doc = parseDocument(await readFile(join(CHART, 'values.yaml'), 'utf8'));
    const undocumented: string[] = [];
    const walk = (map: YAMLMap, path: string) => {
      let groupDocumented = false; // a comment above a run of sibling keys with no blank line documents the run
      for (const pair of map.items) {
        if (!isPair(pair) || !isScalar(pair.key)) continue;
        const key = String(pair.key.value);
        // yaml attaches a comment above a block's first key to the block (or the document) itself.
        const first = pair === map.items[0];
        const commented =
          Boolean(pair.key.commentBefore) ||
          (first && Boolean(map.commentBefore)) ||
          (first && path === '' && Boolean(doc.commentBefore));
        groupDocumented = commented || (groupDocumented && !pair.key.spaceBefore);
        if (!groupDocumented) undocumented.push(`${path}${key}`);
        if (isMap(pair.value) && !opaque.has(key)) walk(pair.value, `${path}${key}.`);
      }
    };
    walk(doc.contents as YAMLMap, '');
    expect(undocumented).toEqual([]);
  });

  it("is the NATS the tests and the local plane run: the version of the chart's image", async () => {
    const values = parse(await readFile(join(CHART, 'values.yaml'), 'utf8'));
    const version = execFileSync(NATS_SERVER, ['--version'], { encoding: 'utf8' }).trim();
    expect(version).toBe(`nats-server: v${values.nats.image.tag.replace(/-.*$/, '')}`);
  });

  describe('NATS configuration', () => {
    let dir: string;
    let nats: Started | undefined;
    afterEach(async () => {
      await nats?.stop();
      await rm(dir, { recursive: true, force: true });
    });

    it('is accepted by a real nats-server, which serves JetStream with it to credentials only', async () => {
      dir = await mkdtemp(join(tmpdir(), 'sluice-chart-nats-'));
      const config = find(defaults, 'ConfigMap', '-nats')!.data['nats.conf'] as string;
      // The same file with this machine's ports and a temp store instead of the pod's /data volume,
      // beside the trust.conf the operator's Secret holds, where the pod mounts it.
      const [client, monitor] = [await freePort(), await freePort()];
      const local = config
        .replace(/^port: 4222$/m, `port: ${client}`)
        .replace(/^http_port: 8222$/m, `http_port: ${monitor}`)
        .replace('store_dir: /data', `store_dir: ${join(dir, 'js')}`)
        .replace('dir: /data/jwt', `dir: ${join(dir, 'jwt')}`);
      expect(local).not.toBe(config);
      const authority = new NatsAuthority(newMasterSecret());
      await mkdir(join(dir, 'etc', 'nats'), { recursive: true });
      await mkdir(join(dir, 'etc', 'nats-auth'));
      await writeFile(join(dir, 'etc', 'nats-auth', 'trust.conf'), await authority.trustConfig());
      const file = join(dir, 'etc', 'nats', 'nats.conf');
      await writeFile(file, local);
      nats = start(NATS_SERVER, ['--config', file, '-a', '127.0.0.1'], {
        env: { ...process.env, POD_NAME: 'sluice-nats-0' },
      });
      const health = await waitFor(
        async () => {
          const res = await fetch(`http://127.0.0.1:${monitor}/healthz?js-enabled-only=true`);
          return res.ok ? res : undefined;
        },
        { timeoutMs: 15_000, what: () => `nats-server JetStream health (${nats?.output()})` },
      );
      expect(health.status).toBe(200);
      const jsz = (await (await fetch(`http://127.0.0.1:${monitor}/jsz`)).json()) as {
        config: { max_memory: number; max_storage: number; store_dir: string };
      };
      expect(jsz.config.max_memory).toBe(256 * 1024 * 1024);
      expect(jsz.config.max_storage).toBe(8 * 1024 * 1024 * 1024);
      const varz = (await (await fetch(`http://127.0.0.1:${monitor}/varz`)).json()) as {
        server_name: string;
      };
      expect(varz.server_name).toBe('sluice-nats-0');
      // Nothing gets in without credentials; a function's own work once its account is pushed.
      const url = `nats://127.0.0.1:${client}`;
      await expect(connect({ servers: url })).rejects.toThrow(/Authorization Violation/);
      const as = async (creds: string) =>
        connect({ servers: url, authenticator: credsAuthenticator(new TextEncoder().encode(creds)) });
      const system = await as((await authority.systemCredentials()).creds);
      await pushAccount(system, await authority.functionAccountJwt('team-a/echo'));
      const fn = await as((await authority.functionAdminCredentials('team-a/echo')).creds);
      expect((await (await jetstreamManager(fn)).getAccountInfo()).limits.max_storage).toBe(-1);
      await Promise.all([system.close(), fn.close()]);
    });

    it('with nats.replicas=3 makes three real nats-servers one JetStream cluster', async () => {
      dir = await mkdtemp(join(tmpdir(), 'sluice-chart-nats-cluster-'));
      const config = find(await render(['--set', 'nats.replicas=3']), 'ConfigMap', '-nats')!.data[
        'nats.conf'
      ] as string;
      // Each pod's file, with this machine's ports and the routes pointing at them.
      const ports: { client: number; monitor: number; cluster: number }[] = [];
      for (let i = 0; i < 3; i++)
        ports.push({ client: await freePort(), monitor: await freePort(), cluster: await freePort() });
      const servers: Started[] = [];
      const authority = new NatsAuthority(newMasterSecret());
      const trust = await authority.trustConfig();
      try {
        for (const [i, port] of ports.entries()) {
          let local = config
            .replace(/^port: 4222$/m, `port: ${port.client}`)
            .replace(/^http_port: 8222$/m, `http_port: ${port.monitor}`)
            .replace('store_dir: /data', `store_dir: ${join(dir, `js-${i}`)}`)
            .replace(/^ {2}port: 6222$/m, `  port: ${port.cluster}`)
            .replace('dir: /data/jwt', `dir: ${join(dir, `jwt-${i}`)}`);
          for (const [j, other] of ports.entries())
            local = local.replace(
              `sluice-nats-${j}.sluice-nats-headless.sluice-system.svc:6222`,
              `127.0.0.1:${other.cluster}`,
            );
          expect(local).not.toMatch(/svc:6222/);
          // As in the pod: the keys Secret's trust.conf beside the config's directory.
          await mkdir(join(dir, `etc-${i}`, 'nats'), { recursive: true });
          await mkdir(join(dir, `etc-${i}`, 'nats-auth'));
          await writeFile(join(dir, `etc-${i}`, 'nats-auth', 'trust.conf'), trust);
          const file = join(dir, `etc-${i}`, 'nats', 'nats.conf');
          await writeFile(file, local);
          servers.push(
            start(NATS_SERVER, ['--config', file, '-a', '127.0.0.1'], {
              env: { ...process.env, POD_NAME: `sluice-nats-${i}` },
            }),
          );
        }
        // Healthy without js-enabled-only: JetStream reached a meta leader, so the cluster formed.
        const jsz = await waitFor(
          async () => {
            const res = await fetch(`http://127.0.0.1:${ports[0]!.monitor}/jsz`);
            const body = (await res.json()) as { meta_cluster?: { cluster_size?: number; leader?: string } };
            return body.meta_cluster?.leader && body.meta_cluster.cluster_size === 3 ? body : undefined;
          },
          {
            timeoutMs: 30_000,
            what: `a JetStream meta leader of 3 servers (${servers.map((s) => s.output()).join('\n')})`,
          },
        );
        expect(jsz.meta_cluster?.leader).toMatch(/^sluice-nats-[012]$/);
        // A function account pushed to one server is known to the others (the full resolver).
        const as = async (i: number, creds: string) =>
          connect({
            servers: `nats://127.0.0.1:${ports[i]!.client}`,
            authenticator: credsAuthenticator(new TextEncoder().encode(creds)),
          });
        const system = await as(0, (await authority.systemCredentials()).creds);
        await pushAccount(system, await authority.functionAccountJwt('team-a/echo'));
        const admin = (await authority.functionAdminCredentials('team-a/echo')).creds;
        const fn = await waitFor(() => as(2, admin).catch(() => undefined), {
          timeoutMs: 15_000,
          what: 'the pushed account on another server of the cluster',
        });
        await Promise.all([system.close(), fn.close()]);
      } finally {
        await Promise.all(servers.map((server) => server.stop()));
      }
    });
  });
});
