// The autoscaling decision as tables, in the manner of Knative's autoscaler_test.go: given a
// policy, the replicas running and a series of (second, load) observations, expect these counts.
import { describe, expect, it } from 'vitest';
import {
  type DecisionReason,
  ScaleDecider,
  type ScalingSpec,
  scalingPolicy,
  totalLoad,
  wantedReplicas,
} from '../common/autoscale/decision.ts';

const spec = (over: Partial<ScalingSpec> = {}): ScalingSpec => ({
  minReplicas: 0,
  maxReplicas: 10,
  concurrency: 8,
  targetConcurrency: 0,
  scaleDownDelaySeconds: 60,
  ...over,
});

describe('scalingPolicy: the target', () => {
  it.each([
    [8, 0, 6], // ceil(0.7 x 8)
    [2, 0, 2], // ceil(1.4)
    [1, 0, 1],
    [10, 0, 7],
    [100, 0, 70],
    [8, 3, 3], // given
    [8, 8, 8],
  ])(
    'concurrency %i, targetConcurrency %i -> %i streams per replica',
    (concurrency, targetConcurrency, want) => {
      expect(scalingPolicy(spec({ concurrency, targetConcurrency })).target).toBe(want);
    },
  );
});

describe('wantedReplicas = clamp(ceil(load / target), min, max)', () => {
  it.each([
    // load, min, max, target, want
    [0, 0, 10, 6, 0],
    [1, 0, 10, 6, 1],
    [6, 0, 10, 6, 1],
    [7, 0, 10, 6, 2],
    [18, 0, 10, 6, 3],
    [1000, 0, 10, 6, 10],
    [0, 2, 10, 6, 2],
    [0.5, 0, 10, 6, 1],
  ])('load %d, min %i, max %i, target %i -> %i', (load, minReplicas, maxReplicas, target, want) => {
    const policy = scalingPolicy(spec({ minReplicas, maxReplicas, targetConcurrency: target }));
    expect(wantedReplicas(load, policy)).toBe(want);
  });

  it('load is streams + pending map tasks + held requests', () => {
    expect(totalLoad({ streams: 4, pendingTasks: 10, held: 2 })).toBe(16);
  });
});

interface Row {
  name: string;
  spec?: Partial<ScalingSpec>;
  /** Replicas running when the decider starts. */
  start: number;
  /** [second, load (undefined: no reports), desired, reason?] — one observation each. */
  steps: [number, number | undefined, number, DecisionReason?][];
}

// Target 6 (concurrency 8), delay 60 s unless a row says otherwise.
const table: Row[] = [
  {
    name: 'first held request at zero: 0 -> 1 at once',
    start: 0,
    steps: [
      [0, 0, 0, 'steady'],
      [1, 1, 1, 'burst'],
    ],
  },
  {
    name: 'a burst of streams: up within the same observation, to what the load needs',
    start: 1,
    steps: [
      [0, 2, 1, 'steady'],
      [1, 40, 7, 'burst'],
      [2, 55, 10, 'burst'], // capped at maxReplicas
    ],
  },
  {
    name: 'map tasks pending count like streams: 100 pending, target 6 -> 10 (max)',
    start: 0,
    steps: [[0, 100, 10, 'burst']],
  },
  {
    name: 'scale-down waits for the whole delay of lower load, then goes to its highest need',
    start: 0,
    steps: [
      [0, 18, 3, 'burst'],
      [10, 7, 3, 'waiting'],
      [30, 1, 3, 'waiting'],
      [69, 1, 3, 'waiting'], // 7 (2 replicas) was the latest until 30 s; 3 since 10 s
      [70, 1, 2, 'idle'], // the 3-replica need left the window: down to 2 (the window's highest)
      [89, 1, 2, 'waiting'],
      [90, 1, 1, 'idle'],
    ],
  },
  {
    name: 'load back up during the wait cancels it; the wait starts again after',
    start: 0,
    steps: [
      [0, 12, 2, 'burst'],
      [10, 0, 2, 'waiting'],
      [50, 12, 2, 'steady'],
      [55, 0, 2, 'waiting'],
      [114, 0, 2, 'waiting'],
      [115, 0, 0, 'idle'],
    ],
  },
  {
    name: 'a request every 50 s restarts the last replica’s wait (delay 60): never to zero',
    start: 1,
    steps: [
      [0, 1, 1, 'steady'],
      [1, 0, 1, 'waiting'],
      [50, 1, 1, 'steady'],
      [51, 0, 1, 'waiting'],
      [100, 1, 1, 'steady'],
      [101, 0, 1, 'waiting'],
      [160, 0, 1, 'waiting'],
      [161, 0, 0, 'idle'],
    ],
  },
  {
    name: 'steady traffic needing one replica still lets a burst’s extra replicas go',
    start: 1,
    steps: [
      [0, 30, 5, 'burst'],
      ...Array.from({ length: 60 }, (_, i): [number, number, number, DecisionReason] => [
        i + 1,
        3,
        5,
        'waiting',
      ]),
      [61, 3, 1, 'idle'],
    ],
  },
  {
    name: 'delay 0: down on the next observation',
    spec: { scaleDownDelaySeconds: 0 },
    start: 0,
    steps: [
      [0, 30, 5, 'burst'],
      [1, 6, 1, 'idle'],
      [2, 0, 0, 'idle'],
    ],
  },
  {
    name: 'minReplicas is the floor, maxReplicas the ceiling',
    spec: { minReplicas: 2, maxReplicas: 4 },
    start: 2,
    steps: [
      [0, 0, 2, 'steady'],
      [1, 100, 4, 'burst'],
      [2, 0, 4, 'waiting'],
      [62, 0, 2, 'idle'],
    ],
  },
  {
    name: 'min = max: a fixed count whatever the load',
    spec: { minReplicas: 3, maxReplicas: 3 },
    start: 3,
    steps: [
      [0, 0, 3, 'steady'],
      [1, 1000, 3, 'steady'],
      [100, 0, 3, 'steady'],
    ],
  },
  {
    name: 'a decider that just started (operator took the lead) waits a full delay before going down',
    start: 4,
    steps: [
      [0, 0, 4, 'waiting'],
      [59, 0, 4, 'waiting'],
      [60, 0, 0, 'idle'],
    ],
  },
  {
    name: 'no reports: the count is held, and unknown seconds count as needing it',
    start: 3,
    steps: [
      [0, undefined, 3, 'unknown'],
      [30, undefined, 3, 'unknown'],
      [31, 0, 3, 'waiting'],
      [90, 0, 3, 'waiting'],
      [91, 0, 0, 'idle'],
    ],
  },
  {
    name: 'sparse observations: a high sample counts until the next one arrives',
    start: 0,
    steps: [
      [0, 18, 3, 'burst'],
      [40, 0, 3, 'waiting'], // the 3 lasted until 40 s
      [99, 0, 3, 'waiting'],
      [100, 0, 0, 'idle'],
    ],
  },
];

