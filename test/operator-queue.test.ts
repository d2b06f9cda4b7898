import { describe, expect, it } from 'vitest';
import { waitFor } from '../common/net.ts';
import { WorkQueue } from '../operator/queue.ts';

/** A promise with its resolver, to hold a reconcile open while the test acts. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { open, opened };
}

describe('WorkQueue', () => {
  it('a key added many times while waiting runs once', async () => {
    const queue = new WorkQueue();
    const runs: string[] = [];
    for (let i = 0; i < 5; i++) queue.add('ns/a');
    queue.add('ns/b');
    expect(queue.depth).toBe(2);
    const running = queue.run(2, async (key) => {
      runs.push(key);
      return undefined;
    });
    await waitFor(() => runs.length === 2 && queue.inFlight === 0);
    queue.stop();
    await running;
    expect(runs.sort()).toEqual(['ns/a', 'ns/b']);
  });

  it('addFirst puts a key (a scale-up) ahead of a backlog, once', async () => {
    const queue = new WorkQueue();
    for (let i = 0; i < 50; i++) queue.add(`ns/routine-${i}`);
    queue.add('ns/burst');
    queue.addFirst('ns/burst');
    expect(queue.depth).toBe(51);
    const runs: string[] = [];
    const running = queue.run(1, async (key) => {
      runs.push(key);
    });
    await waitFor(() => runs.length === 51);
    queue.stop();
    await running;
    expect(runs[0]).toBe('ns/burst');
    expect(runs.filter((k) => k === 'ns/burst')).toHaveLength(1);
  });

  it('never runs one key on two workers; an add during a run runs it again after', async () => {
    const queue = new WorkQueue();
    let concurrent = 0;
    let maxConcurrent = 0;
    let runs = 0;
    const first = gate();
    const running = queue.run(4, async () => {
      concurrent++;
      maxConcurrent = Math.max(maxConcurrent, concurrent);
      runs++;
      if (runs === 1) await first.opened;
      concurrent--;
      return undefined;
    });
    queue.add('ns/a');
    await waitFor(() => queue.inFlight === 1);
    queue.add('ns/a');
    queue.add('ns/a');
    expect(queue.depth).toBe(0); // held back while in flight, not queued beside it
    first.open();
    await waitFor(() => runs === 2 && queue.inFlight === 0);
    queue.stop();
    await running;
    expect(maxConcurrent).toBe(1);
    expect(runs).toBe(2);
  });

  it('bounds the workers', async () => {
    const queue = new WorkQueue();
    const hold = gate();
    let concurrent = 0;
    let maxConcurrent = 0;
    const running = queue.run(3, async () => {
      concurrent++;
      maxConcurrent = Math.max(maxConcurrent, concurrent);
      await hold.opened;
      concurrent--;
      return undefined;
    });
    for (let i = 0; i < 10; i++) queue.add(`ns/k${i}`);
    await waitFor(() => queue.inFlight === 3);
    expect(queue.depth).toBe(7);
    hold.open();
    await waitFor(() => queue.depth === 0 && queue.inFlight === 0);
    queue.stop();
    await running;
    expect(maxConcurrent).toBe(3);
  });

  it('retries a retryable failure with doubling per-key backoff, then forgets on success', async () => {
    const queue = new WorkQueue({ baseDelayMs: 20, maxDelayMs: 1000 });
    const times: number[] = [];
    const running = queue.run(1, async () => {
      times.push(performance.now());
      if (times.length < 4) throw Object.assign(new Error('busy'), { retryable: true });
      return undefined;
    });
    queue.add('ns/a');
    await waitFor(() => times.length === 4, { timeoutMs: 5000 });
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    // 20, 40, 80 ms: each wait at least its backoff
    expect(gaps[0]).toBeGreaterThanOrEqual(19);
    expect(gaps[1]).toBeGreaterThanOrEqual(39);
    expect(gaps[2]).toBeGreaterThanOrEqual(79);
    expect(queue.backoff('ns/a')).toBe(20); // success reset the count
    queue.stop();
    await running;
  });

  it('does not retry a terminal failure', async () => {
    const errors: unknown[] = [];
    const queue = new WorkQueue({ baseDelayMs: 1, onDone: (_k, _ms, err) => err && errors.push(err) });
    let runs = 0;
    const running = queue.run(1, async () => {
      runs++;
      throw Object.assign(new Error('forbidden'), { retryable: false });
    });
    queue.add('ns/a');
    await waitFor(() => errors.length === 1);
    // Another key passing through proves the worker went on without re-running ns/a.
    queue.add('ns/b');
    await waitFor(() => errors.length === 2);
    queue.stop();
    await running;
    expect(runs).toBe(2);
  });
});
