import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import { BatchHistogram } from './batch-histogram.ts';
import type { ConcurrencyLimiter } from './limiter.ts';
import { STREAM_END_REASONS, type StreamEndReason } from './stream-end.ts';

/** The proxy's Prometheus metrics (names fixed by SPEC §2), on one registry per proxy. */
export interface ProxyMetrics {
  registry: Registry;
  streamsActive: Gauge;
  requests: Counter<'code'>;
  timeToFirstByte: Histogram;
  streamDuration: Histogram;
  bytes: Counter;
  grpcCalls: Counter<'grpc_code'>;
  grpcMessages: Counter<'direction'>;
  eventGaps: BatchHistogram;
  /**
   * `count` events arrived together (one socket read), `sincePrevious` seconds after the
   * stream's previous event (undefined for a stream's first events). Per read, not per event:
   * the counters add up in plain numbers that the registry collects when scraped.
   */
  eventsArrived(count: number, sincePrevious: number | undefined): void;
  /** A stream ended (every forwarding path calls this once per stream). */
  streamEnded(reason: StreamEndReason): void;
}

export function createProxyMetrics(limiter: ConcurrencyLimiter): ProxyMetrics {
  const registry = new Registry();
  let eventsPending = 0;
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
  new Counter({
    name: 'sluice_proxy_events_total',
    help: 'Server-sent events relayed from the function',
    registers: [registry],
    collect() {
      this.inc(eventsPending);
      eventsPending = 0;
    },
  });
  const streamEnds = new Counter({
    name: 'sluice_proxy_stream_end_total',
    help: 'Streams ended, by why: complete, client_gone, function_error, idle_timeout, max_duration, drain',
    labelNames: ['reason'],
    registers: [registry],
  });
  for (const reason of STREAM_END_REASONS) streamEnds.inc({ reason }, 0); // every reason shows from the start
  const eventGaps = new BatchHistogram({
    name: 'sluice_proxy_event_gap_seconds',
    help: 'Time between consecutive events of a stream, as the proxy reads them',
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300],
    registers: [registry],
  });
  return {
    registry,
    eventGaps,
    eventsArrived(count, sincePrevious) {
      eventsPending += count;
      if (sincePrevious !== undefined) eventGaps.observe(sincePrevious);
      // Events read together are 0 s apart as far as the proxy can tell.
      if (count > 1) eventGaps.observe(0, count - 1);
    },
    streamEnded(reason) {
      streamEnds.inc({ reason });
    },
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
