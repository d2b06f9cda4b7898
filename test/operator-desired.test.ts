import { describe, expect, it } from 'vitest';
import { covers, parseQuantity } from '../operator/compare.ts';
import {
  type BuilderConfig,
  desiredDeployment,
  desiredHash,
  desiredIngress,
  desiredService,
  functionUrl,
  proxyArgs,
} from '../operator/desired.ts';
import { type FunctionView, functionView, InvalidSpecError } from '../operator/function.ts';
import { computeStatus, type Observed, sameStatus } from '../operator/status.ts';
import { loadProxyConfig } from '../proxy/config.ts';

const config: BuilderConfig = {
  proxyImage: 'sluice:test',
  nats: 'nats://nats.sluice-system:4222',
  ingressClass: '',
  gpuResourceName: 'nvidia.com/gpu',
  maxDrain: 120,
};

function fn(spec: Record<string, unknown>, name = 'echo', namespace = 'team-a'): FunctionView {
  return functionView({
    metadata: { name, namespace, uid: 'uid-1', generation: 3 },
    spec: { image: 'ghcr.io/acme/echo:1', ...spec },
  });
}

// biome-ignore lint/suspicious/noExplicitAny: reading into built JSON
const pod = (d: any) => d.spec.template.spec;
// biome-ignore lint/suspicious/noExplicitAny: reading into built JSON
const container = (d: any, name: string) => pod(d).containers.find((c: any) => c.name === name);

