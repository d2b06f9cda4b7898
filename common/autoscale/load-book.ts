import type { LoadReport } from './load-report.ts';

/** A reporter silent this long is gone (a deleted pod, an activator that restarted). */
export const REPORT_STALE_MS = 3_000;

export interface ReplicaLoad {
  name: string;
  active: number;
  queued: number;
  peak: number;
  ready: boolean;
  draining: boolean;
  url: string | undefined;
  maps: number;
}

/** One function's load as its reporters last told it. */
export interface FunctionLoad {
  /** Highest streams in flight + queued of the last interval, over replicas that take work. */
  streams: number;
  /** Requests held by activators now. */
  held: number;
  /** Streams in flight + queued now, over every replica (draining ones too): status.inFlight. */
  inFlight: number;
  /** Map requests being answered: tasks may be waiting in JetStream. */
  maps: number;
  /** Replicas heard from recently, draining ones included. */
  replicas: ReplicaLoad[];
}

interface Entry {
  report: LoadReport;
  at: number;
}

/**
 * Who reported what, per function, as of the last report of each (the operator's and the
 * activator's view of the load signal). Pure: the caller says what time it is.
 */
export class LoadBook {
  readonly #staleMs: number;
  readonly #byFunction = new Map<string, Map<string, Entry>>();

  constructor(staleMs = REPORT_STALE_MS) {
    this.#staleMs = staleMs;
  }

  /**
   * Records a report; true when it should be acted on before the next tick: an activator that
   * started holding requests (scale from zero), or a replica that turned ready or began draining.
   */
  record(fn: string, report: LoadReport, now: number): boolean {
    let reporters = this.#byFunction.get(fn);
    if (!reporters) {
      reporters = new Map();
      this.#byFunction.set(fn, reporters);
    }
    const before = reporters.get(report.from);
    reporters.set(report.from, { report, at: now });
    const fresh = before !== undefined && now - before.at <= this.#staleMs ? before.report : undefined;
    if (report.kind === 'activator') return (report.held ?? 0) > 0 && !((fresh?.held ?? 0) > 0);
    return (
      Boolean(report.ready) !== Boolean(fresh?.ready) || Boolean(report.draining) !== Boolean(fresh?.draining)
    );
  }

  /** The function's load from its fresh reports; undefined when nobody reported lately. */
  view(fn: string, now: number): FunctionLoad | undefined {
    const reporters = this.#byFunction.get(fn);
    if (!reporters) return undefined;
    const load: FunctionLoad = { streams: 0, held: 0, inFlight: 0, maps: 0, replicas: [] };
    let fresh = 0;
    for (const { report, at } of reporters.values()) {
      if (now - at > this.#staleMs) continue;
      fresh++;
      if (report.kind === 'activator') {
        // Held now, not the interval's highest: a request held a moment ago that a replica took
        // since is in that replica's peak, and must not count twice.
        load.held += report.held ?? 0;
        continue;
      }
      const replica: ReplicaLoad = {
        name: report.from,
        active: report.active,
        queued: report.queued,
        peak: Math.max(report.peak, report.active + report.queued),
        ready: Boolean(report.ready),
        draining: Boolean(report.draining),
        url: report.url,
        maps: report.maps ?? 0,
      };
      load.replicas.push(replica);
      load.inFlight += replica.active + replica.queued;
      load.maps += replica.maps;
      // A draining replica finishes its streams elsewhere than where new work goes: they are not
      // load that more replicas could take.
      if (!replica.draining) load.streams += replica.peak;
    }
    return fresh > 0 ? load : undefined;
  }

  functions(): IterableIterator<string> {
    return this.#byFunction.keys();
  }

  /** Drops reporters silent for longer than the stale time, and functions left with none. */
  prune(now: number): void {
    for (const [fn, reporters] of this.#byFunction) {
      for (const [from, { at }] of reporters) if (now - at > this.#staleMs) reporters.delete(from);
      if (reporters.size === 0) this.#byFunction.delete(fn);
    }
  }

  forget(fn: string): void {
    this.#byFunction.delete(fn);
  }
}
