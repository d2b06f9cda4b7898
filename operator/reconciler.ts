import { errorMessage } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import { covers } from './compare.ts';
import {
  type BuilderConfig,
  desiredDeployment,
  desiredHash,
  desiredIngress,
  desiredService,
  HASH_ANNOTATION,
  natsCredentialsSecretName,
  wantsNatsCredentials,
} from './desired.ts';
import { type FunctionView, functionView, InvalidSpecError } from './function.ts';
import { isNotFound, KubeApiError, type KubeObject } from './kube.ts';
import type { OperatorMetrics } from './metrics.ts';
import { desiredNetworkPolicy } from './network-policy.ts';
import {
  DEPLOYMENT,
  ENDPOINT_SLICE,
  INGRESS,
  type MapStreams,
  type NatsCredentials,
  NETWORK_POLICY,
  OWNED_KINDS,
  type OwnedKind,
  ownedName,
  type ReconcilerIO,
  type ScalePlan,
  type Scaling,
  SECRET,
  SERVICE,
} from './reconciler-io.ts';
import { activatorSliceName, DELETION_COST_ANNOTATION, desiredActivatorSlice } from './scaling.ts';
import { computeStatus, type Observed, sameStatus } from './status.ts';

export const STREAMS_FINALIZER = 'sluice.dev/streams';

export interface ReconcilerOptions {
  io: ReconcilerIO;
  /** Undefined when the operator manages no map streams (no --nats). */
  streams: MapStreams | undefined;
  /** The autoscaler; undefined (no --nats, no load signal): every function runs minReplicas. */
  scaling?: Scaling;
  /** Undefined when NATS is not locked down (no --nats, or --nats-auth=false). */
  credentials?: NatsCredentials;
  /** Reconcile the key again after `ms` (credentials to renew). */
  requeueAfter?: (key: string, ms: number) => void;
  config: BuilderConfig;
  metrics: Pick<OperatorMetrics, 'applies' | 'errors'>;
  log: Logger;
}

/** One owned object: what Sluice wants (undefined: none) and what is there now. */
interface Look {
  kind: OwnedKind;
  desired: KubeObject | undefined;
  live: KubeObject | undefined;
}

/** What one reconcile of one function saw and wrote, for its Events and its status. */
interface Pass {
  key: string;
  fn: FunctionView;
  observed: Observed;
  /** Replicas to run, decided once per pass so every phase acts on the same number. */
  plan: ScalePlan;
  created: string[];
  updated: string[];
}

/**
 * Reconciles one StreamingFunction in ordered phases, as Knative's ReconcileKind: read, finalize
 * (when deleted), finalizer, streams, owned objects (look, then apply unless something foreign is
 * in the way), activator path, scale, events, status. It reads and writes only through
 * ReconcilerIO, MapStreams and Scaling.
 */
export class Reconciler {
  readonly #o: ReconcilerOptions;

  constructor(options: ReconcilerOptions) {
    this.#o = options;
  }

  async reconcile(key: string): Promise<void> {
    const fn = await this.#read(key);
    if (!fn) return; // deleted: owned objects go with it through ownerReferences
    if (fn.metadata.deletionTimestamp) return this.#finalize(fn);
    await this.#ensureFinalizer(fn);
    const pass = this.#begin(key, fn);
    await this.#guarded(pass, async () => {
      await this.#reconcileStreams(fn);
      if (!(await this.#reconcileOwned(pass))) return;
      await this.#reconcileActivatorPath(pass);
      await this.#reconcileScale(pass);
    });
    await this.#writeStatus(pass);
  }