describe('desiredDeployment', () => {
  const cases: {
    name: string;
    spec: Record<string, unknown>;
    // biome-ignore lint/suspicious/noExplicitAny: reading into built JSON
    check: (d: any) => void;
  }[] = [
    {
      name: 'CPU function: no GPU limit, toleration or selector',
      spec: {},
      check: (d) => {
        expect(container(d, 'function').resources).toBeUndefined();
        expect(pod(d).tolerations).toBeUndefined();
        expect(pod(d).nodeSelector).toBeUndefined();
        // The count is the autoscaler's, added when applying and changed through /scale.
        expect(d.spec.replicas).toBeUndefined();
      },
    },
    {
      name: 'GPU count sets the limit of the resource name and tolerates its taint',
      spec: { gpu: { count: 2 }, resources: { requests: { cpu: 2, memory: '8Gi' } } },
      check: (d) => {
        expect(container(d, 'function').resources).toEqual({
          requests: { cpu: '2', memory: '8Gi' },
          limits: { 'nvidia.com/gpu': '2' },
        });
        expect(pod(d).tolerations).toEqual([
          { key: 'nvidia.com/gpu', operator: 'Exists', effect: 'NoSchedule' },
        ]);
      },
    },
    {
      name: 'gpu.type selects the product label, merged with the user selector',
      spec: { gpu: { count: 1, type: 'NVIDIA-H100-80GB-HBM3' }, nodeSelector: { zone: 'a' } },
      check: (d) =>
        expect(pod(d).nodeSelector).toEqual({ zone: 'a', 'nvidia.com/gpu.product': 'NVIDIA-H100-80GB-HBM3' }),
    },
    {
      name: 'another vendor: amd.com/gpu',
      spec: {
        gpu: { count: 1, resourceName: 'amd.com/gpu' },
        tolerations: [{ key: 'dedicated', operator: 'Exists' }],
      },
      check: (d) => {
        expect(container(d, 'function').resources.limits).toEqual({ 'amd.com/gpu': '1' });
        expect(pod(d).tolerations).toEqual([
          { key: 'dedicated', operator: 'Exists' },
          { key: 'amd.com/gpu', operator: 'Exists', effect: 'NoSchedule' },
        ]);
      },
    },
    {
      name: 'function container: image, command, args, env, port',
      spec: {
        command: ['python', '-m', 'app'],
        args: ['--port', '7000'],
        port: 7000,
        env: [
          { name: 'MODEL', value: 'llama' },
          { name: 'POD', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
        ],
      },
      check: (d) => {
        const c = container(d, 'function');
        expect(c.image).toBe('ghcr.io/acme/echo:1');
        expect(c.command).toEqual(['python', '-m', 'app']);
        expect(c.args).toEqual(['--port', '7000']);
        expect(c.env).toHaveLength(2);
        expect(c.ports).toEqual([{ name: 'function', containerPort: 7000, protocol: 'TCP' }]);
        expect(proxyArgs(fn({ port: 7000 }), config)).toContain('--upstream=http://127.0.0.1:7000');
      },
    },
    {
      name: 'hardened pod: non-root, seccomp, no privilege escalation, grace above the drain',
      spec: {},
      check: (d) => {
        expect(pod(d).securityContext).toEqual({
          runAsNonRoot: true,
          seccompProfile: { type: 'RuntimeDefault' },
        });
        for (const c of pod(d).containers) {
          expect(c.securityContext.allowPrivilegeEscalation).toBe(false);
          expect(c.securityContext.capabilities).toEqual({ drop: ['ALL'] });
        }
        // The drain follows maxDurationSeconds (3600) up to --max-drain (120), the grace above it.
        expect(container(d, 'sluice-proxy').args).toContain('--drain=120');
        expect(pod(d).terminationGracePeriodSeconds).toBe(130);
      },
    },
    {
      name: 'a stream may last maxDurationSeconds: the drain lets it finish (below --max-drain)',
      spec: { streaming: { maxDurationSeconds: 90, idleTimeoutSeconds: 60 } },
      check: (d) => {
        expect(container(d, 'sluice-proxy').args).toContain('--drain=90');
        expect(pod(d).terminationGracePeriodSeconds).toBe(100);
      },
    },
    {
      name: 'sidecar probes hit the admin port; replica name from the downward API',
      spec: {},
      check: (d) => {
        const p = container(d, 'sluice-proxy');
        expect(p.image).toBe('sluice:test');
        expect(p.command).toBeUndefined(); // the image's entrypoint is the sluice CLI
        expect(p.args[0]).toBe('proxy');
        expect(p.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'admin' });
        expect(p.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'admin' });
        expect(p.ports.find((x: { name: string }) => x.name === 'admin').containerPort).toBe(9090);
        expect(p.env).toEqual([
          { name: 'SLUICE_REPLICA', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
          { name: 'SLUICE_POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
          { name: 'NODE_OPTIONS', value: '--max-semi-space-size=1' },
        ]);
        // Activators reach the pod by IP (the kubelet expands $(SLUICE_POD_IP)).
        expect(p.args).toContain('--advertise=http://$(SLUICE_POD_IP):8080');
      },
    },
    {
      name: 'auth secret is mounted and passed to the proxy',
      spec: { auth: { secretName: 'echo-tokens' } },
      check: (d) => {
        expect(pod(d).volumes).toEqual([
          {
            name: 'auth-tokens',
            secret: { secretName: 'echo-tokens', items: [{ key: 'tokens', path: 'tokens' }] },
          },
        ]);
        expect(container(d, 'sluice-proxy').args).toContain('--auth-tokens-file=/etc/sluice/auth/tokens');
      },
    },
    {
      name: 'labels and selector name the function; owner is the StreamingFunction',
      spec: { scaling: { minReplicas: 3, maxReplicas: 5 } },
      check: (d) => {
        expect(d.spec.selector).toEqual({ matchLabels: { 'sluice.dev/function': 'echo' } });
        expect(d.spec.template.metadata.labels['app.kubernetes.io/name']).toBe('echo');
        expect(d.metadata.ownerReferences).toEqual([
          {
            apiVersion: 'sluice.dev/v1alpha1',
            kind: 'StreamingFunction',
            name: 'echo',
            uid: 'uid-1',
            controller: true,
            blockOwnerDeletion: true,
          },
        ]);
      },
    },
  ];
  for (const c of cases) it(c.name, () => c.check(desiredDeployment(fn(c.spec), config)));
});

describe('proxyArgs', () => {
  it('are flags `sluice proxy` itself accepts, with the values of the spec', () => {
    const f = fn({
      scaling: { concurrency: 4, queueTimeoutSeconds: 5 },
      streaming: { heartbeatSeconds: 7, idleTimeoutSeconds: 90, maxDurationSeconds: 900 },
      map: { path: '/batch', ackWaitSeconds: 30, maxDeliver: 5, resultRetentionSeconds: 120 },
      ingress: { path: '/llm/echo' },
      auth: { secretName: 'tokens' },
    });
    const parsed = loadProxyConfig(proxyArgs(f, config), {});
    expect(parsed).toMatchObject({
      upstream: 'http://127.0.0.1:9000',
      concurrency: 4,
      queueTimeout: 5,
      heartbeat: 7,
      idleTimeout: 90,
      maxDuration: 900,
      drain: 120,
      pathPrefix: '/llm/echo',
      nats: config.nats,
      function: 'team-a/echo',
      mapPath: '/batch',
      mapAckWait: 30,
      mapMaxDeliver: 5,
      mapRetention: 120,
      authTokensFile: '/etc/sluice/auth/tokens',
    });
    expect(parsed.admin.port).toBe(9090);
  });

  const table: [string, Record<string, unknown>, Partial<BuilderConfig>, string[], string[]][] = [
    ['default path prefix is /<name>', {}, {}, ['--path-prefix=/echo'], []],
    ['ingress path / strips nothing', { ingress: { path: '/' } }, {}, [], ['--path-prefix']],
    ['ingress off strips nothing', { ingress: { enabled: false } }, {}, [], ['--path-prefix']],
    [
      'map off: --nats for load reports, --map=false',
      { map: { enabled: false } },
      {},
      ['--map=false'],
      ['--map-path'],
    ],
    ['no NATS configured: no --nats', {}, { nats: '' }, [], ['--nats', '--map-path', '--advertise']],
    ['no auth: no tokens file', {}, {}, [], ['--auth-tokens-file']],
  ];
  for (const [name, spec, overrides, present, absent] of table) {
    it(name, () => {
      const args = proxyArgs(fn(spec), { ...config, ...overrides });
      for (const p of present) expect(args).toContain(p);
      for (const a of absent) expect(args.some((x) => x.startsWith(a))).toBe(false);
    });
  }
});

describe('desiredService and desiredIngress', () => {
  it('Service port 80 targets the proxy, selects the function', () => {
    const s = desiredService(fn({}));
    expect(s.spec.ports).toEqual([{ name: 'http', port: 80, targetPort: 'http', protocol: 'TCP' }]);
    expect(s.spec.selector).toEqual({ 'sluice.dev/function': 'echo' });
  });

  it('Traefik speaks h2c to every function (its HTTP/1.1 transport can cut a POST stream: golang/go#40747)', () => {
    for (const protocol of ['http', 'h2c'] as const) {
      expect(desiredService(fn({ protocol })).metadata!.annotations).toEqual({
        'traefik.ingress.kubernetes.io/service.serversscheme': 'h2c',
      });
    }
  });

  it('spec.protocol h2c: the Service port says kubernetes.io/h2c, ingress-nginx speaks gRPC to it', () => {
    expect(desiredService(fn({})).spec.ports[0]).not.toHaveProperty('appProtocol');
    const s = desiredService(fn({ protocol: 'h2c' }));
    expect(s.spec.ports).toEqual([
      { name: 'http', port: 80, targetPort: 'http', protocol: 'TCP', appProtocol: 'kubernetes.io/h2c' },
    ]);
    const i = desiredIngress(fn({ protocol: 'h2c' }), config)!;
    expect(i.metadata!.annotations!['nginx.ingress.kubernetes.io/backend-protocol']).toBe('GRPC');
    expect(desiredIngress(fn({}), config)!.metadata!.annotations).not.toHaveProperty(
      'nginx.ingress.kubernetes.io/backend-protocol',
    );
  });

  it('Ingress turns off buffering and outlasts the idle timeout', () => {
    const i = desiredIngress(fn({ streaming: { idleTimeoutSeconds: 300 } }), config)!;
    expect(i.metadata!.annotations).toMatchObject({
      'nginx.ingress.kubernetes.io/proxy-buffering': 'off',
      'nginx.ingress.kubernetes.io/proxy-request-buffering': 'off',
      'nginx.ingress.kubernetes.io/proxy-read-timeout': '330',
    });
    expect(i.spec.rules[0].http.paths[0]).toEqual({
      path: '/echo',
      pathType: 'Prefix',
      backend: { service: { name: 'echo', port: { name: 'http' } } },
    });
    expect(i.spec.ingressClassName).toBeUndefined();
  });

  const table: [
    string,
    Record<string, unknown>,
    Partial<BuilderConfig>,
    (i: ReturnType<typeof desiredIngress>) => void,
  ][] = [
    ['disabled → no Ingress', { ingress: { enabled: false } }, {}, (i) => expect(i).toBeUndefined()],
    [
      'class from spec wins',
      { ingress: { className: 'nginx' } },
      { ingressClass: 'traefik' },
      (i) => expect(i!.spec.ingressClassName).toBe('nginx'),
    ],
    [
      'class from operator default',
      {},
      { ingressClass: 'traefik' },
      (i) => expect(i!.spec.ingressClassName).toBe('traefik'),
    ],
    [
      'host and TLS',
      { ingress: { host: 'fn.example.com', tlsSecretName: 'fn-tls' } },
      {},
      (i) => {
        expect(i!.spec.rules[0].host).toBe('fn.example.com');
        expect(i!.spec.tls).toEqual([{ hosts: ['fn.example.com'], secretName: 'fn-tls' }]);
      },
    ],
  ];
  for (const [name, spec, overrides, check] of table)
    it(name, () => check(desiredIngress(fn(spec), { ...config, ...overrides })));

  it('url: ingress host, else ingress address, else the Service', () => {
    expect(functionUrl(fn({ ingress: { host: 'fn.example.com', tlsSecretName: 't' } }))).toBe(
      'https://fn.example.com/echo',
    );
    expect(functionUrl(fn({}), '10.0.0.7')).toBe('http://10.0.0.7/echo');
    expect(functionUrl(fn({}))).toBe('http://echo.team-a.svc');
  });
});

describe('functionView', () => {
  it('a spec the schema refuses is a terminal InvalidSpecError', () => {
    expect(() => functionView({ metadata: { name: 'x', namespace: 'y' }, spec: { image: 'a b' } })).toThrow(
      InvalidSpecError,
    );
  });

  it('the hash changes with the intent and only with it', () => {
    const a = desiredDeployment(fn({}), config);
    expect(desiredHash(a)).toBe(desiredHash(desiredDeployment(fn({}), config)));
    expect(desiredHash(a)).not.toBe(desiredHash(desiredDeployment(fn({ image: 'other:2' }), config)));
  });
});

describe('covers (desired ⊆ live)', () => {
  const table: [string, unknown, unknown, boolean][] = [
    ['server defaults added', { a: 1 }, { a: 1, b: 2 }, true],
    ['changed value', { a: 1 }, { a: 2 }, false],
    ['missing field', { a: { b: 1 } }, { a: {} }, false],
    ['quantity normalised', { cpu: '0.5' }, { cpu: '500m' }, true],
    ['memory 1Gi vs 1024Mi', { m: '1Gi' }, { m: '1024Mi' }, true],
    ['different quantity', { cpu: '1' }, { cpu: '500m' }, false],
    ['array length differs', { c: [1, 2] }, { c: [1] }, false],
    ['array element subset', { c: [{ n: 'x' }] }, { c: [{ n: 'x', d: 1 }] }, true],
    ['empty map vs absent (omitempty)', { s: {} }, {}, true],
    ['empty list vs absent', { s: [] }, {}, true],
    ['non-quantity strings differ', { image: 'a:1' }, { image: 'a:2' }, false],
    ['hand-removed container', { c: [{ n: 'f' }, { n: 'p' }] }, { c: [{ n: 'f' }] }, false],
  ];
  for (const [name, desired, live, expected] of table)
    it(name, () => expect(covers(desired, live)).toBe(expected));

  it('parses quantities', () => {
    expect(parseQuantity('1.5Gi')).toBe(1.5 * 2 ** 30);
    expect(parseQuantity('2e3')).toBe(2000);
    expect(parseQuantity('3E')).toBe(3e18);
    expect(parseQuantity('llama')).toBeUndefined();
  });
});

describe('computeStatus', () => {
  const base: Observed = {
    deployment: undefined,
    pods: [],
    ingress: undefined,
    gpuResourceName: 'nvidia.com/gpu',
  };
  const deployment = (ready: number, replicas = ready) => ({
    metadata: { generation: 2 },
    status: {
      observedGeneration: 2,
      replicas,
      readyReplicas: ready,
      updatedReplicas: replicas,
      conditions: [
        {
          type: 'Available',
          status: ready > 0 ? 'True' : 'False',
          reason: 'MinimumReplicasAvailable',
          message: '',
        },
      ],
    },
  });
  const unschedulable = (message: string) => ({
    metadata: { name: 'p' },
    spec: {},
    status: { conditions: [{ type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message }] },
  });
  const cond = (s: ReturnType<typeof computeStatus>, type: string) =>
    s.conditions!.find((c) => c.type === type)!;

  const table: [string, Record<string, unknown>, Partial<Observed>, Record<string, [string, string]>][] = [
    ['no deployment yet', {}, {}, { Ready: ['False', 'Pending'] }],
    [
      'all ready',
      {},
      { deployment: deployment(1), pods: [{ spec: { nodeName: 'n1' } }] },
      {
        Ready: ['True', 'Ready'],
        Available: ['True', 'MinimumReplicasAvailable'],
        Scheduled: ['True', 'Scheduled'],
      },
    ],
    [
      'no GPU left',
      { gpu: { count: 1 } },
      {
        deployment: deployment(0, 1),
        pods: [unschedulable('0/3 nodes are available: 3 Insufficient nvidia.com/gpu.')],
      },
      { Ready: ['False', 'InsufficientGPU'], Scheduled: ['False', 'InsufficientGPU'] },
    ],
    [
      'unschedulable for another reason',
      {},
      {
        deployment: deployment(0, 1),
        pods: [unschedulable("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity.")],
      },
      { Scheduled: ['False', 'Unschedulable'] },
    ],
    [
      'foreign object in the way',
      {},
      { notOwned: 'Deployment team-a/echo exists and is not owned' },
      { Ready: ['False', 'NotOwned'] },
    ],
    ['terminal failure', {}, { failure: 'forbidden' }, { Ready: ['False', 'ReconcileError'] }],
    [
      'scaled to zero',
      { scaling: { minReplicas: 0 } },
      { deployment: deployment(0) },
      { Ready: ['True', 'Ready'], Scheduled: ['True', 'NoReplicas'], Active: ['False', 'ScaledToZero'] },
    ],
    [
      'scaled to zero by the autoscaler (minReplicas 0, max 3)',
      { scaling: { minReplicas: 0, maxReplicas: 3 } },
      { deployment: deployment(0), scale: { desired: 0, inFlight: 0 } },
      { Ready: ['True', 'Ready'], Active: ['False', 'ScaledToZero'] },
    ],
    [
      'a held request started the first replica: not ready yet, activating',
      { scaling: { minReplicas: 0, maxReplicas: 3 } },
      { deployment: deployment(0, 1), scale: { desired: 1, inFlight: 0 } },
      { Ready: ['False', 'ReplicasNotReady'], Active: ['Unknown', 'Activating'] },
    ],
    [
      'the autoscaler added replicas: ready once all it wants are',
      { scaling: { minReplicas: 0, maxReplicas: 3 } },
      { deployment: deployment(3), scale: { desired: 3, inFlight: 17 } },
      { Ready: ['True', 'Ready'], Active: ['True', 'Serving'] },
    ],
  ];
  for (const [name, spec, observed, expected] of table) {
    it(name, () => {
      const s = computeStatus(fn(spec), { ...base, ...observed });
      for (const [type, [status, reason]] of Object.entries(expected)) {
        expect([cond(s, type).status, cond(s, type).reason], type).toEqual([status, reason]);
      }
      expect(s.observedGeneration).toBe(3);
      expect(s.selector).toBe('sluice.dev/function=echo');
    });
  }

  it('desiredReplicas and inFlight come from the autoscaler; without one, desired is minReplicas', () => {
    const scaled = computeStatus(fn({ scaling: { minReplicas: 1, maxReplicas: 4 } }), {
      ...base,
      deployment: deployment(3),
      scale: { desired: 3, inFlight: 17 },
    });
    expect([scaled.desiredReplicas, scaled.inFlight]).toEqual([3, 17]);
    const fixed = computeStatus(fn({ scaling: { minReplicas: 2, maxReplicas: 2 } }), base);
    expect([fixed.desiredReplicas, fixed.inFlight]).toEqual([2, undefined]);
  });

  it('recomputing an unchanged world gives the same status (no write)', () => {
    const f = fn({});
    const first = computeStatus(f, { ...base, deployment: deployment(1) }, new Date('2026-01-01T00:00:00Z'));
    const again = computeStatus(
      { ...f, status: first },
      { ...base, deployment: deployment(1) },
      new Date('2026-01-02T00:00:00Z'),
    );
    expect(sameStatus(first, again)).toBe(true);
    const changed = computeStatus(
      { ...f, status: first },
      { ...base, deployment: deployment(0, 1) },
      new Date('2026-01-02T00:00:00Z'),
    );
    expect(sameStatus(first, changed)).toBe(false);
    expect(cond(changed, 'Ready').lastTransitionTime).toBe('2026-01-02T00:00:00Z');
  });
});
