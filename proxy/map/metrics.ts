import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/** What happened to one delivery of a task on this replica. */
export const TASK_OUTCOMES = ['ok', 'failed', 'retried', 'cancelled', 'handed_back'] as const;
export type TaskOutcome = (typeof TASK_OUTCOMES)[number];

export interface MapMetrics {
  /** One child per outcome, looked up once: a label lookup per task costs more than the count. */
  tasks: Record<TaskOutcome, { inc: () => void }>;
  taskDuration: Record<TaskOutcome, { observe: (seconds: number) => void }>;
  redeliveries: Counter;
  requestsActive: Gauge;
}

export function createMapMetrics(registry: Registry): MapMetrics {
  const tasks = new Counter({
    name: 'sluice_map_tasks_total',
    help: 'Map task deliveries run by this replica, by outcome (ok, failed, retried, cancelled, handed_back: back to the queue without counting an attempt)',
    labelNames: ['outcome'],
    registers: [registry],
  });
  const taskDuration = new Histogram({
    name: 'sluice_map_task_duration_seconds',
    help: 'From taking a map task to its result being stored (or the task given up)',
    labelNames: ['outcome'],
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900],
    registers: [registry],
  });
  const byOutcome = <T>(child: (outcome: TaskOutcome) => T) =>
    Object.fromEntries(TASK_OUTCOMES.map((outcome) => [outcome, child(outcome)])) as Record<TaskOutcome, T>;
  return {
    tasks: byOutcome((outcome) => tasks.labels(outcome)),
    taskDuration: byOutcome((outcome) => taskDuration.labels(outcome)),
    redeliveries: new Counter({
      name: 'sluice_map_redeliveries_total',
      help: 'Map tasks this replica received again (a retry, or a replica that did not ack in time)',
      registers: [registry],
    }),
    requestsActive: new Gauge({
      name: 'sluice_map_requests_active',
      help: 'Map requests whose results this replica is streaming to a client now',
      registers: [registry],
    }),
  };
}