describe('ScaleDecider tables', () => {
  for (const row of table) {
    it(row.name, () => {
      const policy = scalingPolicy(spec(row.spec));
      const decider = new ScaleDecider(row.start);
      const seen = row.steps.map(([second, load]) => {
        const d = decider.observe(load, policy, second * 1000);
        return [second, load, d.desired, d.reason];
      });
      expect(seen).toEqual(
        row.steps.map(([s, l, want, reason]) => [s, l, want, reason ?? expect.anything()]),
      );
    });
  }

  it('says when a waiting scale-down happens if the load stays as low', () => {
    const policy = scalingPolicy(spec());
    const decider = new ScaleDecider(0);
    decider.observe(18, policy, 0);
    decider.observe(7, policy, 10_000);
    expect(decider.observe(1, policy, 20_000)).toMatchObject({ reason: 'waiting', scaleDownAt: 70_000 });
  });

  it('kubectl scale (minReplicas) acts at once, down too: 3 = 3 scaled to 1 -> 1 with no load', () => {
    const decider = new ScaleDecider(3);
    expect(decider.observe(0, scalingPolicy(spec({ minReplicas: 3, maxReplicas: 3 })), 0).desired).toBe(3);
    expect(decider.observe(0, scalingPolicy(spec({ minReplicas: 1, maxReplicas: 3 })), 1000)).toMatchObject({
      desired: 1,
      reason: 'bounds',
    });
    // Even before the first observation: the count was set under minReplicas 3.
    const fresh = new ScaleDecider(3, 3);
    expect(
      fresh.observe(undefined, scalingPolicy(spec({ minReplicas: 1, maxReplicas: 3 })), 0),
    ).toMatchObject({
      desired: 1,
      reason: 'bounds',
    });
    // With no load known (no reports), the user's count applies as well.
    const blind = new ScaleDecider(3);
    blind.observe(undefined, scalingPolicy(spec({ minReplicas: 3, maxReplicas: 3 })), 0);
    expect(
      blind.observe(undefined, scalingPolicy(spec({ minReplicas: 1, maxReplicas: 3 })), 1000).desired,
    ).toBe(1);
    // ... but never below what the load needs now.
    const busy = new ScaleDecider(3);
    busy.observe(12, scalingPolicy(spec({ minReplicas: 3, maxReplicas: 3 })), 0);
    expect(busy.observe(12, scalingPolicy(spec({ minReplicas: 1, maxReplicas: 3 })), 1000).desired).toBe(2);
  });

  it('bounds moved past the count act at once: max lowered, min raised', () => {
    const decider = new ScaleDecider(8);
    expect(decider.observe(100, scalingPolicy(spec({ maxReplicas: 3 })), 0)).toMatchObject({
      desired: 3,
      reason: 'bounds',
    });
    expect(decider.observe(0, scalingPolicy(spec({ minReplicas: 5 })), 1000)).toMatchObject({
      desired: 5,
      reason: 'bounds',
    });
  });

  it('reset(): a count set from outside starts a new window', () => {
    const policy = scalingPolicy(spec());
    const decider = new ScaleDecider(5);
    decider.reset(2);
    expect(decider.observe(0, policy, 0)).toMatchObject({ desired: 2, reason: 'waiting' });
    expect(decider.observe(0, policy, 60_000)).toMatchObject({ desired: 0, reason: 'idle' });
  });

  it('an hour of slowly falling load steps down an hour behind it; rising load is followed at once', () => {
    const policy = scalingPolicy(spec({ scaleDownDelaySeconds: 3600, maxReplicas: 1000 }));
    const decider = new ScaleDecider(0);
    for (let s = 0; s < 7200; s++) decider.observe(7200 - s, policy, s * 1000);
    // At 7200 s the window starts at 3600 s, when the load was 3600: ceil(3600 / 6).
    expect(decider.observe(0, policy, 7200 * 1000)).toMatchObject({ desired: 600, reason: 'idle' });
    const rising = new ScaleDecider(0);
    for (let s = 0; s < 7200; s++) rising.observe(s, policy, s * 1000);
    expect(rising.current).toBe(1000); // maxReplicas
  });
});
