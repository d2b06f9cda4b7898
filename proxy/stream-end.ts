import type { WireCode } from '../common/wire-errors.ts';

/** Why a stream ended: the `reason` of `sluice_proxy_stream_end_total` and of the request's log line (SPEC §2). */
export const STREAM_END_REASONS = [
  'complete',
  'client_gone',
  'function_error',
  'idle_timeout',
  'max_duration',
  'drain',
] as const;

export type StreamEndReason = (typeof STREAM_END_REASONS)[number];

/**
 * The end reason of a stream the function was asked for, from how it ended: the code the proxy
 * ended it with, if it did, else whether the client left before the end. Undefined for an
 * exchange the proxy itself cut short for another cause (a chunked upload over --max-body, a
 * proxy bug): those are refusals, counted by status in `sluice_proxy_requests_total`.
 * Every forwarding path (HTTP/1.1, gRPC over h2c) reports through this one table.
 */
export function streamEndReason(
  failure: WireCode | undefined,
  clientGone: boolean,
): StreamEndReason | undefined {
  switch (failure) {
    case undefined:
      return clientGone ? 'client_gone' : 'complete';
    case 'upstream_unavailable':
    case 'upstream_failed':
    case 'upstream_closed':
      return 'function_error';
    case 'idle_timeout':
    case 'max_duration':
      return failure;
    case 'shutdown':
      return 'drain';
    default:
      return undefined;
  }
}
