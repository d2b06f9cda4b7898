import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { freePort, waitFor } from '../common/net.ts';
import { type Started, start, startSluice } from './process.ts';

const MAP_FUNCTION = new URL('./map-function.ts', import.meta.url).pathname;

/** One replica as in a pod: a real function process and a real `sluice proxy` in front of it. */
export interface Replica {
  name: string;
  url: string;
  adminUrl: string;
  functionUrl: string;
  proxy: Started;
  fn: Started;
  /** How many times this replica's function saw each input (keyed by the input's JSON). */
  attempts: () => Promise<Record<string, number>>;
  /** Both processes, like a pod dying (SIGKILL) or being deleted (SIGTERM). */
  stop: (signal?: NodeJS.Signals) => Promise<void>;
}

export interface ReplicaOptions {
  nats: string;
  /** `namespace/name`: names the NATS streams, so each test group gets its own. */
  fn: string;
  flags?: string[];
}

async function startFunction(replica: string): Promise<{ fn: Started; url: string }> {
  const fn = start(process.execPath, [MAP_FUNCTION, '0'], { env: { ...process.env, MAP_REPLICA: replica } });
  const port = await waitFor(() => /"port":(\d+)/.exec(fn.output())?.[1], {
    what: 'the map function to listen',
  });
  return { fn, url: `http://127.0.0.1:${port}` };
}

export async function startReplica(name: string, options: ReplicaOptions): Promise<Replica> {
  const { fn, url: functionUrl } = await startFunction(name);
  const [port, admin] = [await freePort(), await freePort()];
  const proxy = startSluice([
    'proxy',
    '--listen',
    `127.0.0.1:${port}`,
    '--admin',
    `127.0.0.1:${admin}`,
    '--upstream',
    functionUrl,
    '--nats',
    options.nats,
    '--function',
    options.fn,
    '--replica',
    name,
    ...(options.flags ?? []),
  ]);
  const adminUrl = `http://127.0.0.1:${admin}`;
  await waitFor(async () => (await fetch(`${adminUrl}/readyz`)).ok, {
    timeoutMs: 30_000,
    what: `replica ${name} to be ready`,
  }).catch((err: Error) => {
    // What the proxy printed says why (it is read when the wait has failed, not before).
    throw new Error(`${err.message}; its output:\n${proxy.output()}`, { cause: err });
  });
  return {
    name,
    url: `http://127.0.0.1:${port}`,
    adminUrl,
    functionUrl,
    proxy,
    fn,
    attempts: async () => (await fetch(`${functionUrl}/attempts`)).json() as Promise<Record<string, number>>,
    stop: async (signal = 'SIGTERM') => {
      await Promise.all([proxy.stop(signal), fn.stop(signal)]);
    },
  };
}

export async function startReplicas(count: number, options: ReplicaOptions): Promise<Replica[]> {
  // One at a time: the first creates the streams and consumer, the others find them.
  const replicas: Replica[] = [];
  for (let i = 0; i < count; i++) replicas.push(await startReplica(`replica-${i}`, options));
  return replicas;
}

export interface MapEvent extends EventSourceMessage {
  json: Record<string, unknown>;
}

export interface MapResponse {
  status: number;
  headers: Headers;
  events: MapEvent[];
  /** For non-SSE answers (errors): the JSON body. */
  body?: { error?: { code: string; message: string } };
}

/**
 * Reads a map response with eventsource-parser. `onEvent` sees each event as it arrives; it
 * may abort `signal` to play a client that leaves.
 */
export async function readMap(
  url: string,
  init: RequestInit & { onEvent?: (event: MapEvent, all: MapEvent[]) => void } = {},
): Promise<MapResponse> {
  const response = await fetch(url, init);
  const events: MapEvent[] = [];
  if (!response.headers.get('content-type')?.startsWith('text/event-stream')) {
    return {
      status: response.status,
      headers: response.headers,
      events,
      body: (await response.json()) as MapResponse['body'],
    };
  }
  const parser = createParser({
    onEvent: (event) => {
      const parsed = { ...event, json: JSON.parse(event.data) as Record<string, unknown> };
      events.push(parsed);
      init.onEvent?.(parsed, events);
    },
  });
  const decoder = new TextDecoder();
  try {
    for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
      parser.feed(decoder.decode(chunk, { stream: true }));
    }
  } catch (err) {
    if (!init.signal?.aborted) throw err;
  }
  return { status: response.status, headers: response.headers, events };
}

export function postMap(replica: Replica, body: unknown, init: Parameters<typeof readMap>[1] = {}) {
  return readMap(`${replica.url}/_sluice/map`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    ...init,
  });
}

/** Sum of one input's attempts over every replica's function. */
export async function totalAttempts(replicas: Replica[], input: unknown): Promise<number> {
  const key = JSON.stringify(input);
  let total = 0;
  for (const replica of replicas) {
    if (replica.fn.child.exitCode === null && replica.fn.child.signalCode === null) {
      total += (await replica.attempts())[key] ?? 0;
    }
  }
  return total;
}

/** Every result or error event's index, in arrival order. */
export function indices(events: MapEvent[]): number[] {
  return events.filter((e) => e.event === 'result' || e.event === 'error').map((e) => Number(e.id));
}
