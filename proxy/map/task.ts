/**
 * One delivered map task: which input of which request, and how many attempts of that input
 * the function already had. Pure: parsing and naming only.
 *
 * Attempts are counted by Sluice, not by JetStream alone, because JetStream counts every
 * delivery, including those that never reached the function (its replica's function was
 * down, or the replica was stopping). Such a task is handed back by publishing it again with
 * the attempts spent so far in its subject (`<requestId>.<index>.<attemptsBefore>`) and
 * acking the old message; so the attempt number of a delivery is `attemptsBefore` plus
 * JetStream's delivery count of this message, whose earlier deliveries all ended in an
 * answer of the function's own (a nak) or in silence past ack wait (the replica died mid-call,
 * maybe killed by the input: that counts, so an input that crashes its function is bounded).
 */
import type { Msg } from '@nats-io/transport-node';

export interface TaskInfo {
  requestId: string;
  index: number;
  /** Attempts of this input before this message was published (0 for the first). */
  attemptsBefore: number;
  /** JetStream's delivery count of this message. */
  deliveryCount: number;
  /** The message's stream sequence (names a hand-back uniquely). */
  streamSeq: number;
}

/** `rest` is the subject after `sluice.<ns>.<name>.tasks.`. */
export function parseTaskSubject(
  rest: string,
): Pick<TaskInfo, 'requestId' | 'index' | 'attemptsBefore'> | undefined {
  const [requestId, indexText, attemptsText, ...extra] = rest.split('.');
  const index = Number(indexText);
  const attemptsBefore = attemptsText === undefined ? 0 : Number(attemptsText);
  if (!requestId || extra.length > 0 || !Number.isInteger(index) || index < 0) return undefined;
  if (!Number.isInteger(attemptsBefore) || attemptsBefore < 0) return undefined;
  return { requestId, index, attemptsBefore };
}

/**
 * JetStream's ack subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<streamSeq>.…` (9 tokens,
 * servers before 2.10) or with `<domain>.<accountHash>` after `$JS.ACK` (12 tokens).
 */
export function parseAckSubject(reply: string): Pick<TaskInfo, 'deliveryCount' | 'streamSeq'> | undefined {
  const tokens = reply.split('.');
  if (tokens[0] !== '$JS' || tokens[1] !== 'ACK') return undefined;
  const at = tokens.length === 9 ? 4 : 6;
  const deliveryCount = Number(tokens[at]);
  const streamSeq = Number(tokens[at + 1]);
  if (!Number.isInteger(deliveryCount) || !Number.isInteger(streamSeq) || tokens.length < at + 2)
    return undefined;
  return { deliveryCount, streamSeq };
}

export function parseTask(msg: Msg, taskPrefix: string): TaskInfo | undefined {
  const subject = parseTaskSubject(msg.subject.slice(taskPrefix.length));
  const ack = subject && parseAckSubject(msg.reply ?? '');
  return ack ? { ...subject, ...ack } : undefined;
}

/** The attempt a delivery is (1 for the first). */
export function attemptOf(task: TaskInfo): number {
  return task.attemptsBefore + task.deliveryCount;
}

/**
 * The subject a task goes back to the queue on, carrying the attempts it already had. Without
 * any, it is the plain subject a first task has (which sidecars before attempt counting read
 * too, should a rollout mix them).
 */
export function requeueSubject(taskPrefix: string, task: TaskInfo): string {
  const attempts = attemptOf(task) - 1;
  const plain = `${taskPrefix}${task.requestId}.${task.index}`;
  return attempts === 0 ? plain : `${plain}.${attempts}`;
}
