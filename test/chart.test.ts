// The chart without a cluster: lint, every feature flag rendered, bad values refused by
// values.schema.json naming the field, the operator accepting the flags the chart passes, and
// the NATS configuration accepted and served by a real nats-server.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isMap, isPair, isScalar, parseDocument, type YAMLMap } from 'yaml';
import { freePort, waitFor } from '../common/net.ts';
import { type Started, start } from '../harness/process.ts';
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

  it('installs by default the CRD (kept on uninstall), the operator, RBAC, metrics Service and NATS', () => {
    const kinds = defaults.map((m) => `${m.kind}/${m.metadata.name}`).sort();
    expect(kinds).toEqual(
      [
        'ClusterRole/sluice-operator',
        'ClusterRoleBinding/sluice-operator',
        'ConfigMap/sluice-nats',
        'CustomResourceDefinition/streamingfunctions.sluice.dev',
        'Deployment/sluice-operator',
        'PodDisruptionBudget/sluice-operator',
        'Role/sluice-leader-election',
        'RoleBinding/sluice-leader-election',
        'Service/sluice-nats',
        'Service/sluice-nats-headless',
        'Service/sluice-operator-metrics',
        'ServiceAccount/sluice',
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
        expect(find(m, 'Deployment')!.spec.template.spec.containers[0].image).toBe(
          'ghcr.io/sluice-dev/sluice:0.1.0',
        );
      },
    },
    {
      name: 'operator.watchNamespace narrows RBAC to a Role in that namespace',
      set: ['operator.watchNamespace=team-a'],
      check: (m) => {
        expect(find(m, 'ClusterRole')).toBeUndefined();
        expect(find(m, 'Role', '-operator')!.metadata.namespace).toBe('team-a');
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
        expect(find(m, 'Deployment')!.spec.template.spec.serviceAccountName).toBe('ops');
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
    { set: ['operator.defaults.drainSeconds=-5'], names: /\/operator\/defaults\/drainSeconds/ },
    { set: ['operator.replica=2'], names: /\/operator.*'replica' not allowed/ },
    { set: ['image.pullPolicy=Sometimes'], names: /\/image\/pullPolicy/ },
    { set: ['nats.url=http://nats:4222', 'nats.enabled=false'], names: /\/nats\/url/ },
    { set: ['nats.jetstream.maxFileStore=lots'], names: /\/nats\/jetstream\/maxFileStore/ },
    { set: ['nats.persistence.accessModes={ReadMostly}'], names: /\/nats\/persistence\/accessModes/ },
    { set: ['crds.keep=maybe'], names: /\/crds\/keep/ },
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
      ['nats.enabled=false', 'nats.url=tls://a:4222'],
      ['operator.watchNamespace=team-a'],
    ]) {
      const args = operatorArgs(await render(set.flatMap((s) => ['--set', s])));
      expect(args[0]).toBe('operator');
      const config = loadOperatorConfig(args.slice(1), { POD_NAME: 'op-0', POD_NAMESPACE: 'sluice-system' });
      expect(config.leaderElectionNamespace).toBe('sluice-system');
      expect(config.identity).toBe('op-0');
      expect(config.metrics.port).toBe(8081);
      expect(config.proxyImage).toBe('ghcr.io/sluice-dev/sluice:0.1.0');
      expect(config.nats).toBe(flag(args, 'nats') ?? '');
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

  describe('NATS configuration', () => {
    let dir: string;
    let nats: Started | undefined;
    afterEach(async () => {
      await nats?.stop();
      await rm(dir, { recursive: true, force: true });
    });

    it('is accepted by a real nats-server, which serves JetStream with it', async () => {
      dir = await mkdtemp(join(tmpdir(), 'sluice-chart-nats-'));
      const config = find(defaults, 'ConfigMap', '-nats')!.data['nats.conf'] as string;
      // The same file with this machine's ports and a temp store instead of the pod's /data volume.
      const [client, monitor] = [await freePort(), await freePort()];
      const local = config
        .replace(/^port: 4222$/m, `port: ${client}`)
        .replace(/^http_port: 8222$/m, `http_port: ${monitor}`)
        .replace('store_dir: /data', `store_dir: ${join(dir, 'js')}`);
      expect(local).not.toBe(config);
      const file = join(dir, 'nats.conf');
      await writeFile(file, local);
      nats = start('nats-server', ['--config', file, '-a', '127.0.0.1'], {
        env: { ...process.env, POD_NAME: 'sluice-nats-0' },
      });
      const health = await waitFor(
        async () => {
          const res = await fetch(`http://127.0.0.1:${monitor}/healthz?js-enabled-only=true`);
          return res.ok ? res : undefined;
        },
        { timeoutMs: 15_000, what: `nats-server JetStream health (${nats.output()})` },
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
    });
  });
});
