// Reconciler outcome tables, as Knative's table_test.go: given these objects, expect these writes,
// events and status. The reconciler's I/O goes through ReconcilerIO and MapStreams; here a fake of
// each records what it is asked. test/operator.test.ts and test/operator-streams.test.ts run the
// same reconciler against a real API server and nats-server.
import { describe, expect, it } from 'vitest';
import { createLogger } from '../common/log.ts';
import type { BuilderConfig } from '../operator/desired.ts';
import { type FunctionView, InvalidSpecError } from '../operator/function.ts';
import { KubeApiError, type KubeObject } from '../operator/kube.ts';
import { createOperatorMetrics } from '../operator/metrics.ts';
import { Reconciler, STREAMS_FINALIZER } from '../operator/reconciler.ts';
import type {
  ActivatorEndpoints,
  MapStreams,
  OwnedKind,
  ReconcilerIO,
  ScalePlan,
  Scaling,
} from '../operator/reconciler-io.ts';
import { StreamError } from '../operator/streams.ts';

const NS = 'team-a';
const NAME = 'echo';
const KEY = `${NS}/${NAME}`;
const UID = 'uid-1';
const config: BuilderConfig = {
  proxyImage: 'sluice:test',
  nats: 'nats://nats:4222',
  ingressClass: '',
  gpuResourceName: 'nvidia.com/gpu',
  maxDrain: 3600,
};

function sfn(spec: Record<string, unknown> = {}, metadata: Record<string, unknown> = {}): KubeObject {
  return {
    apiVersion: 'sluice.dev/v1alpha1',
    kind: 'StreamingFunction',
    metadata: { name: NAME, namespace: NS, uid: UID, generation: 1, resourceVersion: '7', ...metadata },
    spec: { image: 'ghcr.io/acme/echo:1', ...spec },
  };
}

/** An object of `kind` named like the function, owned by it (or by `owner`), labelled as Sluice's. */
function owned(kind: string, owner: string | undefined = UID): KubeObject {
  return {
    kind,
    metadata: {
      name: NAME,
      namespace: NS,
      uid: `${kind}-uid`,
      labels: { 'app.kubernetes.io/managed-by': 'sluice-operator' },
      ownerReferences: owner
        ? [
            {
              apiVersion: 'sluice.dev/v1alpha1',
              kind: 'StreamingFunction',
              name: NAME,
              uid: owner,
              controller: true,
            },
          ]
        : [],
    },
  };
}

const apiError = (status: number, reason: string) =>
  new KubeApiError('PATCH', '/apis/...', status, reason, `${reason} on purpose`);

/** The world a table row starts from, and everything the reconciler asked of it. */
class FakeWorld implements ReconcilerIO, MapStreams {
  fn: KubeObject | undefined;
  /** Objects by kind; `labelled` ones are also in the operator's label-selected cache. */
  objects = new Map<string, { object: KubeObject; labelled: boolean }>();
  failApply: Map<string, KubeApiError> = new Map();
  natsDown = false;
  streamsWrite = true;
  writes: string[] = [];
  events: string[] = [];
  status: Record<string, unknown> | undefined;
  activatorEndpoints: ActivatorEndpoints | undefined;

  constructor(fn: KubeObject | undefined, objects: KubeObject[] = [], foreign: KubeObject[] = []) {
    this.fn = fn;
    for (const o of objects) this.objects.set(o.kind!, { object: o, labelled: true });
    for (const o of foreign) this.objects.set(o.kind!, { object: o, labelled: false });
  }

