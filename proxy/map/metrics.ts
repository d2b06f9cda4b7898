import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/** What happened to one delivery of a task on this replica. */
export type TaskOutcome = 'ok' | 'failed' | 'retried' | 'cancelled';

export interface MapMetrics {
  tasks: Counter<'outcome'>;
  taskDuration: Histogram<'outcome'>;
  redeliveries: Counter;
  requestsActive: Gauge;
}

export function createMapMetrics(registry: Registry): MapMetrics {
  return {
    tasks: new Counter({
      name: 'sluice_map_tasks_total',
      help: 'Map task deliveries run by this replica, by outcome (ok, failed, retried, cancelled)',
      labelNames: ['outcome'],
      registers: [registry],
    }),
    taskDuration: new Histogram({
      name: 'sluice_map_task_duration_seconds',
      help: 'From taking a map task (slot held) to its result being stored',
      labelNames: ['outcome'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900],
      registers: [registry],
    }),
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
