import { createParser } from 'eventsource-parser';

/** One server-sent event; `event` is `message` when the server named none, as EventSource does. */
export interface StreamEvent {
  event: string;
  data: string;
  id: string | undefined;
}

/**
 * Parses an event-stream body into events as bytes arrive (eventsource-parser does the SSE
 * grammar: multi-line data, comments, CRLF). `onRetry` reports the server's `retry:` field.
 * Leaving the loop early cancels the body, which closes the connection.
 */
export async function* readEvents(
  body: ReadableStream<Uint8Array>,
  onRetry?: (ms: number) => void,
): AsyncGenerator<StreamEvent> {
  const ready: StreamEvent[] = [];
  const parser = createParser({
    onEvent: (message) =>
      ready.push({ event: message.event ?? 'message', data: message.data, id: message.id }),
    onRetry,
  });
  const decoder = new TextDecoder();
  const reader = body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parser.feed(decoder.decode(value, { stream: true }));
      while (ready.length > 0) yield ready.shift()!;
    }
    parser.feed(decoder.decode());
    while (ready.length > 0) yield ready.shift()!;
  } finally {
    await reader.cancel().catch(() => {});
  }
}
