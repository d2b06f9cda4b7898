import type { Registry } from 'prom-client';
import { API_VERSION, KIND, PLURAL } from '../api/v1alpha1/schema.ts';
import type { Logger } from '../common/log.ts';
import { Autoscaler } from './autoscaler.ts';
import { ClusterIO } from './cluster-io.ts';
import { type BuilderConfig, FIELD_MANAGER, FUNCTION_LABEL } from './desired.ts';
import { Informer } from './informer.ts';
import { type KubeClient, type KubeObject, resourcePath } from './kube.ts';
import type { LoadSignal } from './load-signal.ts';
import type { OperatorMetrics } from './metrics.ts';
import { Reconciler } from './reconciler.ts';
import {
  type ActivatorEndpoints,
  ENDPOINT_SLICE,
  type MapStreams,
  type NatsCredentials,
  ownedKinds,
} from './reconciler-io.ts';
import { DELETION_COST_ANNOTATION } from './scaling.ts';

const MANAGED_SELECTOR = `app.kubernetes.io/managed-by=${FIELD_MANAGER}`;

/** Status needs a pod's identity, node and conditions, scaling its deletion cost; a full pod is many times larger. */
function slimPod(pod: KubeObject): KubeObject {
  const { name, namespace, uid, resourceVersion, labels, ownerReferences, deletionTimestamp } =
    pod.metadata ?? {};
  const cost = pod.metadata?.annotations?.[DELETION_COST_ANNOTATION];
  const annotations = cost === undefined ? undefined : { [DELETION_COST_ANNOTATION]: cost };
  return {
    metadata: {
      name,
      namespace,
      uid,
      resourceVersion,
      labels,
      annotations,
      ownerReferences,
      deletionTimestamp,
    },
    spec: { nodeName: pod.spec?.nodeName },
    status: { conditions: pod.status?.conditions },
  };
}

export interface ControllerOptions {
  client: KubeClient;
  config: BuilderConfig & { namespace: string; activator: string };
  /** The load signal (with --nats): functions follow their load; without it they run minReplicas. */
  autoscale?: { signal: LoadSignal; registry: Registry };
  streams: MapStreams | undefined;
  credentials?: NatsCredentials;
  metrics: OperatorMetrics;
  log: Logger;
  /** Called for every key that needs a reconcile; `urgent` ones (a scale-up) go first. */
  enqueue: (key: string, urgent?: boolean) => void;
  /** Called for a key to reconcile again later (credentials to renew). */
  enqueueAfter?: (key: string, ms: number) => void;
}

/**
 * Keeps the informer caches the reconciler reads (functions, the objects it owns, their pods),
 * turns their changes into work-queue keys, and hands each key to the Reconciler, whose I/O goes
 * through ClusterIO (the caches and the KubeClient).
 */
export class Controller {
  readonly functions: Informer<KubeObject>;
  readonly owned: Map<string, Informer<KubeObject>>;
  readonly pods: Informer<KubeObject>;
  /** The activator's own EndpointSlices (with --activator). */
  readonly activatorSlices: Informer<KubeObject> | undefined;
  readonly autoscaler: Autoscaler | undefined;
  private readonly reconciler: Reconciler;

