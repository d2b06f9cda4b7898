/**
 * How many replicas a function needs (SPEC §1 `scaling`, §3 autoscaling): one pure decision that
 * the operator and `sluice serve` both make, from the same numbers, as Knative's KPA decides from
 * its stable and panic windows. No clock of its own: every call says what time it is, so a table
 * of (time, load) rows replays exactly (test/autoscale-decision.test.ts).
 *
 * - load = streams in flight + queued on the replicas that take work (the highest count of the
 *   last report interval, so a request that came and went between two reports still counts)
 *   + map tasks waiting in the function's JetStream consumer + requests held at zero.
 * - wanted = clamp(ceil(load / targetConcurrency), minReplicas, maxReplicas).
 * - Up at once: wanted above the current count is the decision on the spot (KPA's panic mode,
 *   without its 2x threshold: a GPU stream that waits is a user that waits).
 * - Down only after every `wanted` of the last scaleDownDelaySeconds was lower, and then to the
 *   highest of them (KPA's scale-down-delay window). A new request is load in the interval it
 *   arrives in, so it restarts the wait of every replica it needs: the last replica stays while
 *   requests keep trickling in (KEDA http-add-on #881/#1352), yet steady traffic that needs one
 *   replica still lets a burst's extra replicas go.
 */

/** The spec fields the decision reads (spec.scaling). */
export interface ScalingSpec {
  minReplicas: number;
  maxReplicas: number;
  concurrency: number;
  /** 0: ceil(0.7 x concurrency). */
  targetConcurrency: number;
  scaleDownDelaySeconds: number;
}

export interface ScalingPolicy {
  minReplicas: number;
  maxReplicas: number;
  /** Streams per replica aimed at; never 0. */
  target: number;
  scaleDownDelayMs: number;
}

/** Share of `concurrency` aimed at when targetConcurrency is 0, as Knative's 70 % utilisation. */
export const DEFAULT_TARGET_UTILISATION = 0.7;

export function scalingPolicy(spec: ScalingSpec): ScalingPolicy {
  const target =
    spec.targetConcurrency > 0
      ? spec.targetConcurrency
      : Math.max(1, Math.ceil(DEFAULT_TARGET_UTILISATION * spec.concurrency));
  return {
    minReplicas: spec.minReplicas,
    maxReplicas: Math.max(spec.minReplicas, spec.maxReplicas),
    target,
    scaleDownDelayMs: spec.scaleDownDelaySeconds * 1000,
  };
}

/** What makes up the load of one function at one moment. */
export interface LoadParts {
  /** Streams in flight + queued, summed over the replicas that take work. */
  streams: number;
  /** Map tasks not yet delivered to any replica. */
  pendingTasks: number;
  /** Requests held (activator, or serve's front) while no replica is ready. */
  held: number;
}

export const totalLoad = (parts: LoadParts): number => parts.streams + parts.pendingTasks + parts.held;

/** Replicas the load alone asks for, within the policy's bounds. */
export function wantedReplicas(load: number, policy: ScalingPolicy): number {
  const raw = load > 0 ? Math.ceil(load / policy.target) : 0;
  return Math.min(policy.maxReplicas, Math.max(policy.minReplicas, raw));
}

export type DecisionReason =
  /** Unchanged and nothing pending. */
  | 'steady'
  /** More load than the replicas aim at: up now. */
  | 'burst'
  /** Less load, but not for scaleDownDelaySeconds yet. */
  | 'waiting'
  /** Less load for the whole delay: down to the highest need of the delay. */
  | 'idle'
  /** minReplicas changed (kubectl scale), or maxReplicas moved below the count: at once. */
  | 'bounds'
  /** No load known (no reports): the count is held. */
  | 'unknown';

export interface Decision {
  /** Replicas to run now. */
  desired: number;
  /** What the load alone asks for now. */
  wanted: number;
  reason: DecisionReason;
  /** With reason `waiting`: when the count goes down if the load stays as low. */
  scaleDownAt?: number;
}

