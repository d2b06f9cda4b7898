import { readFile } from 'node:fs/promises';
import { text } from 'node:stream/consumers';
import { SingleBar } from 'cli-progress';
import { map, stream } from '../client/index.ts';
import { SluiceError } from '../common/errors.ts';

/** The options of `sluice invoke` and `sluice map`, as commander parses them (cli/client-commands.ts). */
export interface InvokeOptions {
  data?: string;
  header: string[];
  method?: string;
  json?: boolean;
}

export interface MapCommandOptions {
  inputs: string;
  order: 'input' | 'completion';
  header: string[];
  progress: boolean;
}

class CliUsageError extends SluiceError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_CLI_USAGE', message, options);
  }
}

/** Prints the events of one call as they arrive; returns the exit code. */
export async function runInvoke(url: string, options: InvokeOptions): Promise<number> {
  const controller = new AbortController();
  process.once('SIGINT', () => controller.abort(new SluiceError('ERR_INTERRUPTED', 'interrupted')));
  try {
    const body = options.data === undefined ? undefined : await readData(options.data);
    const events = stream(url, {
      body,
      method: options.method,
      headers: {
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...parseHeaders(options.header),
      },
      signal: controller.signal,
      otherContent: 'chunks',
    });
    for await (const event of events) {
      if (options.json) process.stdout.write(`${JSON.stringify(event)}\n`);
      else if (event.event === 'chunk') process.stdout.write(event.data);
      else if (event.event === 'message') process.stdout.write(`${event.data}\n`);
      else process.stdout.write(`${event.event}: ${event.data}\n`);
    }
    return 0;
  } catch (err) {
    return reportError('invoke', err);
  }
}

/** Runs a map and prints one JSON line per result; exit code 1 when any input failed. */
export async function runMap(url: string, options: MapCommandOptions): Promise<number> {
  const controller = new AbortController();
  process.once('SIGINT', () => controller.abort(new SluiceError('ERR_INTERRUPTED', 'interrupted')));
  let bar: SingleBar | undefined;
  try {
    const inputs = parseInputs(
      options.inputs === '-' ? await text(process.stdin) : await readFile(options.inputs, 'utf8'),
      options.inputs,
    );
    const showBar = options.progress && process.stderr.isTTY === true;
    const startedAt = Date.now();
    let completed = 0;
    const results = map(url, inputs, {
      order: options.order,
      headers: parseHeaders(options.header),
      signal: controller.signal,
      onAccepted: ({ count }) => {
        if (!showBar) return;
        bar = new SingleBar({
          format: 'map [{bar}] {value}/{total} | {rate}/s | ETA {eta_formatted} | failed {failed}',
          hideCursor: true,
          etaBuffer: 50,
        });
        bar.start(count, 0, { rate: '0.0', failed: 0 });
      },
    });
    let failed = 0;
    let next = await results.next();
    while (!next.done) {
      const result = next.value;
      completed += 1;
      if (!result.ok) failed += 1;
      const line = result.ok
        ? { index: result.index, output: result.output, replica: result.replica, ms: result.ms }
        : { index: result.index, error: result.error, attempts: result.attempts };
      process.stdout.write(`${JSON.stringify(line)}\n`);
      const seconds = (Date.now() - startedAt) / 1000;
      bar?.update(completed, { rate: (completed / Math.max(seconds, 0.001)).toFixed(1), failed });
      next = await results.next();
    }
    bar?.stop();
    const summary = next.value;
    const cancelled = summary.cancelled ?? 0;
    const succeeded = summary.count - summary.failed - cancelled;
    process.stderr.write(
      `sluice map: ${succeeded}/${summary.count} succeeded, ${summary.failed} failed${cancelled ? `, ${cancelled} cancelled` : ''} (request ${summary.requestId}, ${((Date.now() - startedAt) / 1000).toFixed(1)} s)\n`,
    );
    return summary.failed > 0 || cancelled > 0 ? 1 : 0;
  } catch (err) {
    bar?.stop();
    return reportError('map', err);
  }
}

/** A JSON array of inputs, or JSON lines (one input a line; blank lines skipped). */
export function parseInputs(source: string, name: string): unknown[] {
  const trimmed = source.trim();
  if (trimmed.startsWith('[')) {
    try {
      const parsed: unknown = JSON.parse(trimmed);
      if (Array.isArray(parsed)) return parsed;
    } catch {
      // Not one array: JSON lines whose inputs are themselves arrays.
    }
  }
  const inputs: unknown[] = [];
  for (const [n, line] of source.split('\n').entries()) {
    if (line.trim() === '') continue;
    try {
      inputs.push(JSON.parse(line));
    } catch (err) {
      throw new CliUsageError(`${name}:${n + 1}: not JSON (${(err as Error).message})`, { cause: err });
    }
  }
  if (inputs.length === 0) throw new CliUsageError(`${name}: no inputs`);
  return inputs;
}

/** `K:V` pairs from repeated --header flags. */
export function parseHeaders(pairs: readonly string[]): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const pair of pairs) {
    const at = pair.indexOf(':');
    if (at <= 0) throw new CliUsageError(`--header ${JSON.stringify(pair)}: expected Name:value`);
    headers[pair.slice(0, at).trim().toLowerCase()] = pair.slice(at + 1).trim();
  }
  return headers;
}

async function readData(data: string): Promise<string> {
  const source = data.startsWith('@') ? await readFile(data.slice(1), 'utf8') : data;
  try {
    JSON.parse(source);
  } catch (err) {
    throw new CliUsageError(`--data is not JSON (${(err as Error).message})`, { cause: err });
  }
  return source;
}

function reportError(command: string, err: unknown): number {
  if (err instanceof SluiceError && err.code === 'ERR_INTERRUPTED') return 130;
  if (err instanceof SluiceError) {
    process.stderr.write(`sluice ${command}: ${err.message} [${err.code}]\n`);
    return err.code === 'ERR_CLI_USAGE' ? 2 : 1;
  }
  if (err instanceof Error && err.name === 'AbortError') return 130;
  throw err;
}