  constructor(options: ControllerOptions) {
    const { client, log, config } = options;
    const ns = config.namespace;
    const enqueueFunction = (obj: KubeObject) =>
      options.enqueue(`${obj.metadata?.namespace}/${obj.metadata?.name}`);
    // An owned object or pod changed: reconcile the function it belongs to.
    const enqueueOwner = (obj: KubeObject) => {
      const owner = obj.metadata?.ownerReferences?.find((r) => r.kind === KIND && r.controller);
      const name = owner?.name ?? obj.metadata?.labels?.[FUNCTION_LABEL];
      if (name) options.enqueue(`${obj.metadata?.namespace}/${name}`);
    };
    this.functions = new Informer(client, {
      path: resourcePath(API_VERSION, PLURAL, ns),
      onChange: enqueueFunction,
      log,
    });
    this.owned = new Map(
      ownedKinds(config).map((k) => [
        k.kind,
        new Informer<KubeObject>(client, {
          path: resourcePath(k.apiVersion, k.plural, ns),
          labelSelector: MANAGED_SELECTOR,
          onChange: enqueueOwner,
          log,
        }),
      ]),
    );
    this.pods = new Informer(client, {
      path: resourcePath('v1', 'pods', ns),
      labelSelector: MANAGED_SELECTOR,
      onChange: enqueueOwner,
      log,
      transform: slimPod,
      indexBy: (pod) => {
        const fn = pod.metadata?.labels?.[FUNCTION_LABEL];
        return fn ? `${pod.metadata?.namespace}/${fn}` : undefined;
      },
    });
    if (config.activator) {
      const [activatorNs = '', service = ''] = config.activator.split('/');
      // Functions' activator slices, cached like the other owned objects, and their Services'
      // own slices (labelled like the Service): the activator leaves a path only once the
      // Service's slices list a ready pod, so routes never lead nowhere in between.
      this.owned.set(
        ENDPOINT_SLICE.kind,
        new Informer<KubeObject>(client, {
          path: resourcePath(ENDPOINT_SLICE.apiVersion, ENDPOINT_SLICE.plural, ns),
          labelSelector: MANAGED_SELECTOR,
          onChange: enqueueOwner,
          log,
          indexBy: (slice) => {
            const service = slice.metadata?.labels?.['kubernetes.io/service-name'];
            return service ? `${slice.metadata?.namespace}/${service}` : undefined;
          },
        }),
      );
      this.activatorSlices = new Informer<KubeObject>(client, {
        path: resourcePath('discovery.k8s.io/v1', 'endpointslices', activatorNs),
        labelSelector: `kubernetes.io/service-name=${service}`,
        // The activator's pods changed: every function routed to it needs the new addresses.
        onChange: () => {
          for (const slice of this.owned.get(ENDPOINT_SLICE.kind)?.list() ?? []) enqueueOwner(slice);
          for (const d of this.owned.get('Deployment')?.list() ?? []) {
            if ((d.status?.readyReplicas ?? 0) === 0) enqueueOwner(d);
          }
        },
        log,
      });
    }
    const deployments = this.owned.get('Deployment')!;
    this.autoscaler = options.autoscale
      ? new Autoscaler({
          signal: options.autoscale.signal,
          registry: options.autoscale.registry,
          functions: () => this.functions.list(),
          function: (namespace, name) => this.functions.get(namespace, name),
          deployment: (namespace, name) => deployments.get(namespace, name),
          enqueue: options.enqueue,
          log,
        })
      : undefined;
    this.reconciler = new Reconciler({
      io: new ClusterIO({
        client,
        functions: this.functions,
        owned: this.owned,
        pods: this.pods,
        activator: this.activatorSlices ? () => activatorEndpoints(this.activatorSlices!.list()) : undefined,
        log,
      }),
      streams: options.streams,
      scaling: this.autoscaler,
      credentials: options.credentials,
      requeueAfter: options.enqueueAfter,
      config,
      metrics: options.metrics,
      log,
    });
  }

  get informers(): Informer<KubeObject>[] {
    return [
      this.functions,
      ...this.owned.values(),
      this.pods,
      ...(this.activatorSlices ? [this.activatorSlices] : []),
    ];
  }

  async start(): Promise<void> {
    await Promise.all(this.informers.map((i) => i.start()));
  }

  async stop(): Promise<void> {
    await Promise.all(this.informers.map((i) => i.stop()));
  }

  get synced(): boolean {
    return this.informers.every((i) => i.synced);
  }

  reconcile(key: string): Promise<void> {
    return this.reconciler.reconcile(key);
  }
}

/** The activator's ready pod addresses and target port, from its Service's EndpointSlices. */
export function activatorEndpoints(slices: KubeObject[]): ActivatorEndpoints {
  const addresses = new Set<string>();
  let port = 0;
  for (const slice of slices) {
    const ports = (slice.ports ?? []) as { name?: string; port?: number }[];
    port ||= (ports.find((p) => p.name === 'http') ?? ports[0])?.port ?? 0;
    for (const endpoint of (slice.endpoints ?? []) as {
      addresses?: string[];
      conditions?: { ready?: boolean };
    }[]) {
      if (endpoint.conditions?.ready === false) continue;
      for (const address of endpoint.addresses ?? []) addresses.add(address);
    }
  }
  // 8080: the activator's public port in the chart, for the moment its slices are not there yet.
  return { addresses: [...addresses].sort(), port: port || 8080 };
}