interface Sample {
  wanted: number;
  /** When the next observation came (this one stopped being the latest); open while it is. */
  until: number;
}

/**
 * The decision for one function, fed one observation at a time (operator: each second and at
 * once when a request is held; serve: the same). Created with the replicas running now, which
 * count as needed until a full delay of observations says otherwise (an operator that just took
 * the lead never scales down on its first second of data).
 */
export class ScaleDecider {
  #current: number;
  /** minReplicas of the last observation: kubectl scale writes it (the scale subresource). */
  #min: number | undefined;
  /** Samples of the delay window, oldest first, `wanted` strictly falling (a max-queue). */
  #window: Sample[] = [];

  /** `minReplicas`: the policy's when the count was set (a later change is a user's kubectl scale). */
  constructor(current: number, minReplicas?: number) {
    this.#current = current;
    this.#min = minReplicas;
    this.#window.push({ wanted: current, until: Number.POSITIVE_INFINITY });
  }

  get current(): number {
    return this.#current;
  }

  /**
   * The load now (undefined: unknown, e.g. no report arrived) → the replicas to run. The
   * decision becomes the current count: the caller acts on it.
   */
  observe(load: number | undefined, policy: ScalingPolicy, now: number): Decision {
    const known = load !== undefined;
    const inBounds = (n: number) => Math.min(policy.maxReplicas, Math.max(policy.minReplicas, n));
    const minMoved = this.#min !== undefined && this.#min !== policy.minReplicas;
    this.#min = policy.minReplicas;
    // With no load known, the count is held; unless a user just set it (kubectl scale).
    const wanted = known
      ? wantedReplicas(load, policy)
      : minMoved
        ? policy.minReplicas
        : inBounds(this.#current);
    if (minMoved || this.#current !== inBounds(this.#current)) {
      // A user moved a bound (kubectl scale sets minReplicas): what came before says nothing
      // about the new range, and the count they asked for applies now.
      const reason = this.#current === wanted ? 'steady' : 'bounds';
      this.reset(wanted);
      return { desired: wanted, wanted, reason };
    }
    this.#push(wanted, now);
    this.#trim(now - policy.scaleDownDelayMs);
    const highest = this.#window[0]!.wanted;
    let decision: Decision;
    if (wanted > this.#current) {
      decision = { desired: wanted, wanted, reason: 'burst' };
    } else if (highest < this.#current) {
      decision = { desired: highest, wanted, reason: 'idle' };
    } else if (wanted < this.#current) {
      decision = { desired: this.#current, wanted, reason: 'waiting', scaleDownAt: this.#downAt(policy) };
    } else {
      decision = { desired: this.#current, wanted, reason: known ? 'steady' : 'unknown' };
    }
    this.#current = decision.desired;
    return decision;
  }

  /** The count changed outside the decision (a user's scale, a restart): start from it. */
  reset(current: number): void {
    this.#current = current;
    this.#window = [{ wanted: current, until: Number.POSITIVE_INFINITY }];
  }

  /** The latest sample (always the queue's last) ends now; samples it outranks can never be the max. */
  #push(wanted: number, now: number): void {
    this.#window.at(-1)!.until = now;
    while (this.#window.length > 0 && this.#window.at(-1)!.wanted <= wanted) this.#window.pop();
    this.#window.push({ wanted, until: Number.POSITIVE_INFINITY });
  }

  /** Drops the samples that stopped being the latest before the window began. */
  #trim(start: number): void {
    while (this.#window[0]!.until <= start) this.#window.shift();
  }

  /** When the last sample as high as the current count leaves the window. */
  #downAt(policy: ScalingPolicy): number {
    let until = 0;
    for (const sample of this.#window) if (sample.wanted >= this.#current) until = sample.until;
    return until + policy.scaleDownDelayMs;
  }
}
