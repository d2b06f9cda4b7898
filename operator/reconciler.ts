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
} from './desired.ts';
import { type FunctionView, functionView, InvalidSpecError } from './function.ts';
import { isNotFound, KubeApiError, type KubeObject } from './kube.ts';
import type { OperatorMetrics } from './metrics.ts';
import {
  DEPLOYMENT,
  INGRESS,
  type MapStreams,
  OWNED_KINDS,
  type OwnedKind,
  type ReconcilerIO,
  SERVICE,
} from './reconciler-io.ts';
import { computeStatus, type Observed, sameStatus } from './status.ts';

export const STREAMS_FINALIZER = 'sluice.dev/streams';

export interface ReconcilerOptions {
  io: ReconcilerIO;
  /** Undefined when the operator manages no map streams (no --nats). */
  streams: MapStreams | undefined;
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
  created: string[];
  updated: string[];
}

/**
 * Reconciles one StreamingFunction in ordered phases, as Knative's ReconcileKind: read, finalize
 * (when deleted), finalizer, streams, owned objects (look, then apply unless something foreign is
 * in the way), events, status. It reads and writes only through ReconcilerIO and MapStreams.
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
      await this.#reconcileOwned(pass);
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
      const stopped = desiredDeployment(fn, this.#o.config);
      stopped.spec.replicas = 0;
      await this.#apply(DEPLOYMENT, stopped, live);
      this.#event(fn, 'Normal', 'StoppingPods', 'the pods stop before the map streams are deleted');
    }
    return true;
  }

  async #ensureFinalizer(fn: FunctionView): Promise<void> {
    if (this.#wantsStreams(fn) && !this.#hasFinalizer(fn)) await this.#setFinalizer(fn, true);
  }

  #begin(key: string, fn: FunctionView): Pass {
    return {
      key,
      fn,
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
  async #reconcileOwned(pass: Pass): Promise<void> {
    const looks = await this.#look(pass.fn);
    const foreign = looks.find((l) => l.live && !ownedBy(l.live, pass.fn));
    if (foreign) {
      const { namespace, name } = pass.fn.metadata;
      pass.observed.notOwned = `${foreign.kind.kind} ${namespace}/${name} exists and is not owned by this StreamingFunction; it was left as it is`;
      this.#event(pass.fn, 'Warning', 'NotOwned', pass.observed.notOwned);
      return;
    }
    await Promise.all(looks.map((look) => this.#converge(pass, look)));
  }

  async #look(fn: FunctionView): Promise<Look[]> {
    const { config, io } = this.#o;
    const desired: [OwnedKind, KubeObject | undefined][] = [
      [DEPLOYMENT, desiredDeployment(fn, config)],
      [SERVICE, desiredService(fn)],
      [INGRESS, desiredIngress(fn, config)],
    ];
    const { namespace, name } = fn.metadata;
    return Promise.all(
      desired.map(async ([kind, object]) => ({
        kind,
        desired: object,
        live: object ? await io.live(kind, namespace, name) : undefined,
      })),
    );
  }

  async #converge(pass: Pass, { kind, desired, live }: Look): Promise<void> {
    if (!desired) return this.#deleteOwned(pass.fn, kind);
    const result = await this.#apply(kind, desired, live);
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
    };
    const applied = await this.#o.io.apply(kind, intent);
    this.#o.metrics.applies.inc({ kind: kind.kind });
    return { outcome: live ? 'updated' : 'created', live: applied };
  }

  async #deleteOwned(fn: FunctionView, kind: OwnedKind): Promise<void> {
    const { namespace, name } = fn.metadata;
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

  async #writeStatus({ key, fn, observed }: Pass): Promise<void> {
    observed.pods = this.#o.io.pods(key).filter((p) => !p.metadata?.deletionTimestamp);
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

function ownedBy(object: KubeObject, fn: FunctionView): boolean {
  return (object.metadata?.ownerReferences ?? []).some((r) => r.uid === fn.metadata.uid && r.controller);
}