  function(namespace: string, name: string) {
    return this.fn && namespace === NS && name === NAME ? this.fn : undefined;
  }
  async live(kind: OwnedKind) {
    return this.objects.get(kind.kind)?.object;
  }
  labelled(kind: OwnedKind) {
    const entry = this.objects.get(kind.kind);
    return entry?.labelled ? entry.object : undefined;
  }
  /** The function's pods, as the pod informer has them. */
  podsLeft: KubeObject[] = [];
  pods() {
    return this.podsLeft;
  }
  /** Ready endpoints of the Service; unset: as many as the Deployment has ready replicas. */
  serviceReady: number | undefined;
  serviceEndpointsReady() {
    return this.serviceReady ?? this.objects.get('Deployment')?.object.status?.readyReplicas ?? 0;
  }
  async apply(kind: OwnedKind, object: KubeObject) {
    const failure = this.failApply.get(kind.kind);
    if (failure) throw failure;
    this.writes.push(`apply ${kind.kind}`);
    const stored = { ...object, kind: kind.kind, metadata: { ...object.metadata, uid: `${kind.kind}-uid` } };
    this.objects.set(kind.kind, { object: stored, labelled: true });
    return stored;
  }
  async scale(_ns: string, _name: string, replicas: number) {
    const d = this.objects.get('Deployment')!.object;
    this.writes.push(`scale Deployment ${d.spec.replicas} -> ${replicas}`);
    d.spec = { ...d.spec, replicas };
  }
  async patchPod(_ns: string, name: string, patch: unknown) {
    const annotations = (patch as { metadata: { annotations: Record<string, string> } }).metadata.annotations;
    this.writes.push(
      `pod ${name} deletion-cost ${annotations['controller.kubernetes.io/pod-deletion-cost']}`,
    );
  }
  activator() {
    return this.activatorEndpoints;
  }
  async delete(kind: OwnedKind) {
    this.writes.push(`delete ${kind.kind}`);
    this.objects.delete(kind.kind);
  }
  async patchFunction(_ns: string, _name: string, patch: unknown) {
    const finalizers = (patch as { metadata: { finalizers: string[] } }).metadata.finalizers;
    this.writes.push(`finalizers [${finalizers.join(', ')}]`);
    this.fn = { ...this.fn, metadata: { ...this.fn?.metadata, finalizers } };
  }
  async patchStatus(_ns: string, _name: string, status: unknown) {
    this.status = status as Record<string, unknown>;
    const ready = (this.status.conditions as { type: string; status: string; reason: string }[]).find(
      (c) => c.type === 'Ready',
    )!;
    this.writes.push(`status Ready=${ready.status} ${ready.reason}`);
    this.fn = { ...this.fn, status };
  }
  event(_fn: FunctionView, type: string, reason: string, message: string) {
    this.events.push(`${type} ${reason}: ${message}`);
  }
  async ensure() {
    if (this.natsDown) throw new StreamError('NATS is down', new Error('connection refused'));
    this.writes.push('ensure streams');
    return this.streamsWrite;
  }
  async remove() {
    if (this.natsDown) throw new StreamError('NATS is down', new Error('connection refused'));
    this.writes.push('remove streams');
  }
}

/** The autoscaler's answer, fixed for a row. */
class FixedScaling implements Scaling {
  readonly answer: Partial<ScalePlan> & { replicas: number };
  constructor(answer: Partial<ScalePlan> & { replicas: number }) {
    this.answer = answer;
  }
  plan(): ScalePlan {
    return { inFlight: 0, why: 'burst: load 14', podLoad: new Map(), ...this.answer };
  }
}

function reconciler(world: FakeWorld, withStreams = true, scaling?: Scaling) {
  const metrics = createOperatorMetrics({
    queueDepth: () => 0,
    leader: () => true,
    apiRequests: () => new Map(),
  });
  const r = new Reconciler({
    io: world,
    streams: withStreams ? world : undefined,
    scaling,
    config,
    metrics,
    log: createLogger('operator', 'silent'),
  });
  return { reconcile: () => r.reconcile(KEY), metrics };
}

interface Row {
  name: string;
  world: () => FakeWorld;
  /** No --nats: the operator manages no streams. */
  noStreams?: boolean;
  /** What the autoscaler wants (none: no autoscaler, minReplicas). */
  scaling?: FixedScaling;
  writes: string[];
  events: string[];
  /** The reconcile's error (retried by the queue), if any. */
  error?: RegExp;
}

const created = `Normal Created: created Deployment, Service, Ingress ${KEY}`;

