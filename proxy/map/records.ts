/**
 * What the results stream holds per request: `<resultsOf(requestId)>.accepted`,
 * `.result.<index>`, `.error.<index>` and `.cancelled` (common/map-streams.ts). `result` and
 * `error` records are exactly the `data` of the SSE events of the same name (SPEC §2), so the
 * requesting proxy forwards them unchanged; their index is in the subject, so it never parses
 * them.
 */
import type { NatsConnection } from '@nats-io/transport-node';

export type RecordKind = 'accepted' | 'result' | 'error' | 'cancelled';

export interface AcceptedRecord {
  requestId: string;
  count: number;
  order: 'input' | 'completion';
  keep: boolean;
}

export interface ResultRecord {
  index: number;
  output: unknown;
  replica: string;
  ms: number;
}

/**
 * One input that failed: the function's own answer (`status` with its JSON `body`, or its
 * text as `message`) or Sluice's account of what went wrong (`message`).
 */
export interface TaskError {
  status: number;
  message?: string;
  body?: unknown;
}

export interface ErrorRecord {
  index: number;
  error: TaskError;
  attempts: number;
}

/** Why a map was cancelled. */
export interface CancelledRecord {
  reason: 'deleted' | 'disconnected';
}

/** Room left in a NATS message for the headers JetStream adds (msgID, ...). */
const HEADER_ROOM = 512;

/** The largest task input or result record one message can carry on this connection. */
export function maxRecordBytes(nc: NatsConnection): number {
  return (nc.info?.max_payload ?? 1024 * 1024) - HEADER_ROOM;
}

export function encodeRecord(record: AcceptedRecord | ResultRecord | ErrorRecord | CancelledRecord): string {
  return JSON.stringify(record);
}

/**
 * A result record around an output that is already JSON text without line breaks (a
 * function's JSON answer, checked by the caller), so it is not parsed and serialized again.
 * `replicaJson` is the replica's name as a JSON string.
 */
export function resultRecordText(index: number, outputJson: string, replicaJson: string, ms: number): string {
  return `{"index":${index},"output":${outputJson},"replica":${replicaJson},"ms":${ms}}`;
}

/** JetStream's duplicate window drops a second record for the same index (a task that ran twice). */
export function resultMsgId(requestId: string, index: number): string {
  return `${requestId}.${index}`;
}

export function taskMsgId(requestId: string, index: number): string {
  return `${requestId}.task.${index}`;
}

/** A task handed back to the queue: unique per message it replaces (its stream sequence). */
export function requeuedTaskMsgId(requestId: string, index: number, replacedSeq: number): string {
  return `${requestId}.task.${index}.from.${replacedSeq}`;
}

/** Cancelling twice (two replicas whose grace ran out at once, a DELETE retried) stores one record. */
export function cancelledMsgId(requestId: string): string {
  return `${requestId}.cancelled`;
}
