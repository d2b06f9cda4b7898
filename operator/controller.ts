import { API_VERSION, KIND, PLURAL } from '../api/v1alpha1/schema.ts';
import { errorMessage, SluiceError } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import { covers } from './compare.ts';
import {
  type BuilderConfig,
  desiredDeployment,
  desiredHash,
  desiredIngress,
  desiredService,
  FIELD_MANAGER,
  FUNCTION_LABEL,
  HASH_ANNOTATION,
} from './desired.ts';
import { type FunctionView, functionView, InvalidSpecError } from './function.ts';
import { Informer } from './informer.ts';
import { isNotFound, KubeApiError, type KubeClient, type KubeObject, resourcePath } from './kube.ts';
import type { OperatorMetrics } from './metrics.ts';
import type { ReconcileResult } from './queue.ts';
import { computeStatus, type Observed, sameStatus } from './status.ts';
import type { StreamManager } from './streams.ts';

export const STREAMS_FINALIZER = 'sluice.dev/streams';
const MANAGED_SELECTOR = `app.kubernetes.io/managed-by=${FIELD_MANAGER}`;

interface OwnedKind {
  kind: string;
  apiVersion: string;
  plural: string;
}
const DEPLOYMENT: OwnedKind = { kind: 'Deployment', apiVersion: 'apps/v1', plural: 'deployments' };
const SERVICE: OwnedKind = { kind: 'Service', apiVersion: 'v1', plural: 'services' };
const INGRESS: OwnedKind = { kind: 'Ingress', apiVersion: 'networking.k8s.io/v1', plural: 'ingresses' };

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

/** A reconcile failure that retrying cannot fix; it becomes a condition, not a hot loop. */
export class TerminalError extends SluiceError {
  readonly retryable = false;

  constructor(message: string, cause?: unknown) {
    super('ERR_RECONCILE_TERMINAL', message, { cause });
  }
}

export interface ControllerOptions {
  client: KubeClient;
  config: BuilderConfig & { namespace: string };
  streams: StreamManager | undefined;
  metrics: OperatorMetrics;
  log: Logger;
  /** Called for every key that needs a reconcile. */
  enqueue: (key: string) => void;
}

type Outcome = 'created' | 'updated' | 'unchanged';

/**
 * Reads the world from informer caches, computes the desired objects with pure builders,
 * applies only what differs with server-side apply, and reports what it saw in status.
 */
export class Controller {
  readonly functions: Informer<KubeObject>;
  readonly owned: Map<string, Informer<KubeObject>>;
  readonly pods: Informer<KubeObject>;
  private readonly o: ControllerOptions;