const table: Row[] = [
  {
    name: 'new function with map: finalizer first, then streams, owned objects, status',
    world: () => new FakeWorld(sfn()),
    writes: [
      `finalizers [${STREAMS_FINALIZER}]`,
      'ensure streams',
      'apply Deployment',
      'apply Service',
      'apply Ingress',
      'status Ready=False ReplicasNotReady',
    ],
    events: ['Normal StreamsApplied: created or updated the map streams', created],
  },
  {
    name: 'no --nats: no finalizer and no streams, even with map on',
    world: () => new FakeWorld(sfn()),
    noStreams: true,
    writes: ['apply Deployment', 'apply Service', 'apply Ingress', 'status Ready=False ReplicasNotReady'],
    events: [created],
  },
  {
    name: 'a Service of the same name that the function does not own: nothing applied, NotOwned',
    world: () => new FakeWorld(sfn({ map: { enabled: false } }), [], [owned('Service', 'someone-else')]),
    writes: ['status Ready=False NotOwned'],
    events: [
      `Warning NotOwned: Service ${KEY} exists and is not owned by this StreamingFunction; it was left as it is`,
    ],
  },
  {
    name: 'ingress turned off: the owned Ingress is deleted',
    world: () =>
      new FakeWorld(sfn({ map: { enabled: false }, ingress: { enabled: false } }), [owned('Ingress')]),
    writes: ['apply Deployment', 'apply Service', 'delete Ingress', 'status Ready=False ReplicasNotReady'],
    events: [
      `Normal Deleted: deleted Ingress ${KEY}, no longer wanted`,
      `Normal Created: created Deployment, Service ${KEY}`,
    ],
  },
  {
    name: 'map turned off: streams removed, finalizer dropped',
    world: () => new FakeWorld(sfn({ map: { enabled: false } }, { finalizers: [STREAMS_FINALIZER] })),
    writes: [
      'remove streams',
      'finalizers []',
      'apply Deployment',
      'apply Service',
      'apply Ingress',
      'status Ready=False ReplicasNotReady',
    ],
    events: [created],
  },
  {
    name: 'deleted with the finalizer: streams removed, then the finalizer; no status',
    world: () =>
      new FakeWorld(
        sfn({}, { deletionTimestamp: '2025-01-01T00:00:00Z', finalizers: ['other', STREAMS_FINALIZER] }),
      ),
    writes: ['remove streams', 'finalizers [other]'],
    events: ['Normal StreamsDeleted: deleted the map streams'],
  },
  {
    name: 'deleted while its pods run: the Deployment goes to zero first; streams and finalizer wait',
    world: () => {
      const fn = sfn({}, { deletionTimestamp: '2025-01-01T00:00:00Z', finalizers: [STREAMS_FINALIZER] });
      const world = new FakeWorld(fn, [{ ...owned('Deployment'), spec: { replicas: 2 } }]);
      world.podsLeft = [{ metadata: { name: `${NAME}-abc`, namespace: NS } }];
      return world;
    },
    writes: ['scale Deployment 2 -> 0'],
    events: ['Normal StoppingPods: the pods stop before the map streams are deleted'],
  },
  {
    name: 'deleted while NATS fails: the finalizer stays and the reconcile is retried',
    world: () => {
      const world = new FakeWorld(
        sfn({}, { deletionTimestamp: '2025-01-01T00:00:00Z', finalizers: [STREAMS_FINALIZER] }),
      );
      world.natsDown = true;
      return world;
    },
    writes: [],
    events: [],
    error: /NATS is down/,
  },
  {
    name: 'deleted without the finalizer: nothing to do',
    world: () => new FakeWorld(sfn({}, { deletionTimestamp: '2025-01-01T00:00:00Z' })),
    writes: [],
    events: [],
  },
  {
    name: 'NATS down while streams are wanted: retried, nothing applied',
    world: () => {
      const world = new FakeWorld(sfn({}, { finalizers: [STREAMS_FINALIZER] }));
      world.natsDown = true;
      return world;
    },
    writes: [],
    events: ['Warning ReconcileFailed: NATS is down'],
    error: /NATS is down/,
  },
  ...[
    [403, 'Forbidden'],
    [422, 'Invalid'],
  ].map(
    ([status, reason]): Row => ({
      name: `apply refused with ${status} (terminal): a condition, no retry`,
      world: () => {
        const world = new FakeWorld(sfn({ map: { enabled: false } }));
        world.failApply.set('Deployment', apiError(status as number, reason as string));
        return world;
      },
      writes: ['apply Service', 'apply Ingress', 'status Ready=False ReconcileError'],
      events: [
        `Normal Created: created Service, Ingress ${KEY}`,
        `Warning ReconcileFailed: PATCH /apis/...: ${status} ${reason}: ${reason} on purpose`,
      ],
    }),
  ),
  {
    name: 'apply fails with 500 (retryable): retried, no status',
    world: () => {
      const world = new FakeWorld(sfn({ map: { enabled: false } }));
      world.failApply.set('Deployment', apiError(500, 'InternalError'));
      return world;
    },
    writes: ['apply Service', 'apply Ingress'],
    events: [
      `Normal Created: created Service, Ingress ${KEY}`,
      'Warning ReconcileFailed: PATCH /apis/...: 500 InternalError: InternalError on purpose',
    ],
    error: /500 InternalError/,
  },
  {
    name: 'a stored spec the schema refuses: an InvalidSpec condition, not retried',
    world: () => new FakeWorld(sfn({ port: 8080 })),
    writes: ['status Ready=False InvalidSpec'],
    events: [],
    error: /spec of team-a\/echo is invalid/,
  },
  {
    name: 'function gone: nothing',
    world: () => new FakeWorld(undefined),
    writes: [],
    events: [],
  },
];

