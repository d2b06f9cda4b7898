import {
  type Decision,
  type LoadParts,
  ScaleDecider,
  type ScalingPolicy,
  totalLoad,
} from '../common/autoscale/decision.ts';

export interface ServeScalerOptions {
  policy: ScalingPolicy;
  /** Replicas running (not being stopped) when the scaler starts. */
  initial: number;
  /** The load now: streams through the front (each replica's peak), held requests, map tasks waiting. */
  load: () => Promise<LoadParts>;
  /** Act on a new count; `decision` says why. */
  scaleTo: (from: number, to: number, decision: Decision, parts: LoadParts) => void;
  intervalMs?: number;
  now?: () => number;
}

/**
 * `sluice serve` without --replicas: the same decision as the operator's (common/autoscale),
 * once a second and at once when a request is held with no replica ready.
 */
export class ServeScaler {
  readonly #o: ServeScalerOptions;
  readonly #decider: ScaleDecider;
  #timer: NodeJS.Timeout | undefined;
  #deciding: Promise<void> | undefined;
  #again = false;

  constructor(options: ServeScalerOptions) {
    this.#o = options;
    this.#decider = new ScaleDecider(options.initial, options.policy.minReplicas);
  }

  get current(): number {
    return this.#decider.current;
  }

  start(): void {
    this.#timer = setInterval(() => void this.decide(), this.#o.intervalMs ?? 1000);
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** One decision now; a call while one runs makes it run once more right after. */
  decide(): Promise<void> {
    if (this.#deciding) {
      this.#again = true;
      return this.#deciding;
    }
    this.#deciding = (async () => {
      do {
        this.#again = false;
        const parts = await this.#o.load();
        const from = this.#decider.current;
        const decision = this.#decider.observe(totalLoad(parts), this.#o.policy, (this.#o.now ?? Date.now)());
        if (decision.desired !== from) this.#o.scaleTo(from, decision.desired, decision, parts);
      } while (this.#again);
    })().finally(() => {
      this.#deciding = undefined;
    });
    return this.#deciding;
  }
}

/** One log line per scale change: the count, and why. */
export function describeScale(
  from: number,
  to: number,
  decision: Decision,
  parts: LoadParts,
  policy: ScalingPolicy,
  delaySeconds: number,
): string {
  const load = `load ${totalLoad(parts)} (streams ${parts.streams}, map tasks waiting ${parts.pendingTasks}, held ${parts.held}), ${policy.target} per replica`;
  const why =
    decision.reason === 'burst'
      ? `the load needs ${decision.wanted}`
      : decision.reason === 'idle'
        ? `the load needed fewer for ${delaySeconds} s (scaleDownDelaySeconds)`
        : decision.reason === 'bounds'
          ? 'minReplicas/maxReplicas changed'
          : decision.reason;
  return `scale ${from} -> ${to}: ${why}; ${load}`;
}