  constructor(options: ControllerOptions) {
    this.o = options;
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
      [DEPLOYMENT, SERVICE, INGRESS].map((k) => [
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

  async reconcile(key: string): Promise<ReconcileResult | undefined> {
    const [namespace = '', name = ''] = key.split('/');
    const object = this.functions.get(namespace, name);
    if (!object) return undefined; // deleted: owned objects go with it through ownerReferences
    let fn: FunctionView;
    try {
      fn = functionView(object);
    } catch (err) {
      if (!(err instanceof InvalidSpecError)) throw err;
      // Stored before a schema rule existed: say so on the object; retrying will not help.
      await this.reportInvalidSpec(object, err);
      throw err;
    }
    const { streams } = this.o;
    const hasFinalizer = fn.metadata.finalizers?.includes(STREAMS_FINALIZER) ?? false;

    if (fn.metadata.deletionTimestamp) {
      if (hasFinalizer) {
        await streams?.remove(fn);
        await this.setFinalizer(fn, false);
        this.event(fn, 'Normal', 'StreamsDeleted', 'deleted the map streams');
      }
      return undefined;
    }

    const wantsStreams = fn.spec.map.enabled && streams !== undefined;
    if (wantsStreams && !hasFinalizer) await this.setFinalizer(fn, true);

    const observed: Observed = {
      deployment: undefined,
      pods: [],
      ingress: undefined,
      gpuResourceName: this.o.config.gpuResourceName,
    };
    // One Event per verb and reconcile ("created Deployment, Service, Ingress"), also when a
    // later step fails: what was written is reported.
    const created: string[] = [];
    const updated: string[] = [];
    const report = () => {
      const target = `${namespace}/${name}`;
      const order = [DEPLOYMENT.kind, SERVICE.kind, INGRESS.kind];
      for (const list of [created, updated]) list.sort((a, b) => order.indexOf(a) - order.indexOf(b));
      if (created.length) this.event(fn, 'Normal', 'Created', `created ${created.join(', ')} ${target}`);
      if (updated.length) this.event(fn, 'Normal', 'Updated', `updated ${updated.join(', ')} ${target}`);
    };
    try {
      if (wantsStreams && (await streams.ensure(fn))) {
        this.event(fn, 'Normal', 'StreamsApplied', 'created or updated the map streams');
      } else if (!wantsStreams && hasFinalizer) {
        await streams?.remove(fn);
        await this.setFinalizer(fn, false);
      }
      const desired: [OwnedKind, KubeObject | undefined][] = [
        [DEPLOYMENT, desiredDeployment(fn, this.o.config)],
        [SERVICE, desiredService(fn)],
        [INGRESS, desiredIngress(fn, this.o.config)],
      ];
      // Look first (reads, in parallel), write only if nothing foreign is in the way: a
      // function whose Service name is taken gets no Deployment either.
      const looks = await Promise.all(
        desired.map(async ([kind, object]) => ({
          kind,
          object,
          live: object ? await this.live(fn, kind) : undefined,
        })),
      );
      const foreign = looks.find((l) => l.live && !this.ownedBy(l.live, fn));
      if (foreign) {
        observed.notOwned = `${foreign.kind.kind} ${namespace}/${name} exists and is not owned by this StreamingFunction; it was left as it is`;
        this.event(fn, 'Warning', 'NotOwned', observed.notOwned);
      } else {
        await Promise.all(
          looks.map(async ({ kind, object, live }) => {
            if (!object) return this.deleteOwned(fn, kind);
            const result = await this.ensure(fn, kind, object, live);
            if (kind === DEPLOYMENT) observed.deployment = result.live;
            if (kind === INGRESS) observed.ingress = result.live;
            if (result.outcome === 'created') created.push(kind.kind);
            if (result.outcome === 'updated') updated.push(kind.kind);
          }),
        );
      }
    } catch (err) {
      report();
      const terminal = err instanceof KubeApiError ? !err.retryable : err instanceof TerminalError;
      this.event(fn, 'Warning', 'ReconcileFailed', errorMessage(err));
      if (!terminal) throw err;
      observed.failure = errorMessage(err);
      this.o.metrics.errors.inc({ kind: 'terminal' });
    }
    if (!observed.failure) report();
    observed.pods = this.pods.byIndex(key).filter((p) => !p.metadata?.deletionTimestamp);
    await this.writeStatus(fn, observed);
    return undefined;
  }

  private async reportInvalidSpec(object: KubeObject, err: InvalidSpecError): Promise<void> {
    const m = object.metadata ?? {};
    const previous = (object.status?.conditions ?? []).find((c: { type: string }) => c.type === 'Ready');
    if (previous?.reason === 'InvalidSpec' && previous.message === err.message) return;
    await this.o.client.mergePatch(resourcePath(API_VERSION, PLURAL, m.namespace, m.name, 'status'), {
      status: {
        observedGeneration: m.generation,
        conditions: [
          {
            type: 'Ready',
            status: 'False',
            reason: 'InvalidSpec',
            message: err.message.slice(0, 32_768),
            observedGeneration: m.generation,
            lastTransitionTime: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'),
          },
        ],
      },
    });
  }

  private ownedBy(object: KubeObject, fn: FunctionView): boolean {
    return (object.metadata?.ownerReferences ?? []).some((r) => r.uid === fn.metadata.uid && r.controller);
  }

  /** The object of this kind and name: from the cache of labelled objects, else from the server. */
  private async live(fn: FunctionView, kind: OwnedKind): Promise<KubeObject | undefined> {
    const { namespace, name } = fn.metadata;
    const cached = this.owned.get(kind.kind)!.get(namespace, name);
    if (cached) return cached;
    // Not in the cache: it may still exist without our labels (someone else's object).
    try {
      return await this.o.client.get<KubeObject>(resourcePath(kind.apiVersion, kind.plural, namespace, name));
    } catch (err) {
      if (!isNotFound(err)) throw err;
      return undefined;
    }
  }

  /** Applies `desired` unless the live object (owned by `fn`) already carries all of it. */
  private async ensure(
    fn: FunctionView,
    kind: OwnedKind,
    desired: KubeObject,
    live: KubeObject | undefined,
  ): Promise<{ outcome: Outcome; live: KubeObject | undefined }> {
    const path = resourcePath(kind.apiVersion, kind.plural, fn.metadata.namespace, fn.metadata.name);
    const hash = desiredHash(desired);
    if (live && live.metadata?.annotations?.[HASH_ANNOTATION] === hash && covers(desired, live)) {
      return { outcome: 'unchanged', live };
    }
    const intent = {
      ...desired,
      metadata: {
        ...desired.metadata,
        annotations: { ...desired.metadata?.annotations, [HASH_ANNOTATION]: hash },
      },
    };
    const applied = await this.o.client.apply<KubeObject>(path, intent, FIELD_MANAGER, true);
    this.o.metrics.applies.inc({ kind: kind.kind });
    return { outcome: live ? 'updated' : 'created', live: applied };
  }

  private async deleteOwned(fn: FunctionView, kind: OwnedKind): Promise<void> {
    const { namespace, name } = fn.metadata;
    const live = this.owned.get(kind.kind)!.get(namespace, name);
    if (!live || !this.ownedBy(live, fn)) return;
    try {
      await this.o.client.request('DELETE', resourcePath(kind.apiVersion, kind.plural, namespace, name), {
        body: { preconditions: { uid: live.metadata?.uid } },
      });
      this.event(fn, 'Normal', 'Deleted', `deleted ${kind.kind} ${namespace}/${name}, no longer wanted`);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  /** Adds or removes the streams finalizer; the resourceVersion makes it fail on a stale read. */
  private async setFinalizer(fn: FunctionView, present: boolean): Promise<void> {
    const others = (fn.metadata.finalizers ?? []).filter((f) => f !== STREAMS_FINALIZER);
    await this.o.client.mergePatch(
      resourcePath(API_VERSION, PLURAL, fn.metadata.namespace, fn.metadata.name),
      {
        metadata: {
          resourceVersion: fn.metadata.resourceVersion,
          finalizers: present ? [...others, STREAMS_FINALIZER] : others,
        },
      },
    );
  }

  private async writeStatus(fn: FunctionView, observed: Observed): Promise<void> {
    const status = computeStatus(fn, observed);
    if (sameStatus(status, fn.status)) return;
    // `kubectl describe sfn` should say why nothing runs, not only the pods' own events.
    const scheduled = status.conditions?.find((c) => c.type === 'Scheduled');
    const before = fn.status?.conditions?.find((c) => c.type === 'Scheduled');
    if (scheduled?.status === 'False' && (before?.status !== 'False' || before.reason !== scheduled.reason)) {
      this.event(fn, 'Warning', scheduled.reason, scheduled.message ?? '');
    }
    try {
      await this.o.client.mergePatch(
        resourcePath(API_VERSION, PLURAL, fn.metadata.namespace, fn.metadata.name, 'status'),
        { status },
      );
    } catch (err) {
      if (!isNotFound(err)) throw err; // deleted meanwhile
    }
  }

  /** A core/v1 Event on the function; losing one is not worth failing a reconcile over. */
  private event(fn: FunctionView, type: 'Normal' | 'Warning', reason: string, message: string): void {
    const now = new Date().toISOString();
    const { namespace, name, uid } = fn.metadata;
    this.o.client
      .request('POST', resourcePath('v1', 'events', namespace), {
        body: {
          apiVersion: 'v1',
          kind: 'Event',
          metadata: { generateName: `${name}.`, namespace },
          involvedObject: { apiVersion: API_VERSION, kind: KIND, name, namespace, uid },
          type,
          reason,
          message: message.slice(0, 1024),
          source: { component: FIELD_MANAGER },
          reportingComponent: FIELD_MANAGER,
          reportingInstance: FIELD_MANAGER,
          firstTimestamp: now,
          lastTimestamp: now,
          count: 1,
        },
      })
      .catch((err) => this.o.log.warn({ err, reason }, 'could not record an event'));
    this.o.log.info({ function: `${namespace}/${name}`, type, reason }, message);
  }
}