describe('Reconciler outcome tables', () => {
  for (const row of table) {
    it(row.name, async () => {
      const world = row.world();
      const outcome = await reconciler(world, !row.noStreams, row.scaling)
        .reconcile()
        .then(
          () => undefined,
          (err: unknown) => err,
        );
      // Applies run in parallel: their order is not part of the outcome.
      expect([...world.writes].sort()).toEqual([...row.writes].sort());
      expect(world.events).toEqual(row.events);
      if (row.error) expect(String(outcome)).toMatch(row.error);
      else expect(outcome).toBeUndefined();
    });
  }

  it('writes come in phase order: finalizer, streams, owned objects, status', async () => {
    const world = new FakeWorld(sfn());
    await reconciler(world).reconcile();
    expect(world.writes.slice(0, 2)).toEqual([`finalizers [${STREAMS_FINALIZER}]`, 'ensure streams']);
    expect(world.writes.at(-1)).toMatch(/^status /);
  });

  it('steady state: a second pass over what the first wrote writes nothing', async () => {
    const world = new FakeWorld(sfn());
    const { reconcile } = reconciler(world);
    await reconcile();
    world.writes = [];
    world.events = [];
    world.streamsWrite = false;
    await reconcile();
    // StreamManager remembers what it ensured; the fake is asked again but reports no write.
    expect(world.writes).toEqual(['ensure streams']);
    expect(world.events).toEqual([]);
  });

  it.each([
    ['a terminal apply failure', (w: FakeWorld) => w.failApply.set('Deployment', apiError(403, 'Forbidden'))],
    ['an invalid stored spec', (w: FakeWorld) => (w.fn = sfn({ port: 8080 }))],
  ])(
    'no hot loop after %s: the next pass writes no status and the error is not retried',
    async (_what, breakIt) => {
      const world = new FakeWorld(sfn({ map: { enabled: false } }));
      breakIt(world);
      const { reconcile, metrics } = reconciler(world);
      const first = await reconcile().catch((err: unknown) => err);
      expect((first as { retryable?: boolean } | undefined)?.retryable ?? false).toBe(false);
      if (first) expect(first).toBeInstanceOf(InvalidSpecError);
      else expect((await metrics.errors.get()).values).toEqual([{ value: 1, labels: { kind: 'terminal' } }]);
      world.writes = [];
      await reconcile().catch(() => {});
      expect(world.writes.filter((w) => w.startsWith('status'))).toEqual([]);
    },
  );
});

