import { Counter, Gauge, type Registry } from 'prom-client';
import {
  type Decision,
  type LoadParts,
  ScaleDecider,
  type ScalingPolicy,
  scalingPolicy,
  totalLoad,
} from '../common/autoscale/decision.ts';
import { errorMessage } from '../common/errors.ts';
import type { Logger } from '../common/log.ts';
import { type FunctionView, functionView } from './function.ts';
import type { KubeObject } from './kube.ts';
import type { LoadSignal } from './load-signal.ts';
import type { ScalePlan, Scaling } from './reconciler-io.ts';

/** One decision a second per function, as Knative's autoscaler ticks (its default is 2 s). */
export const TICK_MS = 1000;
/**
 * status.inFlight is refreshed at most this often, as the HPA refreshes its status every sync
 * period (15 s): a status write per busy function per second would not scale to 1,000 functions.
 */
export const IN_FLIGHT_REFRESH_MS = 15_000;
/** How often the map tasks waiting of a map function without visible map traffic are looked at. */
const PENDING_SWEEP_MS = 30_000;

interface Tracked {
  uid: string;
  generation: number;
  policy: ScalingPolicy;
  mapEnabled: boolean;
  decider: ScaleDecider;
  decision: Decision | undefined;
  decidedAt: number;
  parts: LoadParts;
  known: boolean;
  inFlight: number;
  /**
   * The inFlight the status is to show: set from `inFlight` only when a write is asked for (a new
   * count, or every IN_FLIGHT_REFRESH_MS), so the reconcile a status write itself triggers writes
   * nothing more.
   */
  inFlightShown: number;
  podLoad: Map<string, number>;
  /** The count the reconciler was last asked to apply. */
  asked: number;
  inFlightAskedAt: number;
  pending: number;
  pendingAt: number;
  polling: boolean;
}

export interface AutoscalerOptions {
  signal: LoadSignal;
  /** The functions (informer cache). */
  functions: () => KubeObject[];
  function: (namespace: string, name: string) => KubeObject | undefined;
  /** The function's Deployment as cached, if any. */
  deployment: (namespace: string, name: string) => KubeObject | undefined;
  /** Puts a function on the work queue; `urgent` (more replicas) goes ahead of the others. */
  enqueue: (key: string, urgent: boolean) => void;
  registry: Registry;
  log: Logger;
  now?: () => number;
}

const keyOf = (o: { metadata?: { namespace?: string; name?: string } }) =>
  `${o.metadata?.namespace}/${o.metadata?.name}`;

/**
 * Decides each function's replicas once a second from the load signal (common/autoscale), and
 * at once when an activator starts holding requests for it; a changed decision (and, every few
 * seconds, a changed inFlight) puts the function on the work queue, whose reconcile writes it
 * (Reconciler's scale phase). Runs on the leader only, like the reconciles.
 */
export class Autoscaler implements Scaling {
  readonly #o: AutoscalerOptions;
  readonly #tracked = new Map<string, Tracked>();
  readonly #now: () => number;
  #timer: NodeJS.Timeout | undefined;

  constructor(options: AutoscalerOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    const tracked = this.#tracked;
    new Gauge({
      name: 'sluice_autoscaler_desired_replicas',
      help: 'Replicas the autoscaler wants for each function now',
      labelNames: ['function'],
      registers: [options.registry],
      collect() {
        this.reset();
        for (const [fn, t] of tracked) this.set({ function: fn }, t.decider.current);
      },
    });
    const signal = options.signal;
    new Counter({
      name: 'sluice_autoscaler_reports_total',
      help: 'Load reports received over NATS (ok), and messages on the load subjects that were not one (rejected)',
      labelNames: ['result'],
      registers: [options.registry],
      collect() {
        this.reset();
        this.inc({ result: 'ok' }, signal.received);
        this.inc({ result: 'rejected' }, signal.rejected);
      },
    });
    new Gauge({
      name: 'sluice_autoscaler_load',
      help: 'Load the autoscaler follows for each function: streams in flight + queued, map tasks waiting, requests held',
      labelNames: ['function'],
      registers: [options.registry],
      collect() {
        this.reset();
        for (const [fn, t] of tracked) if (t.known) this.set({ function: fn }, totalLoad(t.parts));
      },
    });
  }

