import { API_VERSION, KIND, PLURAL } from '../api/v1alpha1/schema.ts';
import type { Logger } from '../common/log.ts';
import { ClusterIO } from './cluster-io.ts';
import { type BuilderConfig, FIELD_MANAGER, FUNCTION_LABEL } from './desired.ts';
import { Informer } from './informer.ts';
import { type KubeClient, type KubeObject, resourcePath } from './kube.ts';
import type { OperatorMetrics } from './metrics.ts';
import { Reconciler } from './reconciler.ts';
import { type MapStreams, OWNED_KINDS } from './reconciler-io.ts';

const MANAGED_SELECTOR = `app.kubernetes.io/managed-by=${FIELD_MANAGER}`;

/** Status needs a pod's identity, node and conditions only; a full pod is many times larger. */
function slimPod(pod: KubeObject): KubeObject {
  const { name, namespace, uid, resourceVersion, labels, ownerReferences, deletionTimestamp } =
    pod.metadata ?? {};
  return {
    metadata: { name, namespace, uid, resourceVersion, labels, ownerReferences, deletionTimestamp },
    spec: { nodeName: pod.spec?.nodeName },
    status: { conditions: pod.status?.conditions },
  };
}

export interface ControllerOptions {
  client: KubeClient;
  config: BuilderConfig & { namespace: string };
  streams: MapStreams | undefined;
  metrics: OperatorMetrics;
  log: Logger;
  /** Called for every key that needs a reconcile. */
  enqueue: (key: string) => void;
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
      OWNED_KINDS.map((k) => [
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
    this.reconciler = new Reconciler({
      io: new ClusterIO({ client, functions: this.functions, owned: this.owned, pods: this.pods, log }),
      streams: options.streams,
      config,
      metrics: options.metrics,
      log,
    });
  }

  get informers(): Informer<KubeObject>[] {
    return [this.functions, ...this.owned.values(), this.pods];
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
