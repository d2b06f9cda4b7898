import type { ServerResponse } from 'node:http';
import type { Http2ServerResponse } from 'node:http2';
import { grpcStatusName } from '../../common/grpc.ts';
import { isGrpcCall } from '../../common/wire-errors.ts';
import type { ProxyMetrics } from '../metrics.ts';
import {
  type CallCounters,
  type CallLimits,
  type DownstreamRequest,
  type DownstreamResponse,
  H2Call,
} from './call.ts';
import { UpstreamPool } from './upstream-pool.ts';

/** Header blocks (response headers, trailers) the proxy accepts from the function and relays. */
export const MAX_HEADER_BLOCK_BYTES = 1024 * 1024;

export interface H2ForwarderOptions {
  upstream: string;
  limits: CallLimits;
  metrics: ProxyMetrics;
}

/**
 * `--upstream-protocol h2c`: every request the public port admits (HTTP/1.1 or HTTP/2, gRPC or
 * not) becomes one stream to the function on a shared HTTP/2 connection pool.
 */
export class H2Forwarder {
  readonly pool: UpstreamPool;
  readonly #options: H2ForwarderOptions;
  readonly #counters: CallCounters;

  constructor(options: H2ForwarderOptions) {
    this.#options = options;
    const { metrics } = options;
    // Bound once: a labelled inc() per chunk would hash its labels every time.
    const toFunction = metrics.grpcMessages.labels('to_function');
    const fromFunction = metrics.grpcMessages.labels('from_function');
    this.#counters = {
      // No gap per event here: a call's DATA frames are counted, not timed.
      events: (count) => metrics.eventsArrived(count, undefined),
      messages: (direction, count) => (direction === 'to_function' ? toFunction : fromFunction).inc(count),
    };
    this.pool = new UpstreamPool(options.upstream, {
      session: {
        // Trailers with large custom metadata must pass (grpc-node#1533), not stall the call.
        maxHeaderListPairs: 4096,
        maxSendHeaderBlockLength: MAX_HEADER_BLOCK_BYTES,
        settings: { enablePush: false, maxHeaderListSize: MAX_HEADER_BLOCK_BYTES },
      },
    });
  }

  /** Starts forwarding one admitted request (it holds a concurrency slot until `res` closes). */
  forward(
    req: DownstreamRequest,
    res: DownstreamResponse,
    context: { requestId: string; arrivedAt: number },
  ): H2Call {
    const { metrics, limits } = this.#options;
    const call = new H2Call(req, res, {
      pool: this.pool,
      limits,
      requestId: context.requestId,
      arrivedAt: context.arrivedAt,
      counters: this.#counters,
    });
    metrics.streamsActive.inc();
    res.once('close', () => {
      metrics.streamsActive.dec();
      if (call.bytes > 0) metrics.bytes.inc(call.bytes);
    });
    call.start().catch((err: unknown) => {
      call.fail({ code: 'internal', message: `proxy error: ${(err as Error).message}` });
    });
    return call;
  }

  close(): void {
    this.pool.close();
  }
}

/**
 * The gRPC status name a finished gRPC call ended with (for metrics and the log): from the
 * function's trailers or the proxy's own answer; a call the client left without one is CANCELLED.
 * Undefined for requests that are not gRPC calls.
 */
export function grpcCallStatus(
  res: ServerResponse | Http2ServerResponse,
  relayed: number | undefined,
): string | undefined {
  if (!isGrpcCall(res)) return undefined;
  const status = relayed ?? res.getHeader('grpc-status');
  return status === undefined ? 'CANCELLED' : grpcStatusName(status as string | number);
}