describe('Reconciler outcome tables: the scaling phase', () => {
  const ACTIVATOR: ActivatorEndpoints = { addresses: ['10.0.9.1', '10.0.9.2'], port: 8080 };
  const pod = (name: string, cost?: string): KubeObject => ({
    metadata: {
      name,
      namespace: NS,
      annotations: cost === undefined ? undefined : { 'controller.kubernetes.io/pod-deletion-cost': cost },
    },
  });

  /** A function whose objects the operator already applied; the Deployment at `replicas`, `ready` of them ready. */
  async function settled(spec: Record<string, unknown>, replicas: number, ready: number): Promise<FakeWorld> {
    const world = new FakeWorld(sfn({ map: { enabled: false }, ...spec }));
    await reconciler(world, false, new FixedScaling({ replicas })).reconcile();
    const d = world.objects.get('Deployment')!.object;
    d.status = { replicas, readyReplicas: ready, updatedReplicas: replicas, observedGeneration: 1 };
    world.writes = [];
    world.events = [];
    return world;
  }

  interface ScaleRow {
    name: string;
    world: () => Promise<FakeWorld>;
    scaling?: FixedScaling;
    writes: string[];
    events: string[];
    /** status.desiredReplicas written, if a status write is expected. */
    desired?: number;
  }

  /** At one replica with the activator in the path, then the Deployment counts it ready; the Service's slices list `serviceReady` (unset: as many). */
  const firstReplicaReady = async (serviceReady?: number) => {
    const world = await settled({ scaling: { minReplicas: 0, maxReplicas: 3 } }, 1, 0);
    world.activatorEndpoints = ACTIVATOR;
    await reconciler(world, false, new FixedScaling({ replicas: 1 })).reconcile();
    world.objects.get('Deployment')!.object.status.readyReplicas = 1;
    world.serviceReady = serviceReady;
    world.writes = [];
    return world;
  };
  const rows: ScaleRow[] = [
    {
      name: 'the autoscaler wants more: /scale 1 -> 3 and a Scaled event',
      world: () => settled({ scaling: { maxReplicas: 5 } }, 1, 1),
      scaling: new FixedScaling({ replicas: 3, inFlight: 14 }),
      writes: ['scale Deployment 1 -> 3', 'status Ready=False ReplicasNotReady'],
      events: ['Normal Scaled: scaled from 1 to 3 replicas (burst: load 14)'],
      desired: 3,
    },
    {
      name: 'the autoscaler wants fewer: each pod costs its streams first (idlest go), then /scale 3 -> 1',
      world: async () => {
        const world = await settled({ scaling: { maxReplicas: 5 } }, 3, 3);
        world.podsLeft = [pod('echo-a', '4'), pod('echo-b'), pod('echo-c', '9')];
        return world;
      },
      scaling: new FixedScaling({
        replicas: 1,
        why: 'idle: load 4',
        podLoad: new Map([
          ['echo-a', 4],
          ['echo-b', 0],
        ]),
      }),
      // echo-a already costs 4; echo-c never reported (starting): 0, so it goes before a serving pod.
      writes: [
        'pod echo-b deletion-cost 0',
        'pod echo-c deletion-cost 0',
        'scale Deployment 3 -> 1',
        'status Ready=False ReplicasNotReady',
      ],
      events: ['Normal Scaled: scaled from 3 to 1 replicas (idle: load 4)'],
      desired: 1,
    },
    {
      name: 'the count is already there: no scale write, no event',
      world: () => settled({ scaling: { maxReplicas: 5 } }, 2, 2),
      scaling: new FixedScaling({ replicas: 2 }),
      writes: ['status Ready=True Ready'],
      events: [],
      desired: 2,
    },
    {
      name: 'no autoscaler: kubectl scale (minReplicas 2) is written through /scale',
      world: () => settled({ scaling: { minReplicas: 2, maxReplicas: 2 } }, 1, 1),
      writes: ['scale Deployment 1 -> 2', 'status Ready=False ReplicasNotReady'],
      events: ['Normal Scaled: scaled from 1 to 2 replicas (spec.scaling.minReplicas)'],
      desired: 2,
    },
    {
      name: 'new function at minReplicas 0: Deployment created with 0 replicas, the activator in its path',
      world: async () => {
        const world = new FakeWorld(
          sfn({ map: { enabled: false }, scaling: { minReplicas: 0, maxReplicas: 3 } }),
        );
        world.activatorEndpoints = ACTIVATOR;
        return world;
      },
      scaling: new FixedScaling({ replicas: 0 }),
      writes: [
        'apply Deployment',
        'apply Service',
        'apply Ingress',
        'apply EndpointSlice',
        'status Ready=True Ready',
      ],
      events: [`Normal Created: created Deployment, Service, Ingress ${KEY}`],
      desired: 0,
    },
    {
      name: 'a held request: /scale 0 -> 1 while the activator stays in the path (nothing ready yet)',
      world: async () => {
        const world = await settled({ scaling: { minReplicas: 0, maxReplicas: 3 } }, 0, 0);
        world.activatorEndpoints = ACTIVATOR;
        return world;
      },
      scaling: new FixedScaling({ replicas: 1, why: 'burst: load 1 (held 1)' }),
      writes: ['apply EndpointSlice', 'scale Deployment 0 -> 1', 'status Ready=False ReplicasNotReady'],
      events: ['Normal Scaled: scaled from 0 to 1 replicas (burst: load 1 (held 1))'],
      desired: 1,
    },
    {
      name: 'the first replica is ready: the activator leaves the path (its slice emptied)',
      world: () => firstReplicaReady(),
      scaling: new FixedScaling({ replicas: 1 }),
      writes: ['apply EndpointSlice', 'status Ready=True Ready'],
      events: [],
      desired: 1,
    },
    {
      name: 'a replica is ready but not yet among the Service endpoints: the activator stays in the path',
      world: () => firstReplicaReady(0),
      scaling: new FixedScaling({ replicas: 1 }),
      writes: ['status Ready=True Ready'],
      events: [],
      desired: 1,
    },
    {
      name: 'down to zero while pods serve: the activator joins the path before /scale 2 -> 0',
      world: async () => {
        const world = await settled({ scaling: { minReplicas: 0, maxReplicas: 3 } }, 2, 2);
        world.activatorEndpoints = ACTIVATOR;
        return world;
      },
      scaling: new FixedScaling({ replicas: 0, why: 'idle: load 0' }),
      writes: ['apply EndpointSlice', 'scale Deployment 2 -> 0', 'status Ready=False ReplicasNotReady'],
      events: ['Normal Scaled: scaled from 2 to 0 replicas (idle: load 0)'],
      desired: 0,
    },
  ];

  for (const row of rows) {
    it(row.name, async () => {
      const world = await row.world();
      await reconciler(world, false, row.scaling).reconcile();
      // Phases run in order: the activator path, then deletion costs, then the scale.
      expect(world.writes).toEqual(
        row.writes[0]?.startsWith('apply Deployment') ? expect.arrayContaining(row.writes) : row.writes,
      );
      expect(world.writes).toHaveLength(row.writes.length);
      expect(world.events).toEqual(row.events);
      if (row.desired !== undefined) expect(world.status?.desiredReplicas).toBe(row.desired);
    });
  }

  it('a Deployment is created with the count decided for the pass', async () => {
    const world = new FakeWorld(
      sfn({ map: { enabled: false }, scaling: { minReplicas: 0, maxReplicas: 3 } }),
    );
    await reconciler(world, false, new FixedScaling({ replicas: 0 })).reconcile();
    expect(world.objects.get('Deployment')!.object.spec.replicas).toBe(0);
  });

  it('the activator slice lists the activator pods under the Service port name', async () => {
    const world = new FakeWorld(
      sfn({ map: { enabled: false }, scaling: { minReplicas: 0, maxReplicas: 3 } }),
    );
    world.activatorEndpoints = ACTIVATOR;
    await reconciler(world, false, new FixedScaling({ replicas: 0 })).reconcile();
    const slice = world.objects.get('EndpointSlice')!.object;
    expect(slice.metadata?.name).toBe('echo-activator');
    expect(slice.metadata?.labels?.['kubernetes.io/service-name']).toBe('echo');
    expect(slice.ports).toEqual([{ name: 'http', port: 8080, protocol: 'TCP' }]);
    expect(slice.endpoints.map((e: { addresses: string[] }) => e.addresses[0])).toEqual(ACTIVATOR.addresses);
  });
});