  /** The function from the cache with every default applied; a spec the schema refuses becomes a condition. */
  async #read(key: string): Promise<FunctionView | undefined> {
    const [namespace = '', name = ''] = key.split('/');
    const object = this.#o.io.function(namespace, name);
    if (!object) return undefined;
    try {
      return functionView(object);
    } catch (err) {
      if (!(err instanceof InvalidSpecError)) throw err;
      // Stored before a schema rule existed: say so on the object; retrying will not help.
      await this.#reportInvalidSpec(object, err);
      throw err;
    }
  }

  async #finalize(fn: FunctionView): Promise<void> {
    if (!this.#hasFinalizer(fn)) return;
    // A sidecar that still runs re-creates the streams it misses (it makes what is missing), so
    // the function's pods stop first: its Deployment goes to zero replicas, and each pod that
    // goes requeues the function through the pod informer.
    if (this.#o.streams && (await this.#podsRun(fn))) return;
    await this.#o.streams?.remove(fn);
    await this.#setFinalizer(fn, false);
    this.#event(fn, 'Normal', 'StreamsDeleted', 'deleted the map streams');
  }

  /** True while the function's own Deployment still has pods; scales it to zero first. */
  async #podsRun(fn: FunctionView): Promise<boolean> {
    const { namespace, name } = fn.metadata;
    const live = await this.#o.io.live(DEPLOYMENT, namespace, name);
    if (!live || !ownedBy(live, fn)) return false;
    if (this.#o.io.pods(`${namespace}/${name}`).length === 0) return false;
    if (live.spec?.replicas !== 0) {
      await this.#o.io.scale(namespace, name, 0);
      this.#event(fn, 'Normal', 'StoppingPods', 'the pods stop before the map streams are deleted');
    }
    return true;
  }

  async #ensureFinalizer(fn: FunctionView): Promise<void> {
    if (this.#wantsStreams(fn) && !this.#hasFinalizer(fn)) await this.#setFinalizer(fn, true);
  }

  #begin(key: string, fn: FunctionView): Pass {
    const { namespace, name } = fn.metadata;
    const liveReplicas = this.#o.io.labelled(DEPLOYMENT, namespace, name)?.spec?.replicas;
    return {
      key,
      fn,
      plan: this.#o.scaling?.plan(fn, liveReplicas) ?? fixedPlan(fn),
      observed: {
        deployment: undefined,
        pods: [],
        ingress: undefined,
        gpuResourceName: this.#o.config.gpuResourceName,
      },
      created: [],
      updated: [],
    };
  }

  /**
   * Runs the phases that write; what they wrote is reported also when a later step fails. A
   * terminal failure (the API server refuses for good) becomes the status's failure, not a retry.
   */
  async #guarded(pass: Pass, phases: () => Promise<void>): Promise<void> {
    try {
      await phases();
    } catch (err) {
      this.#reportWrites(pass);
      // The API server refused for good (403, 422: a spec its schema or CEL rules now refuse).
      const terminal = err instanceof KubeApiError && !err.retryable;
      this.#event(pass.fn, 'Warning', 'ReconcileFailed', errorMessage(err));
      if (!terminal) throw err;
      pass.observed.failure = errorMessage(err);
      this.#o.metrics.errors.inc({ kind: 'terminal' });
      return;
    }
    this.#reportWrites(pass);
  }

  async #reconcileStreams(fn: FunctionView): Promise<void> {
    const { streams } = this.#o;
    if (this.#wantsStreams(fn)) {
      if (await streams!.ensure(fn))
        this.#event(fn, 'Normal', 'StreamsApplied', 'created or updated the map streams');
    } else if (this.#hasFinalizer(fn)) {
      await streams?.remove(fn);
      await this.#setFinalizer(fn, false);
    }
  }

  /**
   * Looks first (reads, in parallel), writes only if nothing foreign is in the way: a function
   * whose Service name is taken gets no Deployment either.
   */
  /** False when something foreign is in the way (nothing was written). */
  async #reconcileOwned(pass: Pass): Promise<boolean> {
    const looks = await this.#look(pass.fn, pass.key);
    const foreign = looks.find((l) => l.live && !ownedBy(l.live, pass.fn));
    if (foreign) {
      const { namespace, name } = pass.fn.metadata;
      pass.observed.notOwned = `${foreign.kind.kind} ${namespace}/${name} exists and is not owned by this StreamingFunction; it was left as it is`;
      this.#event(pass.fn, 'Warning', 'NotOwned', pass.observed.notOwned);
      return false;
    }
    await Promise.all(looks.map((look) => this.#converge(pass, look)));
    return true;
  }

  /**
   * While the function's Service has no ready endpoint (or is about to have none), it also routes
   * to the activator, which holds requests until a replica is ready (Knative's proxy mode); once
   * the Service lists one, the activator leaves the path and requests go straight to the pods.
   */
  async #reconcileActivatorPath(pass: Pass): Promise<void> {
    const activator = this.#o.io.activator();
    if (!activator) return;
    const { fn, plan } = pass;
    const { namespace, name } = fn.metadata;
    // Routes follow the Service's endpoints, which lag the Deployment's ready count.
    const wanted = plan.replicas === 0 || this.#o.io.serviceEndpointsReady(`${namespace}/${name}`) === 0;
    const sliceName = activatorSliceName(fn);
    const live = this.#o.io.labelled(ENDPOINT_SLICE, namespace, sliceName);
    if (!wanted && (!live || (live.endpoints ?? []).length === 0)) return;
    const desired = desiredActivatorSlice(fn, wanted ? activator : { addresses: [], port: activator.port });
    const result = await this.#apply(ENDPOINT_SLICE, desired, live);
    if (result.outcome !== 'unchanged') {
      this.#o.log.info(
        { function: `${namespace}/${name}`, activator: wanted, addresses: activator.addresses.length },
        wanted ? 'activator in the path' : 'activator out of the path',
      );
    }
  }

  /**
   * Writes the autoscaler's count through the Deployment's scale subresource. Before a scale-down
   * each pod's deletion cost is set to its streams in flight, so the ReplicaSet removes the
   * idlest pods first; a pod removed anyway drains its streams (the proxy's SIGTERM drain).
   */
  async #reconcileScale(pass: Pass): Promise<void> {
    const live = pass.observed.deployment;
    const from = live?.spec?.replicas;
    const to = pass.plan.replicas;
    if (!live || from === undefined || from === to) return;
    const { namespace, name } = pass.fn.metadata;
    if (to < from) await this.#setDeletionCosts(pass);
    await this.#o.io.scale(namespace, name, to);
    pass.observed.deployment = { ...live, spec: { ...live.spec, replicas: to } };
    this.#event(pass.fn, 'Normal', 'Scaled', `scaled from ${from} to ${to} replicas (${pass.plan.why})`);
  }

  async #setDeletionCosts(pass: Pass): Promise<void> {
    const { namespace } = pass.fn.metadata;
    const pods = this.#o.io.pods(pass.key).filter((p) => !p.metadata?.deletionTimestamp);
    await Promise.all(
      pods.map(async (pod) => {
        const podName = pod.metadata?.name ?? '';
        // A pod that never reported (still starting) costs nothing: it goes before a serving one.
        const cost = String(pass.plan.podLoad.get(podName) ?? 0);
        if (pod.metadata?.annotations?.[DELETION_COST_ANNOTATION] === cost) return;
        try {
          await this.#o.io.patchPod(namespace, podName, {
            metadata: { annotations: { [DELETION_COST_ANNOTATION]: cost } },
          });
        } catch (err) {
          if (!isNotFound(err)) throw err;
        }
      }),
    );
  }

  async #look(fn: FunctionView, key: string): Promise<Look[]> {
    const { config, io } = this.#o;
    const desired: [OwnedKind, KubeObject | undefined][] = [
      [DEPLOYMENT, desiredDeployment(fn, config)],
      [SERVICE, desiredService(fn)],
      [INGRESS, desiredIngress(fn, config)],
    ];
    if (config.networkPolicy) desired.push([NETWORK_POLICY, desiredNetworkPolicy(fn, config)]);
    const { namespace, name } = fn.metadata;
    const looks = await Promise.all(
      desired.map(async ([kind, object]) => ({
        kind,
        desired: object,
        live: object ? await io.live(kind, namespace, name) : undefined,
      })),
    );
    if (this.#o.credentials) looks.push(await this.#lookCredentials(fn, key, this.#o.credentials));
    return looks;
  }

  /** The credentials Secret: what is there decides what is wanted (kept, or renewed). */
  async #lookCredentials(fn: FunctionView, key: string, credentials: NatsCredentials): Promise<Look> {
    if (!wantsNatsCredentials(fn, this.#o.config))
      return { kind: SECRET, desired: undefined, live: undefined };
    const live = await this.#o.io.live(SECRET, fn.metadata.namespace, natsCredentialsSecretName(fn));
    // Someone else's Secret of that name: issue nothing; the foreign check reports it.
    if (live && !ownedBy(live, fn)) return { kind: SECRET, desired: live, live };
    const { object, renewInMs } = await credentials.secret(fn, live);
    this.#o.requeueAfter?.(key, renewInMs);
    return { kind: SECRET, desired: object, live };
  }

  async #converge(pass: Pass, { kind, desired, live }: Look): Promise<void> {
    if (!desired) return this.#deleteOwned(pass.fn, kind);
    // Replicas are not part of the intent compared: they change through the scale subresource
    // (#reconcileScale). An apply carries the count decided for this pass, so it never undoes one.
    const result = await this.#apply(
      kind,
      desired,
      live,
      kind === DEPLOYMENT ? { replicas: pass.plan.replicas } : undefined,
    );
    if (kind === DEPLOYMENT) pass.observed.deployment = result.live;
    if (kind === INGRESS) pass.observed.ingress = result.live;
    if (result.outcome === 'created') pass.created.push(kind.kind);
    if (result.outcome === 'updated') pass.updated.push(kind.kind);
  }

  /** Applies `desired` unless the live object (owned by the function) already carries all of it. */
  async #apply(
    kind: OwnedKind,
    desired: KubeObject,
    live: KubeObject | undefined,
    specExtra?: Record<string, unknown>,
  ): Promise<{ outcome: 'created' | 'updated' | 'unchanged'; live: KubeObject | undefined }> {
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
      ...(specExtra ? { spec: { ...specExtra, ...desired.spec } } : {}),
    };
    const applied = await this.#o.io.apply(kind, intent);
    this.#o.metrics.applies.inc({ kind: kind.kind });
    return { outcome: live ? 'updated' : 'created', live: applied };
  }

  async #deleteOwned(fn: FunctionView, kind: OwnedKind): Promise<void> {
    const { namespace } = fn.metadata;
    const name = ownedName(kind, fn.metadata.name);
    const live = this.#o.io.labelled(kind, namespace, name);
    if (!live || !ownedBy(live, fn)) return;
    try {
      await this.#o.io.delete(kind, namespace, name, live.metadata?.uid);
      this.#event(fn, 'Normal', 'Deleted', `deleted ${kind.kind} ${namespace}/${name}, no longer wanted`);
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  /** One Event per verb and reconcile ("created Deployment, Service, Ingress"). */
  #reportWrites({ fn, created, updated }: Pass): void {
    const target = `${fn.metadata.namespace}/${fn.metadata.name}`;
    const order = OWNED_KINDS.map((k) => k.kind);
    for (const list of [created, updated]) list.sort((a, b) => order.indexOf(a) - order.indexOf(b));
    if (created.length) this.#event(fn, 'Normal', 'Created', `created ${created.join(', ')} ${target}`);
    if (updated.length) this.#event(fn, 'Normal', 'Updated', `updated ${updated.join(', ')} ${target}`);
  }

  async #writeStatus({ key, fn, observed, plan }: Pass): Promise<void> {
    observed.pods = this.#o.io.pods(key).filter((p) => !p.metadata?.deletionTimestamp);
    observed.scale = {
      desired: plan.replicas,
      inFlight: this.#o.scaling ? plan.inFlight : undefined,
    };
    const status = computeStatus(fn, observed);
    if (sameStatus(status, fn.status)) return;
    // `kubectl describe sfn` should say why nothing runs, not only the pods' own events.
    const scheduled = status.conditions?.find((c) => c.type === 'Scheduled');
    const before = fn.status?.conditions?.find((c) => c.type === 'Scheduled');
    if (scheduled?.status === 'False' && (before?.status !== 'False' || before.reason !== scheduled.reason)) {
      this.#event(fn, 'Warning', scheduled.reason, scheduled.message ?? '');
    }
    try {
      await this.#o.io.patchStatus(fn.metadata.namespace, fn.metadata.name, status);
    } catch (err) {
      if (!isNotFound(err)) throw err; // deleted meanwhile
    }
  }

  async #reportInvalidSpec(object: KubeObject, err: InvalidSpecError): Promise<void> {
    const m = object.metadata ?? {};
    const previous = (object.status?.conditions ?? []).find((c: { type: string }) => c.type === 'Ready');
    if (previous?.reason === 'InvalidSpec' && previous.message === err.message) return;
    await this.#o.io.patchStatus(m.namespace ?? '', m.name ?? '', {
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
    });
  }

  #wantsStreams(fn: FunctionView): boolean {
    return fn.spec.map.enabled && this.#o.streams !== undefined;
  }

  #hasFinalizer(fn: FunctionView): boolean {
    return fn.metadata.finalizers?.includes(STREAMS_FINALIZER) ?? false;
  }

  /** Adds or removes the streams finalizer; the resourceVersion makes it fail on a stale read. */
  async #setFinalizer(fn: FunctionView, present: boolean): Promise<void> {
    const others = (fn.metadata.finalizers ?? []).filter((f) => f !== STREAMS_FINALIZER);
    await this.#o.io.patchFunction(fn.metadata.namespace, fn.metadata.name, {
      metadata: {
        resourceVersion: fn.metadata.resourceVersion,
        finalizers: present ? [...others, STREAMS_FINALIZER] : others,
      },
    });
  }

  #event(fn: FunctionView, type: 'Normal' | 'Warning', reason: string, message: string): void {
    this.#o.io.event(fn, type, reason, message);
    const { namespace, name } = fn.metadata;
    this.#o.log.info({ function: `${namespace}/${name}`, type, reason }, message);
  }
}

/** Without an autoscaler the function runs minReplicas, as the scale subresource sets it. */
function fixedPlan(fn: FunctionView): ScalePlan {
  return {
    replicas: fn.spec.scaling.minReplicas,
    inFlight: 0,
    why: 'spec.scaling.minReplicas',
    podLoad: new Map(),
  };
}

function ownedBy(object: KubeObject, fn: FunctionView): boolean {
  return (object.metadata?.ownerReferences ?? []).some((r) => r.uid === fn.metadata.uid && r.controller);
}
