/**
 * What the results stream holds per request (`<resultsOf(requestId)>.<kind>`). `result` and
 * `error` records are exactly the `data` of the SSE events of the same name (SPEC §2), so the
 * requesting proxy forwards them unchanged.
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

export interface ErrorRecord {
  index: number;
  error: { status: number; message: string };
  attempts: number;
}

/** Room left in a NATS message for the headers JetStream adds (msgID, ...). */
const HEADER_ROOM = 512;

/** The largest task input or result record one message can carry on this connection. */
export function maxRecordBytes(nc: NatsConnection): number {
  return (nc.info?.max_payload ?? 1024 * 1024) - HEADER_ROOM;
}

export function encodeRecord(record: AcceptedRecord | ResultRecord | ErrorRecord): string {
  return JSON.stringify(record);
}

/** JetStream's duplicate window drops a second record for the same index (a task that ran twice). */
export function resultMsgId(requestId: string, index: number): string {
  return `${requestId}.${index}`;
}

export function taskMsgId(requestId: string, index: number): string {
  return `${requestId}.task.${index}`;
}
