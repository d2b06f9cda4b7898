/** A replica as whoever routes to it sees it: `sluice serve`'s front, or the activator. */
export interface Backend {
  name: string;
  port: number;
  /** The activator reaches pods by IP; serve's replicas are all on 127.0.0.1. */
  host?: string;
  /** Its proxy's /readyz says the function answers. */
  ready: boolean;
  /** Requests the front has sent it that have not finished. */
  inFlight: number;
  /** Of those, the ones that are load (not map requests, whose tasks count where they wait). */
  load: number;
  /** The highest `load` since the autoscaler last looked. */
  peak: number;
  /** Chosen for removal: takes nothing new, stops once its streams end. */
  draining?: boolean;
}

const takesWork = (b: Backend) => b.ready && !b.draining;

/** Least requests in flight among ready backends; ties go round-robin so idle replicas share the load. */
export function pickBackend(backends: readonly Backend[], turn: number): Backend | undefined {
  const pool = backends.filter(takesWork);
  let best: Backend | undefined;
  for (let i = 0; i < pool.length; i++) {
    const candidate = pool[(turn + i) % pool.length]!;
    if (!best || candidate.inFlight < best.inFlight) best = candidate;
  }
  return best;
}

/**
 * Where a request goes: a ready replica with a free slot. When every ready one is full, it is
 * held (and counted as load) while more replicas can come (one is starting, or the autoscaler
 * may start one), so it is not queued behind a busy replica while an idle one starts; with no
 * more to come, the least loaded takes it and its proxy queues it. Knative's activator throttles
 * by capacity the same way.
 */
export function pickWithRoom(
  backends: readonly Backend[],
  concurrency: number,
  turn: number,
  canGrow: boolean,
): Backend | undefined {
  const best = pickBackend(backends, turn);
  if (!best) return undefined;
  if (best.load < concurrency) return best;
  const starting = backends.some((b) => !b.ready && !b.draining);
  return starting || canGrow ? undefined : best;
}
