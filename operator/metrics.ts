import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

/** The operator's Prometheus metrics, on its own registry. */
export interface OperatorMetrics {
  registry: Registry;
  reconciles: Counter<'result'>;
  duration: Histogram;
  errors: Counter<'kind'>;
  applies: Counter<'kind'>;
}

export function createOperatorMetrics(gauges: {
  queueDepth: () => number;
  leader: () => boolean;
  apiRequests: () => Map<string, number>;
}): OperatorMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  new Gauge({
    name: 'sluice_operator_queue_depth',
    help: 'Functions waiting for a reconcile',
    registers: [registry],
    collect() {
      this.set(gauges.queueDepth());
    },
  });
  new Gauge({
    name: 'sluice_operator_leader',
    help: '1 while this replica holds the leader Lease (or runs without leader election)',
    registers: [registry],
    collect() {
      this.set(gauges.leader() ? 1 : 0);
    },
  });
  new Counter({
    name: 'sluice_operator_api_requests_total',
    help: 'Requests sent to the Kubernetes API server, by HTTP method',
    labelNames: ['method'],
    registers: [registry],
    collect() {
      this.reset();
      for (const [method, n] of gauges.apiRequests()) this.inc({ method }, n);
    },
  });
  return {
    registry,
    reconciles: new Counter({
      name: 'sluice_operator_reconcile_total',
      help: 'Finished reconciles, by result',
      labelNames: ['result'],
      registers: [registry],
    }),
    duration: new Histogram({
      name: 'sluice_operator_reconcile_duration_seconds',
      help: 'Time one reconcile took',
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    errors: new Counter({
      name: 'sluice_operator_reconcile_errors_total',
      help: 'Failed reconciles: retryable ones are retried with backoff, terminal ones set a condition',
      labelNames: ['kind'],
      registers: [registry],
    }),
    applies: new Counter({
      name: 'sluice_operator_applies_total',
      help: 'Server-side applies sent, by kind of owned object',
      labelNames: ['kind'],
      registers: [registry],
    }),
  };
}