  start(): void {
    this.#o.signal.start();
    this.#timer = setInterval(() => this.tick(), TICK_MS);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** One decision for every function (and forgets the deleted ones). */
  tick(): void {
    const now = this.#now();
    const seen = new Set<string>();
    for (const object of this.#o.functions()) {
      const key = keyOf(object);
      seen.add(key);
      if (object.metadata?.deletionTimestamp) continue;
      const t = this.#track(key, object);
      if (t) this.#decide(key, t, now);
    }
    for (const key of this.#tracked.keys()) if (!seen.has(key)) this.#tracked.delete(key);
    this.#o.signal.book.prune(now);
  }

  /** An activator started holding requests for `fn`: decide now, not on the next tick. */
  urgent(fn: string): void {
    const [namespace = '', name = ''] = fn.split('/');
    const object = this.#o.function(namespace, name);
    const t = object && this.#track(fn, object);
    if (t) this.#decide(fn, t, this.#now());
  }

  /** The last decision for `namespace/name` and when it was made (logs, tests). */
  lastDecision(key: string): { decision: Decision; at: number } | undefined {
    const t = this.#tracked.get(key);
    return t?.decision && { decision: t.decision, at: t.decidedAt };
  }

  plan(fn: FunctionView, liveReplicas: number | undefined): ScalePlan {
    const key = `${fn.metadata.namespace}/${fn.metadata.name}`;
    const t = this.#trackView(key, fn, liveReplicas);
    const { parts } = t;
    const reason = t.decision?.reason ?? 'steady';
    return {
      replicas: t.decider.current,
      inFlight: t.inFlightShown,
      why: t.known
        ? `${reason}: load ${totalLoad(parts)} (streams ${parts.streams}, map tasks waiting ${parts.pendingTasks}, held ${parts.held}), ${t.policy.target} per replica`
        : `${reason}: no load reports`,
      podLoad: t.podLoad,
    };
  }

  #track(key: string, object: KubeObject): Tracked | undefined {
    const existing = this.#tracked.get(key);
    const m = object.metadata ?? {};
    if (existing && existing.uid === m.uid && existing.generation === m.generation) return existing;
    let fn: FunctionView;
    try {
      fn = functionView(object);
    } catch {
      return undefined; // the reconciler reports the invalid spec
    }
    return this.#trackView(
      key,
      fn,
      this.#o.deployment(fn.metadata.namespace, fn.metadata.name)?.spec?.replicas,
    );
  }

  #trackView(key: string, fn: FunctionView, liveReplicas: number | undefined): Tracked {
    const existing = this.#tracked.get(key);
    const { uid, generation } = fn.metadata;
    if (existing && existing.uid === uid && existing.generation === generation) return existing;
    const policy = scalingPolicy(fn.spec.scaling);
    if (existing && existing.uid === uid) {
      existing.generation = generation;
      existing.policy = policy;
      existing.mapEnabled = fn.spec.map.enabled;
      // A changed spec (kubectl scale: minReplicas) is decided at once.
      this.#decide(key, existing, this.#now());
      return existing;
    }
    const start = Math.min(
      policy.maxReplicas,
      Math.max(policy.minReplicas, liveReplicas ?? policy.minReplicas),
    );
    const t: Tracked = {
      uid,
      generation,
      policy,
      mapEnabled: fn.spec.map.enabled,
      decider: new ScaleDecider(start, policy.minReplicas),
      decision: undefined,
      decidedAt: 0,
      parts: { streams: 0, pendingTasks: 0, held: 0 },
      known: false,
      inFlight: 0,
      inFlightShown: fn.status.inFlight ?? 0,
      podLoad: new Map(),
      asked: liveReplicas ?? start,
      inFlightAskedAt: 0,
      pending: 0,
      pendingAt: 0,
      polling: false,
    };
    this.#tracked.set(key, t);
    return t;
  }

  #decide(key: string, t: Tracked, now: number): void {
    const { signal } = this.#o;
    const [namespace = '', name = ''] = key.split('/');
    const deployment = this.#o.deployment(namespace, name);
    const view = signal.book.view(key, now);
    const readyPods = deployment?.status?.readyReplicas ?? 0;
    // No report from a function with ready pods means no signal, not no load: hold the count.
    t.known = signal.connected && (view !== undefined || readyPods === 0);
    t.parts = { streams: view?.streams ?? 0, pendingTasks: t.pending, held: view?.held ?? 0 };
    t.inFlight = view?.inFlight ?? 0;
    t.podLoad = new Map((view?.replicas ?? []).map((r) => [r.name, r.active + r.queued]));
    const before = t.decider.current;
    t.decision = t.decider.observe(t.known ? totalLoad(t.parts) : undefined, t.policy, now);
    t.decidedAt = now;
    if (
      t.mapEnabled &&
      !t.polling &&
      ((view?.maps ?? 0) > 0 || t.pending > 0 || now - t.pendingAt >= PENDING_SWEEP_MS)
    ) {
      this.#poll(key, t, now);
    }
    const desired = t.decision.desired;
    if (desired !== t.asked) {
      this.#o.log.info(
        { function: key, from: before, to: desired, reason: t.decision.reason, load: totalLoad(t.parts) },
        'autoscaler decision',
      );
      const up = desired > t.asked;
      t.asked = desired;
      t.inFlightShown = t.inFlight;
      this.#o.enqueue(key, up);
    } else if (t.inFlight !== t.inFlightShown && now - t.inFlightAskedAt >= IN_FLIGHT_REFRESH_MS) {
      t.inFlightAskedAt = now;
      t.inFlightShown = t.inFlight;
      this.#o.enqueue(key, false);
    }
  }

  #poll(key: string, t: Tracked, now: number): void {
    t.polling = true;
    t.pendingAt = now;
    this.#o.signal
      .pendingTasks(key)
      .then((pending) => {
        const rose = pending > t.pending;
        t.pending = pending;
        // Tasks waiting are a burst like any other: decide now rather than on the next tick.
        if (rose) this.#decide(key, t, this.#now());
      })
      .catch((err) =>
        this.#o.log.warn({ function: key, err: errorMessage(err) }, 'pending map tasks unknown'),
      )
      .finally(() => {
        t.polling = false;
      });
  }
}
