/**
 * What the results stream holds per request: `<resultsOf(requestId)>.accepted`, `.batch` and
 * `.cancelled` (common/map-streams.ts). A batch carries one or more result and error records,
 * one a line, each as `r<index> <record>` or `e<index> <record>`; a record is exactly the
 * `data` of the SSE event of that name (SPEC §2) and never holds a line break, so the
 * requesting proxy forwards it unchanged without parsing it.
 */
import type { NatsConnection } from '@nats-io/transport-node';

export type RecordKind = 'accepted' | 'batch' | 'cancelled';

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

/** One line of a batch: a result or error record of one input, as single-line JSON. */
export interface RecordLine {
  kind: 'result' | 'error';
  index: number;
  /** The record (its JSON text, without line breaks). */
  text: string;
}

export function batchLine({ kind, index, text }: RecordLine): string {
  return `${kind === 'result' ? 'r' : 'e'}${index} ${text}`;
}

/** The lines of a batch; a line that is not one is skipped (a record never holds a line break). */
export function parseBatch(data: string): RecordLine[] {
  const lines: RecordLine[] = [];
  let from = 0;
  while (from < data.length) {
    let to = data.indexOf('\n', from);
    if (to === -1) to = data.length;
    const space = data.indexOf(' ', from);
    const letter = data[from];
    const index = space > from + 1 && space < to ? Number(data.slice(from + 1, space)) : Number.NaN;
    if ((letter === 'r' || letter === 'e') && Number.isInteger(index)) {
      lines.push({ kind: letter === 'r' ? 'result' : 'error', index, text: data.slice(space + 1, to) });
    }
    from = to + 1;
  }
  return lines;
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
