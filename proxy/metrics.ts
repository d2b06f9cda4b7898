import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { ConcurrencyLimiter } from './limiter.ts';

/** The proxy's Prometheus metrics (names fixed by SPEC §2), on one registry per proxy. */
export interface ProxyMetrics {
  registry: Registry;
  streamsActive: Gauge;
  requests: Counter<'code'>;
  timeToFirstByte: Histogram;
  streamDuration: Histogram;
  events: Counter;
  bytes: Counter;
  grpcCalls: Counter<'grpc_code'>;
  grpcMessages: Counter<'direction'>;
}

export function createProxyMetrics(limiter: ConcurrencyLimiter): ProxyMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  // Read from the shared limiter when scraped, so waiting map tasks count too.
  new Gauge({
    name: 'sluice_proxy_queue_waiting',
    help: 'Requests and map tasks waiting for a concurrency slot',
    registers: [registry],
    collect() {
      this.set(limiter.waiting);
    },
  });
  return {
    registry,
    streamsActive: new Gauge({
      name: 'sluice_proxy_streams_active',
      help: 'Responses from the function being relayed now',
      registers: [registry],
    }),
    requests: new Counter({
      name: 'sluice_proxy_requests_total',
      help: 'Finished requests on the public port, by status code',
      labelNames: ['code'],
      registers: [registry],
    }),
    timeToFirstByte: new Histogram({
      name: 'sluice_proxy_time_to_first_byte_seconds',
      help: 'From request arrival to the first body byte from the function',
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers: [registry],
    }),
    streamDuration: new Histogram({
      name: 'sluice_proxy_stream_duration_seconds',
      help: 'From request arrival to the end of the response',
      buckets: [0.01, 0.1, 0.5, 1, 5, 15, 30, 60, 300, 600, 1800, 3600],
      registers: [registry],
    }),
    events: new Counter({
      name: 'sluice_proxy_events_total',
      help: 'Server-sent events relayed from the function',
      registers: [registry],
    }),
    bytes: new Counter({
      name: 'sluice_proxy_bytes_total',
      help: 'Response body bytes relayed from the function',
      registers: [registry],
    }),
    grpcCalls: new Counter({
      name: 'sluice_proxy_grpc_calls_total',
      help: 'Finished gRPC calls, by the grpc-status the client got (OK, CANCELLED, UNAVAILABLE, ...)',
      labelNames: ['grpc_code'],
      registers: [registry],
    }),
    grpcMessages: new Counter({
      name: 'sluice_proxy_grpc_messages_total',
      help: 'gRPC messages relayed, by direction (to_function, from_function)',
      labelNames: ['direction'],
      registers: [registry],
    }),
  };
}
